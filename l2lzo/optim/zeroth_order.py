"""The ZO-Bench zeroth-order optimizer family on the seeded perturbation engine.

All of them share one step: for each of ``n_queries`` seeded directions z (scaled per block by sigma),
evaluate the closure at theta + eps*sigma*z and theta - eps*sigma*z and form the SPSA projected
gradient g = (L+ - L-) / (2 eps). The estimate sum_q g_q sigma z_q / q is never stored whole: the
variants below consume it seed by seed (ZO-SGD) or chunk by chunk (sign, momentum, Adam).

Two options shape the estimate for every variant:

* ``group_level`` (block-wise ZO, ZO-Bench): one SPSA estimate per block group (per layer, per
  attention/MLP part, or per tensor; see ``l2lzo.blocks.group_key``), each group perturbed alone with its
  own seed and updated by its own g. A step then costs 2 * n_queries * groups forwards.
* ``sparsity`` (ZO-Bench gradient sparsity, Sparse-MeZO): z is masked (``l2lzo.sparsity``); a sensitivity
  mask file (SensZOQ) runs on ``l2lzo.indexed_perturbation``, at a cost proportional to its coordinates.

Per-block scales sigma_b (the learned policy's output) enter through one seam, ``set_sigma_hook``: the hook is
called once at the start of every step and its sigma, keyed by block name, serves L+, L- and the update.

State follows torch.optim: hyperparameters (momentum and betas too) are keys of the single param group,
buffers are per-parameter ``state``, and ``state_dict()`` adds a ``"zo"`` entry with what the next step also
depends on (the step count, which picks the seeds; the last (L+, L-) pair; sigma; a resampled mask), so an
optimizer restored mid-run continues bitwise like the unbroken run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from l2lzo.blocks import Block, discover_blocks, group_blocks, rows_view
from l2lzo.errors import ConfigError
from l2lzo.indexed_perturbation import IndexedPerturbationEngine
from l2lzo.optim.hyperparameters import check_eps, check_lr, check_n_queries
from l2lzo.perturbation import Direction, PerturbationEngine, chunk_seed
from l2lzo.sparsity import SENSITIVE, SparseMask, SparsityConfig

Closure = Callable[[], torch.Tensor | float]


@dataclass(frozen=True)
class StepInfo:
    """What a sigma hook sees at the start of a step."""

    blocks: tuple[Block, ...]  # the blocks this optimizer perturbs (a hybrid's ZO share only)
    step: int
    losses: tuple[float, float] | None  # (L+, L-) of the previous step's last query; None before the first
    eps: float


SigmaHook = Callable[[StepInfo], Mapping[str, float]]


class ZeroOrderOptimizer(torch.optim.Optimizer):
    """Base class: SPSA estimate with n queries and per-block sigma; subclasses apply it.

    Use it like ``torch.optim``: ``loss = opt.step(closure)`` where ``closure()`` returns the loss of the
    current batch; ``state_dict()`` / ``load_state_dict()`` save and restore everything a step depends on.
    The closure is called 2 * n_queries times per step under ``torch.no_grad()``, each
    time with the model perturbed (theta itself is never modified by a perturbation).

    Args:
        model: the model whose trainable parameters (``requires_grad``) are optimized.
        lr: learning rate.
        eps: perturbation scale (SPSA's mu).
        n_queries: number of seeded directions averaged per step.
        seed: base seed; step t, query q uses a seed derived from (seed, t, q).
        weight_decay: decoupled weight decay, applied as theta *= 1 - lr * weight_decay.
        blocks: the blocks to optimize (default: every trainable tensor of ``model``); hybrid ZO/FO passes
            the ZO share.
        group_level: block-wise ZO at this level (``layer``, ``attn-mlp``, ``tensor``); None: one estimate.
        sparsity: mask z (see ``l2lzo.sparsity``); None: dense.
        noise: where z comes from (``l2lzo.noise``): ``pool`` (fast, the default) or ``gaussian`` (fresh
            ``normal_`` draws, MeZO's noise exactly); the pool is seeded by ``seed``.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-6, eps: float = 1e-3, n_queries: int = 1,
                 seed: int = 0, weight_decay: float = 0.0, blocks: list[Block] | None = None,
                 group_level: str | None = None, sparsity: SparsityConfig | None = None, noise: str = "pool"):
        check_lr(lr)
        check_eps(eps)
        check_n_queries(n_queries)
        # Re-indexed 0..n-1: a block's index is its position in sigma and part of its noise seed.
        blocks = discover_blocks(model) if blocks is None else blocks
        self.blocks: list[Block] = [replace(b, index=i) for i, b in enumerate(blocks)]
        self.engine = _engine(self.blocks, sparsity, noise, seed)
        # Scopes hold positions in self.blocks, which is what the engine indexes by.
        self.groups: list[frozenset[int] | None] = [None] if group_level is None else [
            frozenset(b.index for b in group) for group in group_blocks(self.engine.blocks, group_level).values()]
        # A sensitive mask lives in its engine; random and magnitude masks are redrawn, on a dense engine.
        dynamic = sparsity is not None and sparsity.active and sparsity.mode != SENSITIVE
        self.mask = SparseMask(self.engine, sparsity, seed) if dynamic else None
        self.engine.set_mask(self.mask)
        super().__init__([b.param for b in self.blocks],
                         dict(lr=lr, eps=eps, n_queries=n_queries, weight_decay=weight_decay))
        self.seed = seed
        self.steps = 0
        self.last_losses: tuple[float, float] | None = None  # (L+, L-) of the last query: policy features
        self.last_directions: list[Direction] = []  # the last step's estimate (seeds and g / n_queries)
        self.sigma_hook: SigmaHook | None = None

    # Whether a sigma hook's per-block scales mean what the learned policy assumes: an expected update of
    # lr * sigma_b^2 * grad_b. Sign and Adam variants override this.
    sigma_meaning: str | None = None

    @property
    def hparams(self) -> dict:
        """The hyperparameters: the one param group (what an lr scheduler edits)."""
        return self.param_groups[0]

    def add_param_group(self, param_group: dict) -> None:
        # The engine's blocks, and so the noise seeds, are fixed when the optimizer is built: one group only.
        if self.param_groups:
            raise ValueError("a zeroth-order optimizer has one param group: its blocks are fixed when it is built")
        super().add_param_group(param_group)

    def _add_hyperparameters(self, **values) -> None:
        """A variant's own hyperparameters, as keys of the param group (and defaults) like torch.optim's."""
        self.defaults.update(values)
        self.hparams.update(values)

    def state_dict(self) -> dict:
        """torch.optim's state dict plus ``"zo"``: steps, seed, last (L+, L-), sigma and a resampled mask."""
        state = super().state_dict()
        state["zo"] = {"steps": self.steps, "seed": self.seed, "last_losses": self.last_losses,
                       "sigma": self.engine.sigma.clone(),
                       "mask": None if self.mask is None else self.mask.state_dict()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore ``state_dict()``'s output; ``ValueError`` if it is not a ZO optimizer's or its seed differs."""
        state_dict = dict(state_dict)
        zo = state_dict.pop("zo", None)
        if zo is None:
            raise ValueError("not a zeroth-order optimizer's state dict: it has no 'zo' entry")
        if zo["seed"] != self.seed:
            raise ValueError(f"the state comes from an optimizer with seed {zo['seed']}, this one has seed "
                             f"{self.seed}: its noise would differ")
        if (zo["mask"] is None) != (self.mask is None):
            raise ValueError("the state and this optimizer disagree on whether z is masked")
        super().load_state_dict(state_dict)
        self.steps = zo["steps"]
        self.last_losses = None if zo["last_losses"] is None else tuple(zo["last_losses"])
        self.engine.set_sigma(zo["sigma"])
        if self.mask is not None:
            self.mask.load_state_dict(zo["mask"])

    def set_sigma(self, sigma: torch.Tensor | Mapping[str, float]) -> None:
        """Per-block perturbation scales: by block name, or one per block in ``self.blocks``; 1 is MeZO."""
        if isinstance(sigma, Mapping):
            missing = [b.name for b in self.blocks if b.name not in sigma]
            if missing:
                raise ValueError(f"sigma has no entry for {len(missing)} blocks, e.g. {missing[0]!r}")
            sigma = [sigma[b.name] for b in self.blocks]
        self.engine.set_sigma(sigma)

    def set_sigma_hook(self, hook: SigmaHook | None) -> None:
        """Call ``hook(StepInfo)`` at the start of every step and perturb with the sigma it returns.

        ``ConfigError`` for the variants where sigma's size does not scale the update (see ``sigma_meaning``).
        """
        if hook is not None and self.sigma_meaning is not None:
            raise ConfigError(f"a learned sigma policy needs an update that scales with sigma_b^2; "
                              f"{self.sigma_meaning}: use zo-sgd, zo-sgd-mmt, zo-sgd-cons or forward-grad")
        self.sigma_hook = hook

    def query_seeds(self) -> list[int]:
        """The seeds of this step's directions (deterministic in seed and step): queries x groups."""
        return [chunk_seed(self.seed, self.steps, q) for q in range(self.hparams["n_queries"] * len(self.groups))]

    def estimate(self, closure: Closure) -> tuple[list[Direction], float]:
        """Projected gradients for this step: directions with coeff g_q / n_queries, and the mean loss."""
        eps = self.hparams["eps"]
        seeds = self.query_seeds()
        directions, losses = [], []
        for i, seed in enumerate(seeds):
            probe = Direction(seed, eps, self.groups[i % len(self.groups)])
            with self.engine.perturbed([probe]):
                loss_plus = float(closure())
            with self.engine.perturbed([probe.scaled(-1)]):
                loss_minus = float(closure())
            if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
                raise FloatingPointError(f"non-finite loss at step {self.steps}: L+={loss_plus}, L-={loss_minus}")
            g = (loss_plus - loss_minus) / (2 * eps)
            directions.append(Direction(seed, g / self.hparams["n_queries"], probe.scope))
            losses += [loss_plus, loss_minus]
            self.last_losses = (loss_plus, loss_minus)
        return directions, sum(losses) / len(losses)

    @torch.no_grad()
    def step(self, closure: Closure) -> float:  # type: ignore[override]
        """One optimization step; returns the mean of the perturbed losses."""
        if self.mask is not None:
            self.mask.maybe_resample(self.steps)
        if self.sigma_hook is not None:
            self.set_sigma(self.sigma_hook(StepInfo(tuple(self.blocks), self.steps, self.last_losses,
                                                    self.hparams["eps"])))
        directions, loss = self.estimate(closure)
        self._move(directions, closure)
        return loss

    @torch.no_grad()
    def replay(self, directions: list[Direction], sigma: torch.Tensor | list[float]) -> None:
        """Take a step that was already estimated (its directions and sigma, e.g. from a log), with no forward.

        theta, buffers and the step count move exactly as the original step moved them (bitwise, from the same
        start): ZO's seed trick, a run is its seeds, coefficients and sigmas. The previous step's (L+, L-) are
        not in a direction; restore ``last_losses`` if a sigma hook reads them.
        """
        if self.mask is not None:
            self.mask.maybe_resample(self.steps)
        self.set_sigma(sigma)
        self._move(directions, closure=None)

    def _move(self, directions: list[Direction], closure: Closure | None) -> None:
        """The update from an estimate: weight decay, the variant's rule, the step count."""
        self.last_directions = directions
        wd = self.hparams["weight_decay"]
        if wd:
            for block in self.blocks:
                block.param.mul_(1 - self.hparams["lr"] * wd)
        self.apply(directions, closure)
        self.steps += 1

    def apply(self, directions: list[Direction], closure: Closure | None) -> None:
        """Update theta from the estimate; overridden per variant (``closure`` is None in a replay)."""
        raise NotImplementedError

    def _apply_chunkwise(self, update: Callable[[Block, slice, torch.Tensor], torch.Tensor],
                         directions: list[Direction]) -> None:
        """theta[rows] -= lr * update(block, rows, gradient chunk), over every chunk of the estimate."""
        lr = self.hparams["lr"]
        for block, rows, grad in self.engine.gradient_chunks(directions):
            rows_view(block.param.data, rows).add_(update(block, rows, grad), alpha=-lr)

    def _buffer(self, block: Block, name: str) -> torch.Tensor:
        state = self.state[block.param]
        if name not in state:
            state[name] = torch.zeros_like(block.param, memory_format=torch.preserve_format)
        return state[name]


def _engine(blocks: list[Block], sparsity: SparsityConfig | None, noise: str, seed: int) -> PerturbationEngine:
    """The dense engine, or for a sensitivity mask the engine that perturbs only its coordinates."""
    if sparsity is None or sparsity.mode != SENSITIVE:
        return PerturbationEngine(blocks, noise=noise, noise_seed=seed)
    mask = sparsity.mask
    mask.check_blocks({b.name: b.numel for b in blocks})
    return IndexedPerturbationEngine(blocks, mask.indices, noise=noise, noise_seed=seed)


class ZOSGD(ZeroOrderOptimizer):
    """ZO-SGD (MeZO): theta -= lr * g * sigma * z, regenerated from the seed (no optimizer state)."""

    def apply(self, directions: list[Direction], closure: Closure | None) -> None:
        lr = self.hparams["lr"]
        self.engine.add_([d.scaled(-lr) for d in directions])


class ZOSGDSign(ZeroOrderOptimizer):
    """ZO-SGD-Sign: theta -= lr * sign(estimate)."""

    sigma_meaning = "zo-sgd-sign's update sign(g * sigma_b * z) ignores sigma's size"

    def apply(self, directions: list[Direction], closure: Closure | None) -> None:
        self._apply_chunkwise(lambda block, rows, grad: grad.sign_(), directions)


class ZOSGDMomentum(ZeroOrderOptimizer):
    """ZO-SGD-MMT: heavy-ball momentum m = beta*m + estimate; theta -= lr * m (keeps one buffer)."""

    def __init__(self, model: nn.Module, momentum: float = 0.9, **kwargs):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(model, **kwargs)
        self._add_hyperparameters(momentum=momentum)

    def apply(self, directions: list[Direction], closure: Closure | None) -> None:
        beta = self.hparams["momentum"]

        def update(block: Block, rows: slice, grad: torch.Tensor) -> torch.Tensor:
            m = rows_view(self._buffer(block, "momentum"), rows)
            return m.mul_(beta).add_(grad)

        self._apply_chunkwise(update, directions)


class ZOAdam(ZeroOrderOptimizer):
    """ZO-Adam: Adam's moments on the ZO estimate (two buffers, bias-corrected)."""

    sigma_meaning = "zo-adam divides each coordinate by its own running scale, which cancels sigma's size"

    def __init__(self, model: nn.Module, betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8,
                 **kwargs):
        super().__init__(model, **kwargs)
        self._add_hyperparameters(betas=tuple(betas), adam_eps=adam_eps)

    def apply(self, directions: list[Direction], closure: Closure | None) -> None:
        (b1, b2), adam_eps = self.hparams["betas"], self.hparams["adam_eps"]
        t = self.steps + 1
        c1, c2 = 1 - b1**t, 1 - b2**t

        def update(block: Block, rows: slice, grad: torch.Tensor) -> torch.Tensor:
            m = rows_view(self._buffer(block, "exp_avg"), rows)
            v = rows_view(self._buffer(block, "exp_avg_sq"), rows)
            m.mul_(b1).add_(grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            return (m / c1).div_((v / c2).sqrt_().add_(adam_eps))

        self._apply_chunkwise(update, directions)


class ZOSGDConservative(ZeroOrderOptimizer):
    """ZO-SGD-Cons: evaluate theta, theta - lr*g*z and theta + lr*g*z; keep the best of the three.

    The two candidates are evaluated as perturbed forwards (exact: theta is untouched until the
    winner is known); a step costs 2 * n_queries + 3 forwards.
    """

    def apply(self, directions: list[Direction], closure: Closure | None) -> None:
        if closure is None:
            raise ValueError("zo-sgd-cons cannot replay a step: which candidate won depends on forwards")
        lr = self.hparams["lr"]
        descent = [d.scaled(-lr) for d in directions]
        ascent = [d.scaled(lr) for d in directions]
        candidates = {"stay": float(closure())}
        with self.engine.perturbed(descent):
            candidates["descent"] = float(closure())
        with self.engine.perturbed(ascent):
            candidates["ascent"] = float(closure())
        best = min(candidates, key=candidates.get)
        if best != "stay":
            self.engine.add_(descent if best == "descent" else ascent)
