"""Deterministic train/dev/test splits.

Rules (all pure functions of the examples and the arguments):

1. Exact duplicates (same prompt and options) are dropped, keeping the first occurrence.
2. Every example gets a stable key: the sha256 of its prompt and options. Examples are ordered by key.
3. **test** is the first ``min(test_size, n // 2)`` examples in that order, **dev** the next
   ``min(dev_size, (n - n_test) // 2)``, the rest is the **train pool**. So test never depends on
   ``seed`` (nor on ``dev_size``/``train_size``), dev never depends on ``seed``, and a small task still
   keeps at least a quarter of its examples for training.
4. **train** is drawn from the train pool with ``random.Random(seed)``: for classification
   ``train_size`` is k-shot *per class* (MeZO's convention: up to k examples of every label), for
   multiple choice it is the total number of examples; ``None`` means the whole pool. The drawn
   examples are shuffled with the same generator. Sizes larger than available give what is available.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from .base import CLASSIFICATION, Example


def example_key(example: Example) -> str:
    """Stable content hash of an example (its prompt and options, not its label)."""
    h = hashlib.sha256(example.prompt.encode("utf-8"))
    for option in example.options:
        h.update(b"\x1f")
        h.update(option.encode("utf-8"))
    return h.hexdigest()


def dedupe(examples: Sequence[Example]) -> list[Example]:
    """Drop examples whose prompt and options repeat an earlier one."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    out = []
    for ex in examples:
        k = (ex.prompt, ex.options)
        if k not in seen:
            seen.add(k)
            out.append(ex)
    return out


def split_examples(
    examples: Sequence[Example],
    kind: str,
    *,
    seed: int = 0,
    train_size: int | None = None,
    dev_size: int = 200,
    test_size: int = 500,
) -> tuple[list[Example], list[Example], list[Example]]:
    """Return ``(train, dev, test)`` following the rules in this module's docstring."""
    for label, value in (("train_size", train_size), ("dev_size", dev_size), ("test_size", test_size)):
        if value is not None and value < 0:
            raise ValueError(f"{label} must be >= 0, got {value}")
    ordered = sorted(dedupe(examples), key=example_key)
    n = len(ordered)
    n_test = min(test_size, n // 2)
    n_dev = min(dev_size, (n - n_test) // 2)
    test = ordered[:n_test]
    dev = ordered[n_test : n_test + n_dev]
    pool = ordered[n_test + n_dev :]
    rng = random.Random(seed)
    if train_size is None:
        train = list(pool)
    elif kind == CLASSIFICATION:
        by_label: dict[int, list[Example]] = {}
        for ex in pool:
            by_label.setdefault(ex.label, []).append(ex)
        train = []
        for label in sorted(by_label):
            group = by_label[label]
            train.extend(rng.sample(group, min(train_size, len(group))))
    else:
        train = rng.sample(pool, min(train_size, len(pool)))
    rng.shuffle(train)
    return train, dev, test
