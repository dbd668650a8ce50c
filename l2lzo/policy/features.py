"""What the learned perturbation policy reads: per-block features and per-step features, all O(1).

Per block (fixed for a run, computed once when the policy meets a set of blocks):

=================  ==========================================================================================
``role``           index into ``l2lzo.blocks.ROLES`` (the policy embeds it: weights shared across blocks)
``depth``          relative depth in [0, 1]
``log_numel``      log10(numel) / 8 (a 28M-entry vocabulary matrix: 0.93; a 576-entry norm: 0.35)
``log_row``        log10(row length) / 4 (the fan-in of a projection; a 1-D block's length)
``scheme``         one-hot over ``l2lzo.schemes.SCHEMES`` (the same base model tuned full, LoRA, ...)
``log_rms``        log10(rms(theta_b) + 1e-8) / 4, clipped to [-2, 1] (a zero LoRA B matrix sits at -2)
``mean_over_rms``  mean(theta_b) / rms(theta_b), in [-1, 1] (1 for a norm's gains, ~0 for a projection)
=================  ==========================================================================================

Per step (the same for every block, so the policy can reshape sigma as training goes):

=================  ==========================================================================================
``progress``       step / total steps, in [0, 1]
``log_loss``       tanh(log L), L the mean of the last step's L+ and L- (smoothed, see ``StepSignal``)
``log_signal``     log10(|L+ - L-| / (2 eps L) + 1e-6) / 4, clipped to [-1.5, 1.5]: the size of the
                   projected gradient relative to the loss (smoothed)
=================  ==========================================================================================

Left out, on purpose: the drift |theta_b - theta_b(0)| / |theta_b(0)| needs a copy of theta_b(0) (double
memory for full fine-tuning, which ZO exists to avoid). It is not small: on minilm-l6 (full, polarity, 400
ZO-SGD steps at lr 5e-5) the median block drifted 18% (p90 46%), mostly ZO's random walk, a function of lr,
progress and the block's rms, which the features carry. The previous sigma_b is a function of the previous
step's features, so it adds a feedback loop without information. theta_b's mean and rms are read once: in the
same run a block's rms moved by a median 1.5% (p90 10%; its feature by < 0.011) and mean / rms by a median
0.001; the exception is a tensor that starts near zero (a key bias, which softmax ignores, grew 20x).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from l2lzo.blocks import ROLES, Block
from l2lzo.schemes import SCHEMES

BLOCK_FEATURES = ("depth", "log_numel", "log_row", *(f"scheme_{s}" for s in SCHEMES), "log_rms", "mean_over_rms")
STEP_FEATURES = ("progress", "log_loss", "log_signal")
FEATURE_SPEC = {
    "version": 1,
    "roles": list(ROLES),
    "schemes": list(SCHEMES),
    "block_features": list(BLOCK_FEATURES),
    "step_features": list(STEP_FEATURES),
}


@dataclass(frozen=True)
class BlockFeatures:
    """The per-block inputs of a policy for one ordered set of blocks."""

    names: tuple[str, ...]
    roles: torch.Tensor  # (n,) long, indices into ROLES
    values: torch.Tensor  # (n, len(BLOCK_FEATURES)) float32
    numels: torch.Tensor  # (n,) float64, the weights of the normalisation sum_b d_b sigma_b^2 = sum_b d_b


@torch.no_grad()
def block_features(blocks: Sequence[Block], scheme: str) -> BlockFeatures:
    """Features of ``blocks`` (their current values give the rms and mean) under fine-tuning ``scheme``."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")
    rows = []
    for block in blocks:
        theta = block.param.detach()
        rms = float(theta.float().square().mean().sqrt())
        mean = float(theta.float().mean())
        row = math.prod(block.shape[1:]) if len(block.shape) >= 2 else block.numel
        rows.append([
            block.depth,
            math.log10(block.numel) / 8,
            math.log10(max(row, 1)) / 4,
            *(float(scheme == s) for s in SCHEMES),
            min(max(math.log10(rms + 1e-8) / 4, -2.0), 1.0),
            mean / rms if rms > 0 else 0.0,
        ])
    return BlockFeatures(
        names=tuple(b.name for b in blocks),
        roles=torch.tensor([ROLES.index(b.role) for b in blocks], dtype=torch.long),
        values=torch.tensor(rows, dtype=torch.float32),
        numels=torch.tensor([b.numel for b in blocks], dtype=torch.float64),
    )


class StepSignal:
    """The per-step features, from the losses the optimizer saw, smoothed over steps (SPSA pairs are noisy).

    ``update(L+, L-, eps)`` after each step; ``features(step)`` before the next one.
    """

    def __init__(self, total_steps: int, smoothing: float = 0.9):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = total_steps
        self.smoothing = smoothing
        self.log_loss: float | None = None
        self.log_signal: float | None = None

    def update(self, loss_plus: float, loss_minus: float, eps: float) -> None:
        loss = max((loss_plus + loss_minus) / 2, 1e-6)
        log_loss = math.log(loss)
        log_signal = math.log10(abs(loss_plus - loss_minus) / (2 * eps * loss) + 1e-6)
        if self.log_loss is None:
            self.log_loss, self.log_signal = log_loss, log_signal
        else:
            keep = self.smoothing
            self.log_loss = keep * self.log_loss + (1 - keep) * log_loss
            self.log_signal = keep * self.log_signal + (1 - keep) * log_signal

    def state_dict(self) -> dict:
        """The smoothed loss features so far (what a resumed run needs to see the same next features)."""
        return {"log_loss": self.log_loss, "log_signal": self.log_signal}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``'s output."""
        self.log_loss, self.log_signal = state["log_loss"], state["log_signal"]

    def features(self, step: int) -> torch.Tensor:
        """(len(STEP_FEATURES),) float32; before any loss is seen, the loss features are 0."""
        progress = min(step / self.total_steps, 1.0)
        if self.log_loss is None:
            return torch.tensor([progress, 0.0, 0.0])
        signal = min(max(self.log_signal / 4, -1.5), 1.5)
        return torch.tensor([progress, math.tanh(self.log_loss), signal], dtype=torch.float32)
