"""Long real-model run (`pytest -m slow`, about 3 minutes): ZO-SGD learns polarity on minilm-l6."""

from __future__ import annotations

import pytest

from l2lzo.finetune import FinetuneConfig, finetune

pytestmark = pytest.mark.slow


def test_zo_sgd_lowers_dev_loss_of_minilm_on_polarity(tmp_path):
    config = FinetuneConfig(model="minilm-l6", task="polarity", optimizer="zo-sgd", steps=150, eval_every=150,
                            lr=5e-5, train_size=256, output=str(tmp_path / "run.json"))
    result = finetune(config, progress=False)
    first, last = result.evals[0], result.evals[-1]
    assert last["dev_loss"] < first["dev_loss"] - 0.05
    assert result.final_test["accuracy"] > result.initial_test["accuracy"]
