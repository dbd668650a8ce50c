"""A run's optimizer plan: lr, eps and steps by one rule (flag, else the policy's recommendation, else default)."""

from __future__ import annotations

from dataclasses import dataclass

from l2lzo.policy.artifact import MEZO_SIGMA, PolicyArtifact


@dataclass(frozen=True)
class OptimizerPlan:
    """The optimizer a run resolved, its lr / eps / steps and where each came from, and the policy it runs."""

    optimizer: str
    lr: float
    eps: float
    steps: int
    policy: PolicyArtifact | None
    sources: dict[str, str]  # hyperparameter -> "flag" | "policy" | "default"

    @property
    def perturbation(self) -> str:
        if self.policy is not None and self.policy.is_learned:
            return f"learned policy {self.policy.label()}"
        return MEZO_SIGMA

    def describe(self) -> str:
        """One line: the values, where each came from, the policy and the perturbation."""
        where = ", ".join(f"{k} from {v}" for k, v in self.sources.items())
        origin = f"policy {self.policy.label()}" if self.policy else "no policy"
        return (f"{self.optimizer}: lr={self.lr} eps={self.eps} steps={self.steps} ({where}); {origin}; "
                f"perturbation {self.perturbation}")

    def summary(self) -> dict:
        """What a results file records about the plan."""
        return {"optimizer": self.optimizer, "lr": self.lr, "eps": self.eps, "steps": self.steps,
                "sources": dict(self.sources), "perturbation": self.perturbation,
                "policy": self.policy.summary() if self.policy else None}


def resolve_plan(optimizer: str, *, lr: float | None, eps: float | None, steps: int | None,
                 policy: PolicyArtifact | None, default_lr: float, default_eps: float,
                 default_steps: int) -> OptimizerPlan:
    """The one rule for lr, eps and steps, each on its own: the explicit flag (not None) wins, then the policy's
    recommendation, then the default. ``FinetuneConfig.plan`` supplies the defaults for finetune and
    finetune-batch alike."""
    recommended = policy.recommended() if policy else {}
    values, sources = {}, {}
    for name, flag, default in (("lr", lr, default_lr), ("eps", eps, default_eps), ("steps", steps, default_steps)):
        if flag is not None:
            values[name], sources[name] = flag, "flag"
        elif name in recommended:
            values[name], sources[name] = recommended[name], "policy"
        else:
            values[name], sources[name] = default, "default"
    return OptimizerPlan(optimizer=optimizer, lr=values["lr"], eps=values["eps"], steps=int(values["steps"]),
                         policy=policy, sources=sources)
