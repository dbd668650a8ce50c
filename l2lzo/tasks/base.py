"""The value types every task loader produces."""

from __future__ import annotations

from dataclasses import dataclass

CLASSIFICATION = "classification"
MULTIPLE_CHOICE = "multiple_choice"


@dataclass(frozen=True)
class Example:
    """One scored example: the model continues ``prompt`` with each option; ``label`` indexes the right one.

    ``prompt`` ends right where the answer starts (MeZO style) and every option starts with a space,
    e.g. ``Example("a gripping film . It was", (" terrible", " great"), 1)``.
    """

    prompt: str
    options: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class TaskInfo:
    """What a task is and whether its data is on this machine.

    ``kind`` is ``"classification"`` (one fixed verbalizer, the same options for every example) or
    ``"multiple_choice"`` (options vary per example). ``source`` records provenance and licence;
    ``requires`` says what preparing or loading it needs (a package on the index, the HF hub, a file);
    ``family`` and ``dataset`` (the underlying data, whichever package ships it) are set for built-ins.
    """

    name: str
    kind: str
    source: str
    prepared: bool
    requires: str = ""
    family: str = ""
    dataset: str = ""


@dataclass(frozen=True)
class TaskSplits:
    """A task's deterministic train/dev/test splits (see :mod:`l2lzo.tasks.splits` for the rules)."""

    info: TaskInfo
    train: list[Example]
    dev: list[Example]
    test: list[Example]
