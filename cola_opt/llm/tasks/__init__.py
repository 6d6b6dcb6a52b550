"""Tasks: data sources, prompt templates, verbalizers and MeZO-protocol sampling.

- :mod:`.readers`: the release file formats (jsonl, GLUE TSV, MultiRC's nested records);
- :mod:`.definitions`: the seven tasks (:class:`Task`): templates, verbalizers, labels;
- :mod:`.sampling`: where the records come from (:func:`resolve_data_dir`,
  :func:`read_split`) and the per-seed draw of train, dev and test (:func:`sample_splits`).
"""

from .definitions import TASKS, Example, Task, get_task
from .sampling import Splits, read_split, resolve_data_dir, sample_splits

__all__ = ["TASKS", "Example", "Splits", "Task", "get_task", "read_split", "resolve_data_dir", "sample_splits"]
