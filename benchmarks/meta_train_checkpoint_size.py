"""Meta-train checkpoint size on smollm2-135m (full): the replay log against the rest and against a model copy.

A faithful resume needs theta where the trajectory was. The checkpoint keeps each worker's ZO steps since the
trajectory's reset (``meta_train.trajectory_log``) instead of a copy of the model; this runs the main job's
episode settings (K = 8, 10 episodes a trajectory) for 9 meta-steps, the longest log before a reset, and records
every checkpoint's file sizes.

Run: python benchmarks/meta_train_checkpoint_size.py benchmarks/results/meta_train_checkpoint/smollm2-135m_full.json
(needs smollm2-135m and the first meta-train and validation tasks prepared; 11.5 minutes on 2 busy cores)
"""

import json
import sys
import tempfile
import time
from pathlib import Path

from l2lzo.models import load_model
from meta_train.config import META_TRAIN_TASKS, VALIDATION_TASKS, MetaTrainConfig
from meta_train.loop import LocalRuntime, meta_train_loop


class MeasuringRuntime(LocalRuntime):
    """Records the size of every file of each checkpoint it writes."""

    def __init__(self, folder: Path):
        super().__init__(folder, show_progress=False)
        self.sizes: list[dict] = []

    def report(self, metrics, state):
        super().report(metrics, state)
        self.sizes.append({"meta_step": state.meta_step, **{p.name: p.stat().st_size for p in self.folder.iterdir()}})
        print(self.sizes[-1], flush=True)


def main(output: str) -> None:
    config = MetaTrainConfig(model="smollm2-135m", scheme="full", train_tasks=[META_TRAIN_TASKS[0]],
                             validation_tasks=[VALIDATION_TASKS[0]], meta_steps=9, inner_steps=8, reset_every=10,
                             batch_size=2, heldout_batch_size=2, train_size=32, max_length=32, validate_every=100,
                             validation_steps=1, validation_seeds=1, checkpoint_every=1)
    loaded = load_model(config.model)
    params = sum(p.numel() for p in loaded.model.parameters() if p.requires_grad)
    runtime = MeasuringRuntime(Path(tempfile.mkdtemp()) / "checkpoint")
    start = time.time()
    meta_train_loop(config, runtime, loaded=loaded)
    Path(output).write_text(json.dumps({
        "model": config.model, "scheme": config.scheme, "trainable_parameters": params,
        "model_copy_bytes_fp32": params * 4, "inner_steps": config.inner_steps, "reset_every": config.reset_every,
        "checkpoints": runtime.sizes, "seconds": time.time() - start}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
