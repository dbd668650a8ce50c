"""A benchmark cell: its kind, settings, labels and the key that identifies its result.

Settings are ``FinetuneConfig`` fields (read from the dataclass, so a field added there is a valid grid setting
without any change here) plus ``cpus``, the CPUs a cell gets (and its torch thread count). ``output`` is the
bench's business and cannot be set, nor can ``save`` and ``overwrite`` (cells keep no weights).

The key hashes the cell's *full* config: every ``FinetuneConfig`` field after defaults (``lr``, ``eps`` and
``steps`` resolved), the kind and ``cpus``. A string setting that names an existing file or folder counts by its
content: its sha256 enters the key instead of its path, so an edited task file or a retrained policy file is a
new cell, and moving a file is not. Other strings (built-in names, registry refs such as ``MODEL@3``, ``auto``)
enter as they are.
Fields whose value is ``None`` are left out of the key, so a new optional field keeps existing keys valid; so
are peft knobs (``lora_r``, ..., ``num_virtual_tokens``) equal to their scheme's default, which is what a cell
without them runs: a cell with another ``lora_r`` is another cell, one with the default is the same cell.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from l2lzo.errors import ConfigError, check_choice
from l2lzo.finetune import SCHEME_KNOBS, FinetuneConfig, scheme_knobs

FINETUNE = "finetune"
PROBE = "probe"
KINDS = (FINETUNE, PROBE)
INFERENCE = "inference"  # the probe "optimizer" that only runs forwards: the memory and time reference
CPUS = "cpus"
NOT_SETTINGS = ("output", "save", "overwrite")  # FinetuneConfig fields a grid cannot set
KEY_LENGTH = 16  # hex digits of sha256 kept: 64 bits, far from colliding within a grid's results


def setting_types() -> dict[str, tuple[type, ...]]:
    """Every setting a grid may give, with the Python types its value may have (TOML has no null)."""
    hints = typing.get_type_hints(FinetuneConfig)
    allowed = {}
    for f in fields(FinetuneConfig):
        if f.name in NOT_SETTINGS:
            continue
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        allowed[f.name] = tuple(a for a in args if a is not type(None))
    allowed[CPUS] = (int,)
    return allowed


def check_type(value, allowed: tuple[type, ...]) -> object:
    """``value`` as a setting of types ``allowed`` stores it (an int becomes a float for a float setting), or
    ``ConfigError``."""
    if isinstance(value, bool):
        if bool in allowed:
            return value
    elif isinstance(value, int) and int in allowed:
        return value
    elif isinstance(value, int | float) and float in allowed:
        return float(value)
    elif isinstance(value, str) and str in allowed:
        return value
    expected = " or ".join(t.__name__ for t in allowed)
    raise ConfigError(f"expected {expected}, got {type(value).__name__} {value!r}")


def finetune_config(settings: dict) -> FinetuneConfig:
    """The ``FinetuneConfig`` of a cell's settings (``cpus`` is the runner's, not the run's)."""
    return FinetuneConfig(**{k: v for k, v in settings.items() if k != CPUS})


def check_settings(kind: str, settings: dict) -> None:
    """Raise ``L2LZOError`` (one line) if these settings cannot make a cell of ``kind``; loads nothing slow."""
    check_choice("cell kind", kind, KINDS)
    config = finetune_config(settings)
    if kind == PROBE and config.optimizer == INFERENCE:
        config.optimizer = FinetuneConfig.optimizer  # the optimizer's own checks do not apply to forwards
    config.validate()
    cpus = settings.get(CPUS, 1)
    if cpus < 1:
        raise ConfigError(f"cpus must be >= 1, got {cpus}")
    _check_task(config.task)


def _check_task(task: str) -> None:
    from l2lzo.tasks.builtin import BUILTIN_TASKS
    from l2lzo.tasks.hf import HF_TASKS
    if task in HF_TASKS or Path(task).expanduser().is_file():
        return  # an HF task is only known to load once the hub answers: its run says so if not
    if task not in BUILTIN_TASKS:
        raise ConfigError(f"unknown task {task!r}: not a built-in or HF task (see `l2lzo tasks`) and not a file")
    # Whether its data is prepared is checked when the grid runs (`run_grid`): a grid is valid without data.


@dataclass
class Cell:
    """One cell of a grid: a fine-tune run or a memory/speed probe with fixed settings."""

    kind: str
    settings: dict  # FinetuneConfig fields + cpus; file references as absolute paths
    labels: dict[str, str]  # axis -> the label of this cell's value on it, in axis order
    key: str
    config: dict  # what the key hashes: the full config, files as {"file": name, "sha256": ...}

    @property
    def cpus(self) -> int:
        return self.settings.get(CPUS, 1)

    def describe(self) -> str:
        return " ".join(f"{axis}={label}" for axis, label in self.labels.items()) or self.key


def resolve_path(value, folder: Path):
    """``value`` as an absolute path if it is a string naming an existing file or folder (relative paths are
    relative to ``folder``, the grid file's), else unchanged."""
    if not isinstance(value, str) or not value:
        return value
    path = Path(value).expanduser()
    path = path if path.is_absolute() else folder / path
    return str(path.resolve()) if path.exists() else value


def make_cell(kind: str, settings: dict, labels: dict[str, str], digests: dict[str, str]) -> Cell:
    """A cell with its key computed; settings naming files (absolute paths, see ``resolve_path``) count by content.

    ``digests`` memoises file hashes over one grid (a model folder is hashed once, not once per cell).
    """
    refs = {}
    for name, value in settings.items():
        if isinstance(value, str) and Path(value).is_absolute() and Path(value).exists():
            if value not in digests:
                digests[value] = content_sha256(Path(value))
            refs[name] = {"file": Path(value).name, "sha256": digests[value]}
    config = finetune_config(settings)
    plan = config.plan()  # no policy is loaded here: a cell names its policy, whose content is in ``refs``
    full = {**asdict(config), "lr": None if config.optimizer == INFERENCE else plan.lr, "eps": plan.eps,
            "steps": plan.steps, **refs}
    defaults = scheme_knobs(config.scheme)
    full = {k: v for k, v in full.items() if v is not None and k not in NOT_SETTINGS
            and not (k in SCHEME_KNOBS and v == defaults[k])}
    full[CPUS] = settings.get(CPUS, 1)
    blob = json.dumps({"kind": kind, "config": full}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]
    return Cell(kind=kind, settings=settings, labels=labels, key=key, config=full)


def content_sha256(path: Path) -> str:
    """sha256 of a file's bytes; for a folder, of its files' relative paths and contents, in sorted order."""
    if path.is_file():
        return _file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{_file_sha256(file)}\n".encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

