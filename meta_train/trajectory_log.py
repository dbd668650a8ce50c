"""A trajectory as the ZO steps it took: what a checkpoint keeps instead of a copy of the model.

Along a trajectory theta = pretrained + sum_t -lr * sum_j c_tj * sigma_t (.) z(seed_tj), so each step is its
directions (seed, c) and the sigma it used: a few numbers per block and step. A worker records them after every
episode; a worker resumed in the middle of a trajectory resets theta to the pretrained weights and replays them
through the optimizer's own update (``ZeroOrderOptimizer.replay``: noise sweeps, no forward), which puts theta
back bitwise where the trajectory was. The optimizer's last (L+, L-) and the policy's smoothed step features are
kept too, and the policy's block features are computed from the starting weights: the next sigma depends on
them.

Every worker walks its own trajectory, so each keeps its own log (``trajectory-rank{R}.json`` in the checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from l2lzo.errors import L2LZOError
from l2lzo.optim import ZeroOrderOptimizer
from l2lzo.perturbation import Direction
from l2lzo.policy.network import LearnedSigma
from meta_train.objective import InnerStep


@dataclass
class TrajectoryLog:
    """One worker's steps since its trajectory's reset."""

    rank: int = 0
    trajectory: int | None = None  # the trajectory index the steps belong to
    steps: list[dict] = field(default_factory=list)  # {"sigma": [per block], "directions": [[seed, c, scope]]}
    last_losses: list[float] | None = None  # the optimizer's (L+, L-) of the last query
    signal: dict | None = None  # the policy's StepSignal state

    @property
    def filename(self) -> str:
        return f"trajectory-rank{self.rank}.json"

    def start(self, trajectory: int | None) -> None:
        """A new trajectory from the pretrained weights (None: no trajectory yet): nothing to replay."""
        self.trajectory, self.steps, self.last_losses, self.signal = trajectory, [], None, None

    def record(self, steps: list[InnerStep], optimizer: ZeroOrderOptimizer, sigma: LearnedSigma) -> None:
        """Append an episode's ZO steps (``LookAhead.steps``) and the optimizer's and policy's state after them."""
        for step in steps:
            self.steps.append({"sigma": step.sigma.tolist(), "directions": [
                [d.seed, d.coeff, None if d.scope is None else sorted(d.scope)] for d in step.directions]})
        self.last_losses = None if optimizer.last_losses is None else list(optimizer.last_losses)
        self.signal = sigma.signal.state_dict()

    def replay(self, trajectory: int, optimizer: ZeroOrderOptimizer, sigma: LearnedSigma) -> None:
        """Move a fresh optimizer (at the pretrained theta, step 0) and its policy hook ``sigma`` to where
        trajectory ``trajectory`` was."""
        if self.trajectory != trajectory:
            found = "no log" if self.trajectory is None else f"the log of trajectory {self.trajectory}"
            raise L2LZOError(f"cannot resume worker {self.rank} inside trajectory {trajectory}: its checkpoint has "
                             f"{found} (written by an older l2lzo, or with another number of workers)")
        if optimizer.steps != 0:
            raise ValueError("replay needs a fresh optimizer (step 0) at the trajectory's start")
        sigma.prepare(optimizer.blocks)  # block features of the starting weights, as in the unbroken run
        for step in self.steps:
            optimizer.replay([Direction(seed, coeff, None if scope is None else frozenset(scope))
                              for seed, coeff, scope in step["directions"]], step["sigma"])
        optimizer.last_losses = None if self.last_losses is None else tuple(self.last_losses)
        if self.signal is not None:
            sigma.signal.load_state_dict(self.signal)

    def save(self, folder: Path) -> None:
        """Write the log into checkpoint ``folder`` (JSON keeps every float exactly: repr round-trips)."""
        (Path(folder) / self.filename).write_text(json.dumps({
            "trajectory": self.trajectory, "steps": self.steps, "last_losses": self.last_losses,
            "signal": self.signal}))

    def load(self, folder: Path) -> None:
        """Read this rank's log from checkpoint ``folder``; an absent file leaves an empty log."""
        path = Path(folder) / self.filename
        if not path.exists():
            self.start(None)
            return
        saved = json.loads(path.read_text())
        self.trajectory, self.steps = saved["trajectory"], saved["steps"]
        self.last_losses, self.signal = saved["last_losses"], saved["signal"]
