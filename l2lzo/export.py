"""Saving the fine-tuned weights where the ecosystem loads them: ``finetune --save DIR``.

``full`` writes a ``save_pretrained`` folder with the tokenizer (the class the model was loaded as, recorded in
its ``config.json``: ``AutoModelForCausalLM`` or ``AutoModel`` loads it); ``lora``, ``prefix`` and ``prompt`` write
a peft adapter folder with the tokenizer (``PeftModel.from_pretrained(base, DIR)``). The folder is written beside
``DIR`` under a temporary name and renamed into place at the end, so an interrupted save leaves no half folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from l2lzo.errors import L2LZOError
from l2lzo.models import CAUSAL, LoadedModel

TRANSFORMERS = "transformers"
PEFT = "peft"


def check_save_target(path: str | Path, overwrite: bool, flag: str = "--save") -> None:
    """One-line ``L2LZOError`` unless ``path`` is absent, an empty folder, or a folder ``overwrite`` may replace."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise L2LZOError(f"{flag} {target}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise L2LZOError(f"{flag} {target} is not empty: pass --overwrite to replace it")


def save_weights(loaded: LoadedModel, path: str | Path, overwrite: bool = False) -> dict:
    """Write ``loaded`` (its current weights) to ``path``; what the results record: path, format, how to load."""
    from peft import PeftModel

    target = Path(path).expanduser().absolute()
    check_save_target(target, overwrite)  # again: the folder may have been filled while the run trained
    model = loaded.model
    is_peft = isinstance(model, PeftModel)
    if is_peft:
        adapter = model.peft_config[model.active_adapter]
        base = adapter.base_model_name_or_path
        if base and Path(base).expanduser().is_dir():  # a local folder: absolute, so the adapter finds it anywhere
            adapter.base_model_name_or_path = str(Path(base).expanduser().resolve())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if is_peft:
        peft_type = str(getattr(adapter.peft_type, "value", adapter.peft_type))
        return {"path": str(target), "format": PEFT, "peft_type": peft_type,
                "base_model": adapter.base_model_name_or_path}
    auto = "AutoModelForCausalLM" if loaded.family == CAUSAL else "AutoModel"
    return {"path": str(target), "format": TRANSFORMERS, "class": type(model).__name__, "auto_class": auto}


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` (checked replaceable) is moved aside first and then
    deleted, so ``target`` is never a mix of the two."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, old / "previous")
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.replace(old / "previous", target)
        raise
    finally:
        if not (old / "previous").exists() or target.exists():
            shutil.rmtree(old, ignore_errors=True)
