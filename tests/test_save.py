"""``finetune --save`` / ``finetune-batch --save-dir``: the best-dev weights in the formats the ecosystem loads, and
the peft knobs (``--lora-r`` ...) from the command line to the peft config and the results."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import l2lzo.finetune
from l2lzo.batch import BatchConfig, finetune_batch
from l2lzo.bench.cells import make_cell
from l2lzo.cli import main
from l2lzo.errors import L2LZOError
from l2lzo.finetune import FinetuneConfig, finetune
from l2lzo.models import CAUSAL, ENCODER, tiny_model
from l2lzo.scoring import Scorer

SMALL = dict(optimizer="fo-adam", steps=2, eval_every=2, batch_size=4, lr=1e-2, train_size=8, dev_size=8,
             test_size=8, max_length=32)

# Loads a saved folder with transformers / peft alone (no l2lzo loader) and prints its dev metrics.
LOAD_AND_SCORE = """
import json, sys
from peft import PeftModel
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
from l2lzo.models import LoadedModel, prepare_tokenizer
from l2lzo.scoring import Scorer
from l2lzo.tasks import load_task

out = {}
for run in json.loads(sys.argv[1]):
    auto = AutoModelForCausalLM if run["family"] == "causal" else AutoModel
    if run["format"] == "transformers":
        model = auto.from_pretrained(run["path"])
    else:
        model = PeftModel.from_pretrained(auto.from_pretrained(run["base"]), run["path"])
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(run["path"])
    prepare_tokenizer(tokenizer, run["family"])
    splits = load_task(run["task"], train_size=8, dev_size=8, test_size=8)
    scorer = Scorer(LoadedModel("saved", model, tokenizer, run["family"]), max_length=32)
    out[run["name"]] = scorer.evaluate(splits.dev)["loss"]
print(json.dumps(out))
"""


def write_task(path: Path, n: int = 40, word: str = "thing") -> Path:
    rows = [{"text": f"{'good' if i % 2 else 'bad'} {word} number {i}", "label": "ab"[i % 2]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tiny_encoder_dir(tmp_path):
    folder = tmp_path / "tiny-encoder"
    loaded = tiny_model(ENCODER)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


def best_is_last(monkeypatch):
    """The run's evaluations are test, dev (step 0), dev (step 2), test: dev accuracy 0 at step 0 and 1 at step 2
    make the best-dev weights the trained ones, not the initial ones."""
    calls = []

    class LastIsBest(Scorer):
        def evaluate(self, examples, *args, **kwargs):
            calls.append(1)
            return {**super().evaluate(examples, *args, **kwargs), "accuracy": float(len(calls) >= 3)}

    monkeypatch.setattr(l2lzo.finetune, "Scorer", LastIsBest)


def test_saved_weights_load_in_a_fresh_process_with_the_same_dev_loss(tiny_causal_dir, tiny_encoder_dir, tmp_path,
                                                                      monkeypatch):
    task = write_task(tmp_path / "toy.jsonl")
    runs, expected = [], {}
    cases = [(CAUSAL, tiny_causal_dir, s) for s in ("full", "lora", "prefix", "prompt")]
    cases += [(ENCODER, tiny_encoder_dir, s) for s in ("full", "lora")]
    for family, base, scheme in cases:
        best_is_last(monkeypatch)
        name = f"{family}-{scheme}"
        result = finetune(FinetuneConfig(model=str(base), task=str(task), scheme=scheme, **SMALL,
                                         output=str(tmp_path / f"{name}.json"), save=str(tmp_path / "saved" / name)),
                          progress=False)
        assert result.best_step == 2
        first, best = result.evals[0]["dev_loss"], result.evals[-1]["dev_loss"]
        assert best != first  # it trained: a save of the initial weights would not tell the two apart
        expected[name] = best
        recorded = json.loads((tmp_path / f"{name}.json").read_text())["saved"]
        assert recorded["path"] == str(tmp_path / "saved" / name)
        assert recorded["format"] == ("transformers" if scheme == "full" else "peft")
        runs.append({"name": name, "family": family, "format": recorded["format"], "path": recorded["path"],
                     "base": str(base), "task": str(task)})
    assert not [p for p in (tmp_path / "saved").iterdir() if p.name.startswith(".")]  # no temp folders left
    proc = subprocess.run([sys.executable, "-c", LOAD_AND_SCORE, json.dumps(runs)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == pytest.approx(expected, abs=1e-5)


def test_a_non_empty_save_folder_is_refused_before_training(tmp_path, capsys, monkeypatch):
    task = write_task(tmp_path / "toy.jsonl")
    target = tmp_path / "keep"
    target.mkdir()
    (target / "mine.txt").write_text("not yours")
    monkeypatch.setattr(l2lzo.finetune, "load_task", lambda *a, **k: pytest.fail("loaded data before refusing"))
    code = main(["finetune", "--model", "tiny", "--task", str(task), "--steps", "1", "--save", str(target),
                 "--output", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is not empty: pass --overwrite" in err
    assert (target / "mine.txt").read_text() == "not yours" and not (tmp_path / "r.json").exists()


def test_overwrite_replaces_the_folder_whole(tmp_path):
    task = write_task(tmp_path / "toy.jsonl")
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    config = FinetuneConfig(model="tiny", task=str(task), scheme="lora", **SMALL, output=str(tmp_path / "r.json"),
                            save=str(target), overwrite=True)
    finetune(config, progress=False)
    assert {p.name for p in target.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert not (target / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_peft_knobs_reach_the_peft_config_and_the_results(tmp_path, tiny_causal_dir):
    task = write_task(tmp_path / "toy.jsonl")
    out = tmp_path / "r.json"
    code = main(["finetune", "--model", str(tiny_causal_dir), "--task", str(task), "--scheme", "lora",
                 "--optimizer", "fo-adam", "--steps", "1", "--eval-every", "1", "--batch-size", "4", "--train-size",
                 "4", "--dev-size", "4", "--test-size", "4", "--max-length", "32", "--lora-r", "3", "--lora-alpha",
                 "6", "--lora-dropout", "0.1", "--lora-targets", "q_proj,o_proj", "--output", str(out),
                 "--save", str(tmp_path / "adapter")])
    assert code == 0
    saved = json.loads(out.read_text())
    knobs = {k: saved["config"][k] for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_targets",
                                            "num_virtual_tokens")}
    assert knobs == {"lora_r": 3, "lora_alpha": 6, "lora_dropout": 0.1, "lora_targets": "q_proj,o_proj",
                     "num_virtual_tokens": None}
    assert saved["peft"] == {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 3, "lora_alpha": 6,
                             "lora_dropout": 0.1, "target_modules": ["o_proj", "q_proj"]}
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (3, 6, 0.1)
    assert sorted(adapter["target_modules"]) == ["o_proj", "q_proj"]
    # 2 layers x (q_proj 32x32, o_proj 32x32): r x (in + out) each
    assert saved["trainable_parameters"] == 2 * 2 * 3 * (32 + 32)


@pytest.mark.parametrize("scheme", ["prefix", "prompt"])
def test_num_virtual_tokens_reaches_prefix_and_prompt(tmp_path, scheme):
    task = write_task(tmp_path / "toy.jsonl")
    result = finetune(FinetuneConfig(model="tiny", task=str(task), scheme=scheme, num_virtual_tokens=3, **SMALL,
                                     output=str(tmp_path / "r.json")), progress=False)
    assert result.config["num_virtual_tokens"] == 3 and result.peft["num_virtual_tokens"] == 3
    defaults = finetune(FinetuneConfig(model="tiny", task=str(task), scheme=scheme, **SMALL,
                                       output=str(tmp_path / "d.json")), progress=False)
    assert defaults.config["num_virtual_tokens"] == {"prefix": 5, "prompt": 10}[scheme]


@pytest.mark.parametrize(("argv", "message"), [
    (["--scheme", "lora", "--lora-r", "0"], "--lora-r must be >= 1, got 0"),
    (["--scheme", "lora", "--lora-dropout", "1"], "--lora-dropout must be in [0, 1), got 1.0"),
    (["--scheme", "lora", "--lora-dropout", "-0.1"], "--lora-dropout must be in [0, 1)"),
    (["--scheme", "lora", "--lora-alpha", "0"], "--lora-alpha must be >= 1"),
    (["--scheme", "prompt", "--num-virtual-tokens", "0"], "--num-virtual-tokens must be >= 1"),
    (["--scheme", "lora", "--lora-targets", "q_proj,,v_proj"], "--lora-targets must be a comma-separated list"),
    (["--scheme", "full", "--lora-r", "4"], "--lora-r applies to --scheme lora, not full"),
    (["--scheme", "lora", "--num-virtual-tokens", "4"], "--num-virtual-tokens applies to --scheme prefix and prompt"),
    (["--scheme", "lora", "--lora-targets", "q_proj,nope_proj"], "--lora-targets: 'nope_proj' matches no module"),
])
def test_bad_peft_knobs_are_one_line(tmp_path, capsys, argv, message):
    task = write_task(tmp_path / "toy.jsonl")
    code = main(["finetune", "--model", "tiny", "--task", str(task), "--steps", "1", "--train-size", "4",
                 "--dev-size", "4", "--test-size", "4", "--output", str(tmp_path / "r.json"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_batch_save_dir_writes_one_folder_per_task(tiny_causal_dir, tmp_path):
    tasks = [str(write_task(tmp_path / f"{w}.jsonl", word=w)) for w in ("alpha", "beta")]
    shared = {k: SMALL[k] for k in ("batch_size", "train_size", "dev_size", "test_size", "eval_every",
                                    "max_length")}

    def batch(**overrides):
        values = dict(model=str(tiny_causal_dir), tasks=tasks, optimizer="fo-adam", scheme="lora", steps=2, lr=1e-2,
                      output_dir=str(tmp_path / "out"), save_dir=str(tmp_path / "weights"),
                      finetune={**shared, "lora_r": 2})
        return finetune_batch(BatchConfig(**{**values, **overrides}), progress=False, say=lambda _: None)

    summary = batch()
    weights = tmp_path / "weights"
    assert sorted(p.name for p in weights.iterdir()) == ["alpha", "beta"]
    for row in summary["rows"]:
        stem = Path(row["task"]).stem
        assert row["saved"] == str(weights / stem)
        adapter = json.loads((weights / stem / "adapter_config.json").read_text())
        assert adapter["r"] == 2
    # A rerun finds both done and saved; another lora_r is other settings.
    assert [r["status"] for r in batch()["rows"]] == ["skipped (done)", "skipped (done)"]
    with pytest.raises(L2LZOError, match=r"different settings \(lora_r\)"):
        batch(finetune={**shared, "lora_r": 4})
    # Done but its folder gone: trained again to save it; a foreign non-empty folder is refused before training.
    shutil.rmtree(weights / "beta")
    assert [r["status"] for r in batch()["rows"]] == ["skipped (done)", "trained"]
    with pytest.raises(L2LZOError, match=r"--save-dir: task folder .*alpha is not empty"):
        batch(output_dir=str(tmp_path / "other"))


def test_bench_keys_change_with_a_knob_and_not_without_one():
    base = {"model": "tiny", "task": "polarity", "scheme": "lora", "steps": 4}
    plain = make_cell("finetune", base, {}, {})
    assert make_cell("finetune", {**base, "lora_r": 8}, {}, {}).key == plain.key  # the default: the same run
    other = make_cell("finetune", {**base, "lora_r": 4}, {}, {})
    assert other.key != plain.key and other.config["lora_r"] == 4 and "lora_r" not in plain.config
    assert not {"save", "overwrite"} & set(plain.config)


def test_batch_save_dir_on_ray_writes_into_the_folder_given(tiny_causal_dir, tmp_path, monkeypatch):
    tasks = [str(write_task(tmp_path / f"{w}.jsonl", word=w)) for w in ("alpha", "beta")]
    monkeypatch.chdir(tmp_path)  # a relative --save-dir: the Ray workers need not share this working directory
    shared = {k: SMALL[k] for k in ("batch_size", "train_size", "dev_size", "test_size", "eval_every",
                                    "max_length")}
    summary = finetune_batch(BatchConfig(model=str(tiny_causal_dir), tasks=tasks, optimizer="fo-adam", steps=2,
                                         lr=1e-2, output_dir="out", save_dir="weights", ray=True, finetune=shared),
                             progress=False, say=lambda _: None)
    assert [r["saved"] for r in summary["rows"]] == [str(tmp_path / "weights" / s) for s in ("alpha", "beta")]
    for stem in ("alpha", "beta"):
        assert (tmp_path / "weights" / stem / "model.safetensors").is_file()
        assert (tmp_path / "weights" / stem / "config.json").is_file()


def test_batch_cli_refuses_a_non_empty_task_folder_before_training(tmp_path, capsys, monkeypatch):
    task = write_task(tmp_path / "alpha.jsonl")
    (tmp_path / "weights" / "alpha").mkdir(parents=True)
    (tmp_path / "weights" / "alpha" / "x").write_text("")
    monkeypatch.setattr("l2lzo.batch.finetune", lambda *a, **k: pytest.fail("trained before refusing"))
    code = main(["finetune-batch", "--model", "tiny", "--tasks", str(task), "--scheme", "lora", "--lora-r", "2",
                 "--steps", "1", "--output-dir", str(tmp_path / "out"), "--save-dir", str(tmp_path / "weights")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "alpha is not empty: pass --overwrite" in err
