"""Tasks: a data source, a prompt template, the options to score and an accuracy metric.

``load_task(name)`` accepts a built-in task (``polarity``, ``bbc_news``, ``bb_<BIG-bench task>``;
cached by ``prepare_data``), a local ``.jsonl``/``.csv`` file, or a MeZO task name served by the
Hugging Face hub (``sst2``, ``copa``, ``boolq``, ``rte``, ``cb``, ``wic``, ``wsc``, ``multirc``,
``winogrande``).
"""

from .api import list_tasks, load_task, prepare_data
from .base import Example, TaskInfo, TaskSplits

__all__ = ["Example", "TaskInfo", "TaskSplits", "list_tasks", "load_task", "prepare_data"]
