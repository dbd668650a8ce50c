"""The learned perturbation policy: a small network from block and step features to per-block sigma_b.

One network serves every block (weights shared; a role embedding tells q from down from lora_A), so it is
small (about 1.8k numbers at the defaults), applies to any depth and any number of layers, and transfers to
derivatives of the base model. Its forward ends in the two rules that make it safe to use:

* **bounded shape**: raw outputs, centred over the blocks, go through ``log_range * tanh(raw / log_range)``
  before ``exp``, so any two
  blocks' sigmas differ by at most ``max_ratio`` (default 4, i.e. 16x in sigma^2, which is the factor on a
  block's expected update lr * sigma_b^2 * grad_b): the policy cannot collapse onto a few blocks;
* **normalisation**: sum_b d_b sigma_b^2 = sum_b d_b (d_b = numel; a tied tensor is one block, so it counts
  once): the policy decides the *shape* of the perturbation and lr its size.

The last layer starts at zero, so an untrained policy is exactly sigma = 1 (MeZO).

``LearnedSigma`` runs a policy inside a fine-tune: the optimizer calls it once per step (see
``ZeroOrderOptimizer.set_sigma_hook``) and gets sigma keyed by block name.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from l2lzo.blocks import ROLES
from l2lzo.policy.features import BLOCK_FEATURES, FEATURE_SPEC, STEP_FEATURES, BlockFeatures, StepSignal, block_features


@dataclass(frozen=True)
class PolicyConfig:
    """Size and range of a policy network."""

    role_dim: int = 4
    hidden: int = 32
    layers: int = 2  # hidden layers
    max_ratio: float = 4.0  # largest sigma_b / sigma_b' the policy can express

    def __post_init__(self):
        if self.role_dim < 1 or self.hidden < 1 or self.layers < 1:
            raise ValueError(f"role_dim, hidden and layers must be >= 1, got {self}")
        if not self.max_ratio > 1:
            raise ValueError(f"max_ratio must be > 1, got {self.max_ratio}")


class PerturbationPolicy(nn.Module):
    """features -> sigma (see the module docstring). ``forward`` is differentiable, for meta-training."""

    def __init__(self, config: PolicyConfig | None = None):
        super().__init__()
        self.config = config or PolicyConfig()
        c = self.config
        self.role_embedding = nn.Embedding(len(ROLES), c.role_dim)
        width = c.role_dim + len(BLOCK_FEATURES) + len(STEP_FEATURES)
        layers: list[nn.Module] = []
        for _ in range(c.layers):
            layers += [nn.Linear(width, c.hidden), nn.Tanh()]
            width = c.hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        nn.init.normal_(self.role_embedding.weight, std=0.5)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # Half the log-ratio: s in [-r, r], so exp(s) spans a ratio of exp(2r) = max_ratio.
        self.log_range = math.log(c.max_ratio) / 2

    def log_shape(self, blocks: BlockFeatures, step: torch.Tensor) -> torch.Tensor:
        """Bounded log-sigma before normalisation, (n,)."""
        n = len(blocks.names)
        inputs = torch.cat([self.role_embedding(blocks.roles), blocks.values, step.expand(n, -1)], dim=1)
        raw = self.head(self.body(inputs)).squeeze(1)
        # Centred first: a shift common to all blocks is removed by the normalisation anyway, and left in it
        # would drift every block into the bound's flat tail, where sigma = 1 and the gradient vanishes.
        raw = raw - raw.mean()
        return self.log_range * torch.tanh(raw / self.log_range)

    def forward(self, blocks: BlockFeatures, step: torch.Tensor) -> torch.Tensor:
        """sigma (n,) float64 with sum_b d_b sigma_b^2 = sum_b d_b."""
        return normalised(torch.exp(self.log_shape(blocks, step).double()), blocks.numels)

    @property
    def numbers(self) -> int:
        """How many numbers the policy holds."""
        return sum(p.numel() for p in self.parameters())

    # ---- persistence (safetensors-ready, no pickle) -----------------------------------------------------

    def to_arrays(self) -> dict:
        """The weights as float32 numpy arrays, named like ``state_dict``."""
        return {k: v.detach().to(torch.float32).contiguous().numpy() for k, v in self.state_dict().items()}

    def spec(self) -> dict:
        """The feature spec and network config an artifact records (``from_arrays`` rebuilds from it)."""
        return {"kind": "learned", **FEATURE_SPEC, "network": asdict(self.config)}

    @classmethod
    def from_arrays(cls, arrays: Mapping, spec: Mapping) -> PerturbationPolicy:
        """Rebuild a policy from its arrays and ``spec()``; ``ValueError`` if they do not fit this version."""
        for key in ("roles", "schemes", "block_features", "step_features"):
            if list(spec.get(key, [])) != list(FEATURE_SPEC[key]):
                raise ValueError(f"the policy was trained with other {key.replace('_', ' ')} "
                                 f"({spec.get(key)}) than this l2lzo reads ({FEATURE_SPEC[key]})")
        try:
            policy = cls(PolicyConfig(**spec["network"]))
            state = {k: torch.from_numpy(v.copy()) if not isinstance(v, torch.Tensor) else v
                     for k, v in arrays.items()}
            policy.load_state_dict(state, strict=True)
        except (KeyError, TypeError, RuntimeError) as exc:
            raise ValueError(f"the policy's tensors do not match its spec: {exc}") from exc
        return policy.eval()


def normalised(sigma: torch.Tensor, numels: torch.Tensor) -> torch.Tensor:
    """``sigma`` rescaled so that sum_b d_b sigma_b^2 = sum_b d_b (d_b = ``numels``): a shape, not a size."""
    return sigma * torch.sqrt(numels.sum() / (numels * sigma.square()).sum())


class LearnedSigma:
    """A policy running inside one fine-tune: sigma for each step, keyed by block name.

    Block features are computed once per set of blocks; step features come from the optimizer's losses.
    A non-finite output falls back to sigma = 1 for that step, with one warning per run. With ``keep_graph``
    (meta-training) each step's sigma tensor is kept in ``graphs``, differentiable in the policy's weights.
    """

    def __init__(self, policy: PerturbationPolicy, scheme: str, total_steps: int, keep_graph: bool = False):
        self.policy = policy
        self.scheme = scheme
        self.signal = StepSignal(total_steps)
        self.keep_graph = keep_graph
        self.graphs: list[torch.Tensor] = []
        self._features: BlockFeatures | None = None
        self._warned = False
        self.last_sigma: dict[str, float] = {}
        self.seconds = 0.0  # time spent here: the policy's cost per step is this / steps

    def prepare(self, blocks) -> None:
        """Compute the block features now, from the blocks' current values (the first step does it otherwise).

        A run resumed by replaying its steps calls this before the replay: the features stay those of the
        weights the run started from.
        """
        self._features = block_features(blocks, self.scheme)

    def __call__(self, info) -> dict[str, float]:
        """sigma for this step; ``info`` is the optimizer's ``StepInfo``."""
        start = time.perf_counter()
        names = tuple(b.name for b in info.blocks)
        if self._features is None or self._features.names != names:
            self.prepare(info.blocks)
        if info.losses is not None:
            self.signal.update(*info.losses, eps=info.eps)
        with torch.set_grad_enabled(self.keep_graph):
            sigma = self.policy(self._features, self.signal.features(info.step))
        if not torch.isfinite(sigma).all():
            if not self._warned:
                warnings.warn(f"the learned policy gave a non-finite sigma at step {info.step}: using sigma = 1 "
                              "for that step (warned once per run)", RuntimeWarning, stacklevel=2)
                self._warned = True
            sigma = torch.ones_like(sigma.detach())
        if self.keep_graph:
            self.graphs.append(sigma)
        self.last_sigma = dict(zip(names, sigma.detach().tolist(), strict=True))
        self.seconds += time.perf_counter() - start
        return self.last_sigma


def spec_json(policy: PerturbationPolicy) -> str:
    """``policy.spec()`` as the artifact's ``feature_spec`` string."""
    return json.dumps(policy.spec(), sort_keys=True)
