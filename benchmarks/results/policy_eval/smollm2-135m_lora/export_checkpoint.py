"""How ``policy.safetensors`` here was made: the policy weights of a meta-training checkpoint, as an artifact.

The smollm2-135m LoRA run (``l2lzo meta-train --model smollm2-135m --scheme lora --workers 2 --inner-steps 4
--meta-steps 12 --validate-every 6 --validation-steps 30 --validation-seeds 1 --final-steps 30 --lr-grid 1e-3,2e-3
--checkpoint-every 3``) was stopped after its meta-step-6 checkpoint to leave the session time for the evaluation.
Its held-out gap there was +0.0142 (worse than sigma = 1), so meta-validation would ship sigma = 1; this file
holds the meta-step-6 weights anyway, so that the evaluation measures what the meta-trainer learned. A rerun makes
the same file but for its `created_at` stamp (so a new sha256: the evaluation runs here name the original's).

    .venv/bin/python benchmarks/results/policy_eval/smollm2-135m_lora/export_checkpoint.py CHECKPOINT_DIR
"""

import json
import sys
from pathlib import Path

import torch

from l2lzo.files import atomic_write_bytes
from l2lzo.models import fingerprint, load_model
from l2lzo.policy.network import PerturbationPolicy
from meta_train.artifact import build_policy_artifact
from meta_train.checkpoint import TrainingState, load_checkpoint
from meta_train.config import MetaTrainConfig

HERE = Path(__file__).parent

config = MetaTrainConfig(model="smollm2-135m", scheme="lora", workers=2, inner_steps=4, meta_steps=12,
                         validate_every=6, validation_steps=30, validation_seeds=1, final_steps=30,
                         lr_grid=[1e-3, 2e-3], checkpoint_every=3)
policy = PerturbationPolicy(config.policy)
state = TrainingState(policy, torch.optim.Adam(policy.parameters(), lr=config.meta_lr))
load_checkpoint(state, Path(sys.argv[1]))
last = state.history[-1]
metrics = {"note": f"meta-step {state.meta_step} of a 12-step run stopped there (session time); NOT selected by "
                   f"meta-validation: held-out gap {last['heldout_gap']:+.4f} (worse than sigma = 1), so the run "
                   "would ship sigma = 1. Evaluated anyway.",
           "meta_steps": state.meta_step, "heldout_gap_curve": [last["heldout_gap"]]}
data = build_policy_artifact(policy, config, fingerprint=fingerprint(load_model(config.model).model),
                             recommended_lr=2e-3, metrics=metrics, history_tail=state.history[-5:])
atomic_write_bytes(HERE / "policy.safetensors", data)
(HERE / "meta_train_history.json").write_text(json.dumps(state.history, indent=1) + "\n")
print(f"{len(data)} bytes, {policy.numbers} numbers, meta-step {state.meta_step}")
