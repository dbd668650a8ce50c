"""The fine-tune loop's own mechanisms: the best-dev checkpoint it restores at the end, and ZO-SGD learning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import l2lzo.finetune
from l2lzo.finetune import FinetuneConfig, finetune
from l2lzo.models import CAUSAL, tiny_model
from l2lzo.scoring import Scorer
from l2lzo.tasks import load_task


def write_task(path: Path, n: int = 60) -> Path:
    rows = [{"text": f"{'good' if i % 2 else 'bad'} thing number {i}", "label": "ab"[i % 2]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def scripted_dev(monkeypatch, splits, accuracies: list[float]) -> dict[int, dict]:
    """Make the loop's dev evaluations report ``accuracies`` (one per eval, in order), whatever the model does.

    Returns, per eval (by position), the trainable weights and the real test metrics at that moment: what the
    run must end with if that eval is the best one.
    """
    seen: dict[int, dict] = {}

    class ScriptedScorer(Scorer):
        def evaluate(self, examples, *args, **kwargs):
            metrics = super().evaluate(examples, *args, **kwargs)
            if examples is not splits.dev:
                return metrics
            position = len(seen)
            seen[position] = {"weights": trainable(self.loaded.model), "test": super().evaluate(splits.test)}
            return {**metrics, "accuracy": accuracies[position]}

    monkeypatch.setattr(l2lzo.finetune, "Scorer", ScriptedScorer)
    return seen


def run(tmp_path, **overrides):
    task = write_task(tmp_path / "toy.jsonl")
    settings = dict(model="tiny", task=str(task), optimizer="zo-sgd", steps=6, eval_every=2, batch_size=4,
                    lr=0.05, train_size=8, dev_size=8, test_size=8, output=str(tmp_path / "run.json"))
    settings.update(overrides)
    splits = load_task(str(task), train_size=settings["train_size"], dev_size=settings["dev_size"],
                       test_size=settings["test_size"])
    loaded = tiny_model(CAUSAL)
    return loaded, splits, lambda: finetune(FinetuneConfig(**settings), loaded=loaded, splits=splits,
                                            progress=False)


@pytest.mark.parametrize(("accuracies", "best_eval"), [
    ([0.2, 0.5, 0.9, 0.3], 2),  # best in the middle: steps after it are undone
    ([0.6, 0.5, 0.6, 0.1], 0),  # nothing beats the start (a tie is no improvement): the initial weights come back
])
def test_the_run_ends_on_the_best_dev_weights(tmp_path, monkeypatch, accuracies, best_eval):
    loaded, splits, go = run(tmp_path)
    seen = scripted_dev(monkeypatch, splits, accuracies)
    result = go()
    assert len(seen) == 4 and result.best_step == 2 * best_eval
    best, last = seen[best_eval], seen[3]
    assert any(not torch.equal(best["weights"][n], last["weights"][n]) for n in best["weights"])  # it trained
    final = trainable(loaded.model)
    for name, want in best["weights"].items():
        assert torch.equal(final[name], want), name
    assert result.final_test == best["test"] and result.final_test["loss"] != last["test"]["loss"]
    on_disk = load_file(result.checkpoint)
    assert on_disk.keys() == best["weights"].keys()
    assert all(torch.equal(on_disk[n], t) for n, t in best["weights"].items())


def test_zo_sgd_learns_through_finetune(tmp_path):
    """MeZO on LoRA of a tiny model, a separable toy task: the dev loss falls (measured over 6 seeds: 0.709 ->
    0.607-0.634 in 100 steps at this lr; a no-op or ascending update leaves it >= 0.709)."""
    _, _, go = run(tmp_path, scheme="lora", steps=100, eval_every=50, batch_size=8, lr=0.2, train_size=16,
                   dev_size=12, test_size=12)
    result = go()
    dev = [e["dev_loss"] for e in result.evals]
    assert [e["step"] for e in result.evals] == [0, 50, 100]
    assert dev[-1] < dev[0] - 0.04, dev
    assert result.final_test["loss"] < result.initial_test["loss"], (result.initial_test, result.final_test)
