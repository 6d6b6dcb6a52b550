"""Users' own tasks: plain text, prompt/completion pairs and classification, from their files.

Three task names stand for a user's data (``--task``; ``docs/data.md``):

- ``text`` (continued pretraining): each record is a :class:`Document`, the text of a
  file of a folder or the ``text_field`` of a record; empty documents are skipped.
- ``completion`` (supervised fine-tuning): each record is a :class:`Completion`: the
  prompt (``prompt_field``, or ``template`` filled with the record's fields) and the
  completion (``completion_field``), appended to the prompt as written.
- ``classification``: the prompt as above, the label words ``candidates`` (each appended
  to the prompt after ``label_prefix``) and the gold label (``label_field``: a candidate,
  or its 0-based index): an :class:`~cola_opt.llm.tasks.definitions.Example`, trained and
  scored as the built-in tasks are.

Every record is checked when it is read, before any model is loaded: a missing or null
field, an empty completion or prompt, a label outside the candidates; each error names
the file and line (or row) and the field. A source with no usable record is an error.

Splits (:meth:`UserData.sample`, MeZO-like, ``numpy.random.RandomState(seed)``):

1. no ``test_file``: ``n_test`` records are drawn from the train file first, and the rest
   are the training pool (a document is never in both);
2. ``n_train + n_dev`` records are drawn from the training pool (``n_train`` capped to
   what there is); without a ``dev_file`` dev is the last ``n_dev`` of that draw (MeZO);
3. a ``dev_file`` gives ``n_dev`` records drawn from it (all of them, in file order, if
   it holds no more), then a ``test_file`` gives ``n_test`` the same way.

The same file may be given for train and test (memorisation: the test is the training
records). For ``text``, the counts are documents; the objective packs them into blocks.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .definitions import Example, get_task
from .files import Record, read_records
from .sampling import Splits

__all__ = ["USER_TASKS", "Completion", "Document", "UserData", "dev_cap", "is_user_task", "task_name"]

USER_TASKS = ("text", "completion", "classification")


@dataclass(frozen=True)
class Document:
    """One document of a ``text`` task (continued pretraining).

    Attributes:
        text: the document, as read.
    """

    text: str


@dataclass(frozen=True)
class Completion:
    """One prompt/completion pair of a ``completion`` task (supervised fine-tuning).

    Attributes:
        prompt: the text before the answer (not trained on).
        completion: the answer, appended to ``prompt`` as written (trained on).
    """

    prompt: str
    completion: str


def is_user_task(name) -> bool:
    """Whether ``name`` is one of :data:`USER_TASKS` (a task from the user's files)."""
    return isinstance(name, str) and name in USER_TASKS


def task_name(name: str) -> str:
    """The canonical name of a built-in or user task.

    Raises:
        ValueError: on an unknown name, listing the known ones.
    """
    if is_user_task(name):
        return name
    try:
        return get_task(name).name
    except ValueError as e:
        raise ValueError(f"{e}; or, for your own data, {', '.join(USER_TASKS)} (docs/data.md)") from None


def dev_cap(name: str) -> float:
    """The most dev examples a task draws: MeZO's per-task size for a built-in task; no cap for a user's."""
    return math.inf if is_user_task(name) else get_task(name).max_dev


def template_fields(template: str) -> list[str]:
    """The record fields that ``template`` (a ``str.format`` string) names, in order.

    Raises:
        ValueError: a positional (``{}``, ``{0}``) or dotted/indexed field, or a bad format string.
    """
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"template {template!r} is not a valid format string ({e})") from None
    for f in names:
        if not f or f.isdigit() or any(c in f for c in ".[]"):
            raise ValueError(f"template {template!r} has the field {{{f}}}; name a field of the records, "
                             "such as {premise} (braces meant literally are written {{ and }})")
    return names


@dataclass(frozen=True)
class UserData:
    """Where a user's task reads its data, and how a record becomes an example.

    Attributes:
        task: ``"text"``, ``"completion"`` or ``"classification"``.
        train_file: the training data (module docstring of :mod:`.files` for the forms).
        dev_file, test_file: held-out data; ``None`` draws it from ``train_file``.
        text_field, prompt_field, completion_field, label_field: the records' field names.
        template: the prompt as a ``str.format`` string over the record's fields
            (``"{premise}\\nQuestion: {hypothesis}?"``); the two characters ``\\n`` (``\\t``)
            stand for a newline (a tab), as a shell passes them; ``None``: the ``prompt_field``.
        candidates: the label words of a classification task, in label order.
        label_prefix: put between the prompt and each label word.
        text_glob: the files of a folder that are documents.

    Raises:
        ValueError: from :meth:`validate`, naming the bad value.
    """

    task: str
    train_file: str | None
    dev_file: str | None = None
    test_file: str | None = None
    text_field: str = "text"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    label_field: str = "label"
    template: str | None = None
    candidates: tuple[str, ...] | None = None
    label_prefix: str = " "
    text_glob: str = "**/*.txt"

    FILES: ClassVar[tuple[str, ...]] = ("train_file", "dev_file", "test_file")

    def validate(self) -> None:
        """Check the options (no file is read).

        Raises:
            ValueError: naming the first bad value.
        """
        if not is_user_task(self.task):
            raise ValueError(f"task {self.task!r} is not one of {USER_TASKS}")
        if not self.train_file:
            raise ValueError(f"task {self.task!r} reads your data: pass --train-file (a JSONL, CSV or parquet file, "
                             "a folder of text files, or hf:<dataset>)")
        for name in self.FILES:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} {value!r} must be a path or hf:<dataset>")
        for name in ("text_field", "prompt_field", "completion_field", "label_field"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} {getattr(self, name)!r} must be a field name")
        if self.template is not None:
            if self.task == "text":
                raise ValueError("template needs --task completion or classification (a text task has no prompt)")
            if not isinstance(self.template, str) or not template_fields(self.template):
                raise ValueError(f"template {self.template!r} names no field of the records, such as {{premise}}")
        if self.task == "classification":
            c = self.candidates
            if not c or len(c) < 2 or any(not isinstance(w, str) or not w.strip() for w in c) or len(set(c)) != len(c):
                raise ValueError(f"candidates {list(c) if c else c!r} must be two or more distinct, non-empty label "
                                 "words for --task classification (--candidates No,Yes)")
        elif self.candidates is not None:
            raise ValueError(f"candidates {list(self.candidates)} need --task classification, not {self.task!r}")
        if not isinstance(self.label_prefix, str):
            raise ValueError(f"label_prefix {self.label_prefix!r} must be a string")

    # ------------------------------------------------------------------ records -> examples
    def examples(self, name: str) -> tuple[list, list[str]]:
        """The examples of the source in option ``name`` (``"train_file"``, ...), and where each came from.

        Raises:
            ValueError: a bad record (naming file, line and field), or no usable record.
            FileNotFoundError, RuntimeError: as :func:`~cola_opt.llm.tasks.files.read_records`.
        """
        source = getattr(self, name)
        records = read_records(source, name=name, glob=self.text_glob, text_field=self.text_field)
        pairs = [(self.example(r), r.where) for r in records]
        kept = [(e, w) for e, w in pairs if e is not None]
        if not kept:
            empty = f" ({len(records)} empty documents)" if records else ""
            raise ValueError(f"{name} {source!r} holds no usable record{empty}")
        return [e for e, _ in kept], [w for _, w in kept]

    def example(self, record: Record) -> Example | Completion | Document | None:
        """The example of one record (``None``: an empty document, skipped).

        Raises:
            ValueError: naming ``record.where`` and the field at fault.
        """
        if self.task == "text":
            text = _text(record, self.text_field, "--text-field")
            return Document(text) if text.strip() else None
        prompt = self.prompt(record)
        if not prompt.strip():
            raise ValueError(f"{record.where}: empty prompt")
        if self.task == "completion":
            completion = _text(record, self.completion_field, "--completion-field")
            if not completion.strip():
                raise ValueError(f"{record.where}: empty completion (field {self.completion_field!r})")
            return Completion(prompt, completion)
        words = tuple(self.label_prefix + c for c in self.candidates)
        return Example(prompt, words, self.label(record))

    def prompt(self, record: Record) -> str:
        """The record's prompt: ``template`` filled with its fields, else its ``prompt_field``."""
        if self.template is None:
            return _text(record, self.prompt_field, "--prompt-field")
        values = {f: _text(record, f, "--template") for f in template_fields(self.template)}
        return self.template.replace("\\n", "\n").replace("\\t", "\t").format_map(values)

    def label(self, record: Record) -> int:
        """The gold candidate's index: the label field equals a candidate (or does so stripped), or is its index.

        Raises:
            ValueError: naming the record and the label outside the candidates.
        """
        value = _field(record, self.label_field, "--label-field")
        words = list(self.candidates)
        if isinstance(value, str):
            if value in words:
                return words.index(value)
            stripped = [w.strip() for w in words]
            if value.strip() in stripped:
                return stripped.index(value.strip())
            if value.strip().isdigit():
                value = int(value.strip())
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < len(words):
            return int(value)
        raise ValueError(f"{record.where}: label {value!r} (field {self.label_field!r}) is not one of the candidates "
                         f"{words} nor an index 0..{len(words) - 1}")

    # ------------------------------------------------------------------ the splits
    def sample(self, *, seed: int, n_train: int, n_dev: int, n_test: int) -> Splits:
        """Train, dev and test examples by the rules of the module docstring.

        Raises:
            ValueError: a bad count or seed; too few records for the held-out splits; as
                :meth:`examples`.
        """
        for n, v in (("n_train", n_train), ("n_dev", n_dev), ("n_test", n_test)):
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if n == "n_dev" else 1):
                raise ValueError(f"{n} must be an integer >= {0 if n == 'n_dev' else 1}, got {v!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        self.validate()
        rng = np.random.RandomState(seed)
        pool = list(zip(*self.examples("train_file")))
        test = None
        if self.test_file is None:
            carve_dev = 0 if self.dev_file else n_dev
            if n_test + carve_dev >= len(pool):
                raise ValueError(f"train_file {self.train_file!r} has {len(pool)} usable records: n_test={n_test} and "
                                 f"n_dev={carve_dev} leave none to train on; lower --n-test/--n-dev, or pass "
                                 "--test-file/--dev-file")
            picked = set(rng.choice(len(pool), n_test, replace=False).tolist())
            test = [pool[i] for i in sorted(picked)]
            pool = [p for i, p in enumerate(pool) if i not in picked]
        n_dev_train = 0 if self.dev_file else n_dev
        if n_dev_train >= len(pool):
            raise ValueError(f"n_dev={n_dev} leaves no training record: train_file {self.train_file!r} has "
                             f"{len(pool)} records to draw from")
        take = min(n_train + n_dev_train, len(pool))
        drawn = [pool[i] for i in rng.choice(len(pool), take, replace=False)]
        train, dev = drawn[: take - n_dev_train], drawn[take - n_dev_train :]
        if self.dev_file is not None:
            dev = _draw(list(zip(*self.examples("dev_file"))), n_dev, rng)
        if test is None:
            test = _draw(list(zip(*self.examples("test_file"))), n_test, rng)
        parts = {"train": train, "dev": dev, "test": test}
        source = "; ".join(f"{k}: {getattr(self, f'{k}_file') or self.train_file}" for k in parts)
        return Splits(train=[e for e, _ in train], dev=[e for e, _ in dev], test=[e for e, _ in test], source=source,
                      counts={k: len(v) for k, v in parts.items()}, where={k: [w for _, w in v] for k, v in parts.items()})


def _draw(pool: list, n: int, rng: np.random.RandomState) -> list:
    """``n`` entries of ``pool`` drawn without replacement, or all of it (in order) when it holds no more."""
    if n >= len(pool):
        return pool
    return [pool[i] for i in rng.choice(len(pool), n, replace=False)]


def _field(record: Record, name: str, option: str):
    """The value of field ``name``; a ValueError naming the record, the field and the option if missing or null."""
    if name not in record.fields:
        have = ", ".join(map(str, record.fields)) or "none"
        raise ValueError(f"{record.where}: no field {name!r} ({option}); the record's fields: {have}")
    value = record.fields[name]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"{record.where}: field {name!r} ({option}) is empty (null)")
    return value


def _text(record: Record, name: str, option: str) -> str:
    """Field ``name`` as text: a string, or a number written out; a ValueError for a list, dict or bool."""
    value = _field(record, name, option)
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return str(value)
    raise ValueError(f"{record.where}: field {name!r} ({option}) is a {type(value).__name__}, not text")
