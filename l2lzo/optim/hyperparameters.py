"""The one home of the optimizer hyperparameter rules.

The fine-tune config, every optimizer and a policy's recommendations check lr, eps and the query count
here, so a value that one of them accepts is accepted by all of them.
"""

from __future__ import annotations

import math

from l2lzo.errors import ConfigError


def check_unit_interval(name: str, value: float) -> float:
    """``value`` if it is a number in (0, 1], else ``ConfigError``."""
    if not (isinstance(value, int | float) and math.isfinite(value) and 0 < value <= 1):
        raise ConfigError(f"{name} must be in (0, 1], got {value}")
    return value


def check_lr(lr: float) -> float:
    """Learning rates live in (0, 1] (ZO full fine-tuning uses ~1e-6..1e-4, prefix/prompt tuning ~1e-2)."""
    return check_unit_interval("lr", lr)


def check_eps(eps: float) -> float:
    """The SPSA perturbation scale lives in (0, 1] (MeZO uses 1e-3)."""
    return check_unit_interval("eps", eps)


def check_n_queries(n_queries: int) -> int:
    """At least one SPSA direction per step."""
    if n_queries < 1:
        raise ConfigError(f"n_queries must be >= 1, got {n_queries}")
    return n_queries
