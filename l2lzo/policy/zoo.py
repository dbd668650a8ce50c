"""The policies that ship with l2lzo (package data in ``l2lzo/policy/shipped/``).

``--policy auto`` falls back to them when neither the registry nor the service has a policy for the model's
fingerprint (``l2lzo.policy.source``), and ``l2lzo registry push --shipped`` seeds a registry (or the folder a
service serves) with them. Each file is a full artifact, validated like a registry upload when it is read;
its evaluation is in ``benchmarks/results/policy_eval/`` (README, "Shipped policies").

This module imports no torch, so the registry's command line can use it.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

#: Where the shipped artifacts lie (a module attribute, so tests can point it at a folder of their own).
SHIPPED_DIR = Path(str(files("l2lzo.policy") / "shipped"))


def shipped_files() -> list[Path]:
    """Every shipped artifact, sorted by name."""
    return sorted(SHIPPED_DIR.glob("*.safetensors")) if SHIPPED_DIR.is_dir() else []
