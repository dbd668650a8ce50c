"""Shared fixtures: tiny models built from configs, and an isolated, hub-free environment."""

from __future__ import annotations

import pytest

from l2lzo.models import CAUSAL, ENCODER, tiny_model
from l2lzo.tasks import Example


@pytest.fixture(autouse=True)
def _offline_hf(monkeypatch):
    # No test may wait on the HF hub; the real loaders are tested with local files and packages.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny_causal():
    return tiny_model(CAUSAL)


@pytest.fixture
def tiny_encoder():
    return tiny_model(ENCODER)


# One-character options are single tokens of the byte-level test tokenizer: the single-token (verbalizer)
# path; longer options such as " blue" are several tokens and are scored as candidates.
_LABEL_WORD = [
    Example("great movie. It was", ("n", "y"), 1),
    Example("awful plot. It was", ("n", "y"), 0),
    Example("loved it. It was", ("n", "y"), 1),
    Example("boring. It was", ("n", "y"), 0),
]
_CANDIDATE = [
    Example("Q: colour of the sky?\nA:", (" blue", " red sun"), 0),
    Example("Q: colour of grass?\nA:", (" purple rain", " green"), 1),
]


@pytest.fixture
def label_word_examples():
    return list(_LABEL_WORD)


@pytest.fixture
def candidate_examples():
    return list(_CANDIDATE)


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory):
    """A tiny causal model saved as a local model folder, loadable by name like a real one."""
    folder = tmp_path_factory.mktemp("tiny-causal")
    loaded = tiny_model(CAUSAL)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder
