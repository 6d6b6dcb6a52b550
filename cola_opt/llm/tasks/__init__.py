"""Tasks: data sources, prompt templates, verbalizers and MeZO-protocol sampling.

- :mod:`.readers`: the release file formats (jsonl, GLUE TSV, MultiRC's nested records);
- :mod:`.definitions`: the seven tasks (:class:`Task`): templates, verbalizers, labels;
- :mod:`.sampling`: where the records come from (:func:`resolve_data_dir`,
  :func:`read_split`) and the per-seed draw of train, dev and test (:func:`sample_splits`);
- :mod:`.metrics`: official metrics beside accuracy (MultiRC's F1a and exact match);
- :mod:`.files` and :mod:`.user`: users' own data (JSONL, CSV, parquet, a folder of text
  files, ``hf:<dataset>``) as the tasks ``text``, ``completion`` and ``classification``.
"""

from .definitions import TASKS, Example, Task, find_task, get_task
from .metrics import task_metrics
from .sampling import Splits, read_split, resolve_data_dir, sample_splits
from .user import USER_TASKS, Completion, Document, UserData, dev_cap, is_user_task, task_name

__all__ = ["TASKS", "USER_TASKS", "Completion", "Document", "Example", "Splits", "Task", "UserData", "dev_cap",
           "find_task", "get_task", "is_user_task", "read_split", "resolve_data_dir", "sample_splits", "task_metrics",
           "task_name"]
