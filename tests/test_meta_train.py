"""The meta-trainer: the meta-gradient against finite differences, the loop, checkpoints and resume, config."""

from __future__ import annotations

import json

import pytest
import torch

from l2lzo.blocks import discover_blocks
from l2lzo.errors import ConfigError, L2LZOError
from l2lzo.finetune import grouped_loss
from l2lzo.models import CAUSAL, tiny_model
from l2lzo.optim import ZOSGD
from l2lzo.perturbation import Direction
from l2lzo.policy.network import LearnedSigma, PerturbationPolicy
from l2lzo.scoring import Scorer
from l2lzo.tasks import Example
from l2lzo.tasks.builtin import BUILTIN_TASKS
from meta_train.config import EVALUATION_TASKS, META_TRAIN_TASKS, VALIDATION_TASKS, MetaTrainConfig, shared_datasets
from meta_train.episodes import Trajectory
from meta_train.loop import LocalRuntime, meta_train_loop
from meta_train.objective import look_ahead
from meta_train.validation import HeldoutGap

BATCHES = [[Example(f"item {i} {j}. It was", ("n", "y"), (i + j) % 2) for j in range(4)] for i in range(3)]
HELDOUT = [Example(f"other {j}. It was", ("n", "y"), j % 2) for j in range(6)]


def random_policy(seed: int = 0) -> PerturbationPolicy:
    policy = PerturbationPolicy()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return policy


class Recorder:
    """A sigma hook that keeps what it was asked (to replay the same steps with other policy weights)."""

    def __init__(self, inner: LearnedSigma):
        self.inner, self.infos, self.keep_graph, self.graphs = inner, [], True, inner.graphs

    def __call__(self, info):
        self.infos.append(info)
        return self.inner(info)


def test_meta_gradient_matches_finite_differences_of_the_replayed_trajectory():
    """d L_ho(theta_K) / d policy equals the slope of a replay under other weights, in which each step's SPSA
    scalar follows sigma to first order (g + sum_b dsigma_b <z_b, grad_b L_t>) as the objective models it."""
    loaded = tiny_model(CAUSAL)
    scorer = Scorer(loaded)
    blocks = discover_blocks(loaded.model)
    trajectory = Trajectory(blocks)
    policy = random_policy()
    optimizer = ZOSGD(loaded.model, lr=0.05, eps=1e-3, seed=3, blocks=blocks)
    hook = Recorder(LearnedSigma(policy, "full", total_steps=len(BATCHES), keep_graph=True))
    heldout = grouped_loss(scorer, HELDOUT)
    result = look_ahead(optimizer, hook, [grouped_loss(scorer, b) for b in BATCHES], heldout)
    recorded = [g.detach().clone() for g in hook.graphs]
    result.surrogate.backward()

    def replay() -> float:
        trajectory.reset()
        fresh = LearnedSigma(policy, "full", total_steps=len(BATCHES))
        for info, step, old in zip(hook.infos, result.steps, recorded, strict=True):
            sigma = torch.tensor([fresh(info)[b.name] for b in optimizer.blocks], dtype=torch.float64)
            moved = [Direction(d.seed, d.coeff + float(((sigma - old) * slope).sum()), d.scope)
                     for d, slope in zip(step.directions, step.scalar_slopes, strict=True)]
            optimizer.engine.add_([d.scaled(-0.05) for d in moved], sigma=sigma)
        with torch.no_grad():
            return float(heldout())

    assert replay() == pytest.approx(result.meta_loss, abs=1e-6)  # at the same weights the replay is the run
    checked = 0
    for name, param in policy.named_parameters():
        flat, grad = param.data.view(-1), param.grad.view(-1)
        index = int(grad.abs().argmax())
        if abs(float(grad[index])) < 1e-4:
            continue
        h = 1e-2
        flat[index] += h
        plus = replay()
        flat[index] -= 2 * h
        minus = replay()
        flat[index] += h
        assert (plus - minus) / (2 * h) == pytest.approx(float(grad[index]), rel=0.05, abs=1e-5), name
        checked += 1
    assert checked >= 3


def test_a_small_step_against_the_meta_gradient_lowers_the_rerun_episodes_loss():
    """What "the policy learns" means for one episode: rerun for real (new forwards, new SPSA scalars) with the
    policy moved a little against its meta-gradient, the held-out loss after the K steps is lower; moved with
    it, higher."""
    loaded = tiny_model(CAUSAL)
    scorer = Scorer(loaded)
    blocks = discover_blocks(loaded.model)
    trajectory = Trajectory(blocks)
    policy = random_policy()

    def episode() -> tuple[float, torch.Tensor]:
        trajectory.reset()
        optimizer = ZOSGD(loaded.model, lr=0.05, eps=1e-3, seed=3, blocks=blocks)
        sigma = LearnedSigma(policy, "full", total_steps=len(BATCHES), keep_graph=True)
        result = look_ahead(optimizer, sigma, [grouped_loss(scorer, b) for b in BATCHES],
                            grouped_loss(scorer, HELDOUT))
        return result.meta_loss, result.surrogate

    before, surrogate = episode()
    policy.zero_grad()
    surrogate.backward()
    grads = [p.grad.detach().clone() for p in policy.parameters()]
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    losses = {}
    for sign in (-1, 1):
        with torch.no_grad():
            for p, g in zip(policy.parameters(), grads, strict=True):
                p.add_(g / norm, alpha=sign * 0.02)
        losses[sign] = episode()[0]
        with torch.no_grad():
            for p, g in zip(policy.parameters(), grads, strict=True):
                p.sub_(g / norm, alpha=sign * 0.02)
    assert losses[-1] < before < losses[1], (losses[-1], before, losses[1])


def write_tasks(folder, count=3, n=48):
    paths = []
    for t in range(count):
        rows = [{"text": f"{'good' if i % 2 else 'bad'} item {i} of set {t}", "label": "ab"[i % 2]} for i in range(n)]
        path = folder / f"task{t}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(path))
    return paths


def tiny_config(tmp_path, **overrides) -> MetaTrainConfig:
    tasks = write_tasks(tmp_path)
    settings = dict(model="tiny", train_tasks=tasks[:2], validation_tasks=tasks[2:], meta_steps=6, inner_steps=2,
                    reset_every=3, batch_size=4, heldout_batch_size=6, train_size=12, validate_every=3,
                    validation_steps=2, checkpoint_every=2, lr=5e-3, meta_lr=0.05, final_steps=2)
    settings.update(overrides)
    return MetaTrainConfig(**settings)


def test_the_loop_validates_and_checkpoints(tmp_path):
    config = tiny_config(tmp_path)
    runtime = LocalRuntime(tmp_path / "ckpt", show_progress=False)
    full = meta_train_loop(config, runtime, loaded=tiny_model(CAUSAL))
    assert [h["meta_step"] for h in full.history] == list(range(1, 7))
    assert {"heldout_gap", "policy_loss", "mezo_loss"} <= set(full.history[2]) and "heldout_gap" in full.history[3]
    assert (tmp_path / "ckpt" / "trajectory-rank0.json").exists()


class Interrupted(Exception):
    """The worker dies right after a checkpoint."""


class DyingRuntime(LocalRuntime):
    def __init__(self, folder, die_after: int):
        super().__init__(folder, show_progress=False)
        self.die_after = die_after

    def report(self, metrics, state):
        super().report(metrics, state)
        if state is not None and state.meta_step == self.die_after:
            raise Interrupted


def run_outcome(state) -> tuple:
    """Everything a run ends with, timings aside."""
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in state.history]
    adam = state.optimizer.state_dict()["state"]
    return (history, state.policy.state_dict(), state.best_weights, state.best_step, state.best_gap,
            {i: {k: v for k, v in entry.items()} for i, entry in adam.items()})


def assert_same_outcome(a: tuple, b: tuple) -> None:
    assert a[0] == b[0]  # every meta-loss, gap, sigma range and selection, exactly
    for x, y in [(a[1], b[1]), (a[2] or {}, b[2] or {})]:
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert a[3:5] == b[3:5]
    assert a[5].keys() == b[5].keys()
    assert all(torch.equal(torch.as_tensor(a[5][i][k]), torch.as_tensor(b[5][i][k])) for i in a[5] for k in a[5][i])


@pytest.mark.parametrize(("reset_every", "die_after"), [(6, 3), (4, 6)])
def test_a_run_killed_inside_a_trajectory_and_resumed_is_the_uninterrupted_run(tmp_path, reset_every, die_after):
    """Killed after a checkpoint in the middle of a trajectory, resumed: same policy, history and selection.

    Before the replay log, the resumed worker restarted its trajectory from the pretrained weights: the meta-losses
    parted after the resume (0.656679 vs 0.654626 at step 4 of a 6-step trajectory) and the policies differed.
    """
    config = tiny_config(tmp_path, reset_every=reset_every, checkpoint_every=3, validate_every=2)
    unbroken = meta_train_loop(config, LocalRuntime(tmp_path / "a", show_progress=False), loaded=tiny_model(CAUSAL))
    with pytest.raises(Interrupted):
        meta_train_loop(config, DyingRuntime(tmp_path / "b", die_after), loaded=tiny_model(CAUSAL))
    position = die_after % reset_every
    assert position, "the test must stop inside a trajectory"
    log = json.loads((tmp_path / "b" / "trajectory-rank0.json").read_text())
    assert len(log["steps"]) == position * config.inner_steps
    resumed_runtime = LocalRuntime(tmp_path / "b", show_progress=False)
    resumed = meta_train_loop(config, resumed_runtime, loaded=tiny_model(CAUSAL))
    assert len(resumed_runtime.reports) == config.meta_steps - die_after
    assert_same_outcome(run_outcome(unbroken), run_outcome(resumed))


def test_a_checkpoint_without_this_workers_log_is_refused_inside_a_trajectory(tmp_path):
    config = tiny_config(tmp_path, reset_every=6, checkpoint_every=3, validate_every=6)
    with pytest.raises(Interrupted):
        meta_train_loop(config, DyingRuntime(tmp_path / "c", 3), loaded=tiny_model(CAUSAL))
    (tmp_path / "c" / "trajectory-rank0.json").unlink()  # as an older l2lzo wrote it
    with pytest.raises(L2LZOError, match="cannot resume worker 0 inside trajectory 0: its checkpoint has no log"):
        meta_train_loop(config, LocalRuntime(tmp_path / "c", show_progress=False), loaded=tiny_model(CAUSAL))


def test_task_pools_are_disjoint_by_dataset_and_large_enough():
    pools = {"meta-train": META_TRAIN_TASKS, "validation": VALIDATION_TASKS, "evaluation": EVALUATION_TASKS}
    assert len(META_TRAIN_TASKS) >= 30 and len(VALIDATION_TASKS) >= 4 and len(EVALUATION_TASKS) >= 8
    datasets = {}
    for pool, names in pools.items():
        assert all(name in BUILTIN_TASKS for name in names), pool
        assert len(set(names)) == len(names), pool
        datasets[pool] = {BUILTIN_TASKS[n].dataset for n in names}
        assert len({BUILTIN_TASKS[n].family for n in names}) >= 3, pool  # each pool spans several families
    for a, b in [("meta-train", "validation"), ("meta-train", "evaluation"), ("validation", "evaluation")]:
        assert not datasets[a] & datasets[b], (a, b, datasets[a] & datasets[b])
    assert shared_datasets(META_TRAIN_TASKS, VALIDATION_TASKS, EVALUATION_TASKS) == {}


def test_pools_sharing_a_dataset_are_refused_and_configs_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="disjoint"):
        MetaTrainConfig(train_tasks=["a", "b"], validation_tasks=["b"]).validate()
    with pytest.raises(ConfigError, match=r"must not share a dataset: ai2-arc \(arc_easy, arc_challenge\)"):
        MetaTrainConfig(train_tasks=["arc_easy", "copa"], validation_tasks=["arc_challenge"]).validate()
    with pytest.raises(ConfigError, match="inner steps must be >= 1"):
        MetaTrainConfig(inner_steps=0).validate()
    with pytest.raises(ConfigError, match="lr must be in"):
        MetaTrainConfig(lr_grid=[1e-3, 5.0]).validate()
    config = tiny_config(tmp_path)
    assert MetaTrainConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_heldout_gap_split_over_workers_matches_one_worker(tmp_path):
    """Each worker makes its share of the validation runs and the all-reduce completes the losses: the same gap
    as one worker making them all. Rank 1 runs first here; its reductions hand its partial sums to rank 0's."""
    tasks = write_tasks(tmp_path)
    config = tiny_config(tmp_path, validation_tasks=tasks[1:], validation_seeds=2)  # 4 runs
    scorer = Scorer(tiny_model(CAUSAL), max_length=32)
    policy = random_policy(1)

    def gap_of(*args):
        return HeldoutGap(config, scorer, Trajectory(discover_blocks(scorer.loaded.model)))(policy, *args)

    alone = gap_of()
    complete = [list(alone["mezo_loss"].values()), list(alone["policy_loss"].values())]  # in call order
    partials = []

    def rank1_reduce(tensors):  # rank 1's view: its share, completed by what rank 0 will make
        partials.append(tensors[0].clone())
        full = torch.tensor(complete[len(partials) - 1], dtype=tensors[0].dtype)
        mine = partials[-1] != 0
        assert torch.allclose(partials[-1][mine], full[mine])  # its runs are the ones one worker makes
        tensors[0].copy_(full / 2)

    def rank0_reduce(tensors):
        tensors[0].add_(partials.pop(0)).div_(2)

    gap_of(1, 2, rank1_reduce)
    assert len(partials) == 2 and all(int((p != 0).sum()) == 2 for p in partials)  # rank 1 made half the runs
    shared = gap_of(0, 2, rank0_reduce)
    assert shared["heldout_gap"] == pytest.approx(alone["heldout_gap"], rel=1e-6)
    assert shared["policy_loss"] == pytest.approx(alone["policy_loss"]) and len(alone["policy_loss"]) == 4


def test_meta_train_refuses_unprepared_pool_tasks_in_one_line(tmp_path, capsys):
    from l2lzo.cli import main

    assert main(["meta-train", "--output", str(tmp_path / "run"), "--no-push"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("l2lzo: error: meta-training needs 42 task(s) that are not prepared")
    assert all(name in error for name in (*META_TRAIN_TASKS, *VALIDATION_TASKS))
    assert not (tmp_path / "run").exists()  # refused before anything was written


class FakeRun:
    def __init__(self, dev_loss):
        self.evals = [{"dev_loss": dev_loss, "dev_accuracy": 0.5}]


def test_final_validation_gives_each_arm_its_own_lr_and_extends_the_grid_at_an_edge(tmp_path, monkeypatch):
    """Policy runs are best at lr 1e-4, sigma = 1's at 4e-4, past the grid's top: sigma = 1's grid grows to find
    it, the policy's (its best inside) does not."""
    import math

    from meta_train import validation

    def fake_finetune(config, progress):
        best = 1e-4 if config.policy else 4e-4
        task_offset = 0.1 if config.task.endswith("b") else 0.0
        return FakeRun(1.0 + task_offset + (math.log2(config.lr / best)) ** 2 * 0.01)

    monkeypatch.setattr(validation, "finetune", fake_finetune)
    config = MetaTrainConfig(validation_tasks=["task_a", "task_b"], lr_grid=[5e-5, 1e-4, 2e-4], final_steps=3)
    result = validation.final_validation(config, tmp_path / "p.safetensors", tmp_path, say=lambda _: None)
    assert result["recommended_lr"] == 1e-4 and result["recommended_lr_sigma1"] == 4e-4
    assert result["lr_grid"] == [5e-5, 1e-4, 2e-4] and result["grid_extended"] == {"low": 0, "high": 0}
    assert result["lr_grid_sigma1"] == [5e-5, 1e-4, 2e-4, 4e-4, 8e-4]
    assert result["arms"]["mezo"]["grid_extended"] == {"low": 0, "high": 2}
    assert result["dev_loss_policy"] == result["dev_loss_mezo"] == pytest.approx(1.05)  # each at its own best
    assert result["wins"] == 0 and result["wins_at_policy_lr"] == 2  # at the policy's lr sigma = 1 looked worse
    assert result["chosen_arm"] == "policy" and result["chosen_density"] is None
    assert len(result["runs"]) == 3 * 2 + 5 * 2


def test_final_validation_takes_a_short_grid_as_given(tmp_path, monkeypatch):
    from meta_train import validation

    monkeypatch.setattr(validation, "finetune", lambda config, progress: FakeRun(config.lr))
    config = MetaTrainConfig(validation_tasks=["t"], lr_grid=[1e-4, 2e-4], final_steps=3)
    result = validation.final_validation(config, tmp_path / "p.safetensors", tmp_path, say=lambda _: None)
    assert result["lr_grid"] == [1e-4, 2e-4] and result["recommended_lr"] == result["recommended_lr_sigma1"] == 1e-4
