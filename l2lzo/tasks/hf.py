"""MeZO's tasks by Hugging Face dataset name (needs the hub, or a dataset already in the HF cache).

Templates follow MeZO (Malladi et al. 2023, ``templates.py``) with one uniform change so that the
prompt ends right before the answer and options start with a space: a template that MeZO ends with
``"\\n"`` (the answer on the next line) ends here with ``"\\nAnswer:"``. Labelled rows of the
``train`` and ``validation`` splits are pooled and re-split by :mod:`.splits` (SuperGLUE test labels
are hidden). WinoGrande is scored on the whole continuation: the prompt is the sentence up to the
blank and each option is the candidate followed by the rest of the sentence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import L2LZOError
from ..hub import offline_mode, probe_hub
from .base import CLASSIFICATION, MULTIPLE_CHOICE, Example

YES_NO = (" No", " Yes")


def sst2(row: dict[str, Any]) -> Example:
    """``"{sentence} It was"`` + terrible/great."""
    return Example(f"{row['sentence'].strip()} It was", (" terrible", " great"), int(row["label"]))


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:]


def copa(row: dict[str, Any]) -> Example:
    """``"{premise without final period} because|so"`` + the two lower-cased alternatives."""
    connective = " because" if row["question"] == "cause" else " so"
    premise = row["premise"].strip()
    premise = premise[:-1] if premise.endswith(".") else premise
    options = (" " + _lower_first(row["choice1"].strip()), " " + _lower_first(row["choice2"].strip()))
    return Example(premise + connective, options, int(row["label"]))


def boolq(row: dict[str, Any]) -> Example:
    """``"{passage} {question}?"`` + No/Yes."""
    return Example(f"{row['passage'].strip()} {row['question'].strip()}?", YES_NO, int(row["label"]))


def rte(row: dict[str, Any]) -> Example:
    """Premise, ``Does this mean that "{hypothesis}" is true? Yes or No?`` + Yes (entailment)/No."""
    prompt = f'{row["premise"]}\nDoes this mean that "{row["hypothesis"]}" is true? Yes or No?\nAnswer:'
    return Example(prompt, (" Yes", " No"), int(row["label"]))


def cb(row: dict[str, Any]) -> Example:
    """``Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?`` + Yes/No/Maybe."""
    prompt = f'Suppose {row["premise"]} Can we infer that "{row["hypothesis"]}"? Yes, No, or Maybe?\nAnswer:'
    return Example(prompt, (" Yes", " No", " Maybe"), int(row["label"]))


def wic(row: dict[str, Any]) -> Example:
    """``Does the word "{word}" have the same meaning in these two sentences? Yes, No?`` + No/Yes."""
    prompt = (
        f'Does the word "{row["word"]}" have the same meaning in these two sentences? Yes, No?\n'
        f"{row['sentence1']}\n{row['sentence2']}\nAnswer:"
    )
    return Example(prompt, YES_NO, int(row["label"]))


def wsc(row: dict[str, Any]) -> Example:
    """``{text} In the previous sentence, does the pronoun "{span2}" refer to {span1}?`` + No/Yes."""
    prompt = (
        f'{row["text"]}\nIn the previous sentence, does the pronoun "{row["span2_text"].lower()}" '
        f"refer to {row['span1_text']}? Yes or No?\nAnswer:"
    )
    return Example(prompt, YES_NO, int(row["label"]))


def multirc(row: dict[str, Any]) -> Example:
    """Paragraph, question, ``I found this answer "{answer}". Is that correct? Yes or No?`` + No/Yes."""
    prompt = (
        f"{row['paragraph']}\nQuestion: {row['question']}\n"
        f'I found this answer "{row["answer"]}". Is that correct? Yes or No?\nAnswer:'
    )
    return Example(prompt, YES_NO, int(row["label"]))


def winogrande(row: dict[str, Any]) -> Example:
    """Sentence up to the blank; options are each candidate plus the rest of the sentence."""
    sentence = row["sentence"]
    idx = sentence.index("_")
    rest = sentence[idx + 1 :]
    options = (" " + row["option1"] + rest, " " + row["option2"] + rest)
    return Example(sentence[:idx].rstrip(), options, int(row["answer"]) - 1)


@dataclass(frozen=True)
class HFTask:
    """A dataset on the Hugging Face hub and the template turning its rows into examples."""

    path: str
    config: str | None
    kind: str
    template: Callable[[dict[str, Any]], Example]
    splits: tuple[str, ...] = ("train", "validation")

    def labelled(self, row: dict[str, Any]) -> bool:
        """Rows without a gold label (hidden test labels) are skipped."""
        if "answer" in row:
            return str(row["answer"]) in {"1", "2"}
        return int(row.get("label", -1)) >= 0

    @property
    def source(self) -> str:
        """Provenance line."""
        cfg = f"/{self.config}" if self.config else ""
        return f"Hugging Face dataset {self.path}{cfg} (needs HF hub; licence per dataset card)"


HF_TASKS: dict[str, HFTask] = {
    "hf_sst2": HFTask("nyu-mll/glue", "sst2", CLASSIFICATION, sst2),
    "hf_copa": HFTask("aps/super_glue", "copa", MULTIPLE_CHOICE, copa),
    "hf_boolq": HFTask("aps/super_glue", "boolq", CLASSIFICATION, boolq),
    "hf_rte": HFTask("aps/super_glue", "rte", CLASSIFICATION, rte),
    "hf_cb": HFTask("aps/super_glue", "cb", CLASSIFICATION, cb),
    "hf_wic": HFTask("aps/super_glue", "wic", CLASSIFICATION, wic),
    "hf_wsc": HFTask("aps/super_glue", "wsc.fixed", CLASSIFICATION, wsc),
    "hf_multirc": HFTask("aps/super_glue", "multirc", CLASSIFICATION, multirc),
    "hf_winogrande": HFTask("allenai/winogrande", "winogrande_xl", MULTIPLE_CHOICE, winogrande),
}


def load_hf_task(name: str) -> tuple[HFTask, list[Example]]:
    """Load and template the HF dataset behind ``name``, failing fast when the hub is unreachable."""
    task = HF_TASKS[name]
    if not offline_mode():
        reason = probe_hub()
        if reason is not None:
            raise L2LZOError(
                f"task {name!r} needs the Hugging Face hub, which is not reachable: {reason} "
                "(set HF_DATASETS_OFFLINE=1 to use a copy already in the HF cache)"
            )
    try:
        import datasets

        rows: list[dict[str, Any]] = []
        for split in task.splits:
            rows.extend(datasets.load_dataset(task.path, task.config, split=split))
    except Exception as e:  # any failure of the hub or the HF cache is the user's environment
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise L2LZOError(
            f"task {name!r} needs the Hugging Face hub, which is not reachable or lacks "
            f"{task.path}/{task.config}: {first}"
        ) from None
    return task, [task.template(r) for r in rows if task.labelled(r)]
