"""Shared fixtures: tiny models built from configs, and a hermetic environment for every test.

Every test gets fresh, empty folders of its own for l2lzo's cache and registry, the XDG folders, matplotlib and
the HF home (with the hub, datasets and token paths of HF libraries already imported), and runs with the HF
libraries offline (tests/hermetic.py). A fast test also runs under the audit hook that refuses any access to
the real caches and any connection beyond this machine. Slow and smoke tests keep only the real l2lzo cache
(the models unpacked from their wheels, the prepared task data) and may use the package index.
"""

from __future__ import annotations

import hermetic

# Before anything imports the HF libraries: they read HF_HOME (and the token file under it) at import time.
hermetic.start_session()

import pytest  # noqa: E402

from l2lzo.models import CAUSAL, ENCODER, tiny_model  # noqa: E402
from l2lzo.tasks import Example  # noqa: E402


@pytest.fixture(autouse=True)
def _hermetic(request, monkeypatch, tmp_path_factory):
    """Each test gets its own caches (see the module docstring and tests/hermetic.py); a fast test may touch
    neither the real ones nor the network. Slow and smoke tests keep the real l2lzo cache, nothing else."""
    guard = hermetic.guard()  # first call: the real roots, read before any test changes the environment
    real = request.node.get_closest_marker("slow") or request.node.get_closest_marker("smoke")
    if real:
        hermetic.isolate(monkeypatch, tmp_path_factory.mktemp("env"), keep=hermetic.REAL_DATA_ENV)
        yield
        return
    hermetic.isolate(monkeypatch, tmp_path_factory.mktemp("env"))
    guard.active = True
    try:
        yield
    finally:
        guard.active = False
    assert not guard.violations, guard.violations.pop()


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
