"""Where a task's records come from, and the MeZO-protocol draw of train, dev and test.

Sources, in order: ``--data-dir``; the ``COLA_DATA_DIR`` variable; the folder
``../shared/data/<benchmark>`` (beside the working directory or beside this
checkout) when it exists; else Hugging Face ``datasets`` for users online. A local
folder holds one subfolder per task in the official release layout: SuperGLUE
``WSC/train.jsonl``, ``WSC/val.jsonl``, ...; GLUE ``SST-2/train.tsv``, ``SST-2/dev.tsv``
(header ``sentence\tlabel``). A folder that holds ``super_glue/`` and ``glue/`` (such
as ``../shared/data``) serves every task.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import astuple, dataclass, field
from pathlib import Path

import numpy as np

from .definitions import Example, Task
from .readers import read_jsonl

__all__ = ["Splits", "read_split", "resolve_data_dir", "sample_splits"]


def _default_dirs(benchmark: str) -> list[Path]:
    here = Path(__file__).resolve().parents[4]  # the folder that holds this checkout
    return [Path.cwd().parent / "shared" / "data" / benchmark, here / "shared" / "data" / benchmark]


def resolve_data_dir(task: Task, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local folder holding ``task``'s release files, or ``None`` to use HF ``datasets``.

    A given folder may hold the task's folder itself (``<dir>/WSC``) or one level down,
    under the benchmark's name (``<dir>/super_glue/WSC``, ``<dir>/glue/SST-2``).

    Raises:
        FileNotFoundError: if ``data_dir`` (or ``COLA_DATA_DIR``) is given but does not
            exist, or lacks the task's folder.
    """
    if data_dir is not None and str(data_dir) == "":
        raise FileNotFoundError("data directory '' (from --data-dir) is empty; leave it out to use the defaults")
    given, origin = (data_dir, "--data-dir") if data_dir else (os.environ.get("COLA_DATA_DIR"), "COLA_DATA_DIR")
    if given:
        root = Path(given).expanduser()
        if root.exists() and not root.is_dir():
            raise FileNotFoundError(f"data directory {str(root)!r} (from {origin}) is a file, not a folder")
        if not root.is_dir():
            raise FileNotFoundError(f"data directory {str(root)!r} (from {origin}) does not exist")
        for cand in (root, root / task.benchmark):
            if (cand / task.folder).is_dir():
                return cand
        raise FileNotFoundError(
            f"data directory {str(root)!r} (from {origin}) has no {task.folder}/ folder "
            f"(nor {task.benchmark}/{task.folder}/) for task {task.name!r}"
        )
    for cand in _default_dirs(task.benchmark):
        if (cand / task.folder).is_dir():
            return cand
    return None


def read_split(task: Task, split: str, data_dir: Path | None) -> list[dict]:
    """All records of ``split`` (``"train"`` or ``"val"``), from the folder or from HF.

    Raises:
        FileNotFoundError: if the split's file is missing from ``data_dir``.
        RuntimeError: if there is no local folder and HF ``datasets`` cannot serve it.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split {split!r} must be 'train' or 'val'")
    stem = task.splits[0 if split == "train" else 1]
    if data_dir is not None:
        folder = data_dir / task.folder
        if task.reader is not None:
            return task.reader(folder, stem)
        path = folder / f"{stem}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: expected the {task.folder} release layout in {data_dir}")
        return read_jsonl(path)
    try:
        import datasets
    except ImportError:
        raise RuntimeError(
            f"no local data for {task.name!r} (pass --data-dir or set COLA_DATA_DIR), and HF datasets is not "
            "installed (pip install 'cola_opt[online]')"
        ) from None
    hf_split = "train" if split == "train" else "validation"
    try:
        rows = datasets.load_dataset(*task.hf_name, split=hf_split)
    except Exception as e:
        raise RuntimeError(
            f"no local data for {task.name!r} (pass --data-dir or set COLA_DATA_DIR), and HF datasets could not "
            f"load {task.hf_name}: {e}"
        ) from e
    return [task.from_hf(dict(r)) for r in rows]


@dataclass
class Splits:
    """Sampled examples and where they came from.

    Attributes:
        train, dev, test: the examples.
        source: the local folder, or ``"hf:<path>/<config>"``.
        counts: the numbers actually drawn (``n_train`` may be capped, see :func:`sample_splits`).
        capped: the splits that got fewer examples than asked, and why:
            ``{"train": {"asked": 1000, "drawn": 54, "reason": "..."}}``; empty when every
            count was met (a test split smaller than ``n_test`` is used whole, by the MeZO
            protocol, and is not listed).
        where: per split, where each example came from (``"train.jsonl:12"``), for the
            errors found after the draw; filled for a user's data
            (:meth:`cola_opt.llm.tasks.user.UserData.sample`), else empty. Not fingerprinted.
    """

    train: list[Example]
    dev: list[Example]
    test: list[Example]
    source: str
    counts: dict[str, int]
    capped: dict[str, dict] = field(default_factory=dict)
    where: dict[str, list[str]] = field(default_factory=dict)

    def warnings(self) -> list[str]:
        """One line per entry of :attr:`capped`: what was asked, what was drawn, and why."""
        return [f"n_{name}={c['asked']} asked, {c['drawn']} drawn: {c['reason']}" for name, c in self.capped.items()]

    def fingerprint(self) -> str:
        """SHA-1 (16 hex digits) of the examples drawn: every field of every train, dev and test example, in order.

        Two draws with the same fingerprint hold the same examples, whatever folder or
        seed they came from; a changed label or prompt changes it.
        """
        # an Example as (prompt, candidates, label): what dataclasses.astuple gave before it had its idx
        drawn = {name: [(e.prompt, e.candidates, e.label) if isinstance(e, Example) else astuple(e)
                        for e in getattr(self, name)] for name in ("train", "dev", "test")}
        return hashlib.sha1(json.dumps(drawn, ensure_ascii=False).encode()).hexdigest()[:16]

    def majority_accuracy(self, split: str = "test") -> float | None:
        """Accuracy on ``split`` (``"test"`` or ``"dev"``) of always answering the most frequent training label.

        Returns:
            a fraction in [0, 1]; ``None`` when ``split`` or train is empty, or for examples
            without a label (a language-modelling task's documents and completions).

        Raises:
            ValueError: ``split`` is neither ``"test"`` nor ``"dev"``.
        """
        if split not in ("test", "dev"):
            raise ValueError(f"split {split!r} must be 'test' or 'dev'")
        scored = getattr(self, split)
        if not scored or not self.train or not all(isinstance(e, Example) for e in (*self.train, *scored)):
            return None
        labels = [e.label for e in self.train]
        top = max(set(labels), key=labels.count)
        return sum(e.label == top for e in scored) / len(scored)


def sample_splits(
    task: Task, *, seed: int, n_train: int, n_dev: int, n_test: int, data_dir: str | os.PathLike | None = None,
    need_train: bool = True,
) -> Splits:
    """Draw train, dev and test examples by the MeZO protocol, per seed.

    ``n_train + n_dev`` records are drawn without replacement from the train split
    with ``numpy.random.RandomState(seed)``; dev is the last ``n_dev`` of the draw.
    Test is ``n_test`` records drawn from the validation split, or all of it (in file
    order) when it is smaller, since the release's test files carry no labels. A task
    with a ``group`` (MultiRC: the question) draws its test split by group: whole groups
    in a random order, as many as fit in ``n_test`` records (at least one), so that every
    question drawn has all its answer options. When the train split is too small,
    ``n_train`` is capped to what remains after dev, and :attr:`Splits.capped` says so.

    Args:
        need_train: ``False`` for a run that trains nothing (zero-shot, an evaluation):
            a missing train split is then no error, and train and dev are empty (listed
            in :attr:`Splits.capped` when ``n_dev > 0``).

    Raises:
        ValueError: on a negative count, ``n_train < 1``, a seed outside ``[0, 2**32)``,
            an empty validation split, or ``n_dev`` that leaves no training example.
        FileNotFoundError, RuntimeError: as :func:`resolve_data_dir` and :func:`read_split`;
            a missing train split with ``need_train`` says that ``--method zero-shot``
            evaluates without one.
    """
    for name, v in (("n_train", n_train), ("n_dev", n_dev), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got n_train={n_train}, n_test={n_test}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if not isinstance(task, Task):
        raise ValueError(f"task must be a Task (see get_task), got {task!r}")
    root = resolve_data_dir(task, data_dir)
    train_pool = _train_pool(task, root, need_train)
    val_pool = read_split(task, "val", root)
    if not val_pool:
        raise ValueError(f"the validation split of {task.name} is empty: nothing to test on ({root or 'HF'})")
    if train_pool is not None and n_dev >= len(train_pool):
        raise ValueError(f"n_dev={n_dev} leaves no training example: {task.name} has {len(train_pool)} train records")
    rng = np.random.RandomState(seed)
    capped = {}
    if train_pool is None:
        train_recs, dev_recs = [], []
        if n_dev > 0:
            capped["dev"] = {"asked": n_dev, "drawn": 0, "reason": f"{task.name} has no train split in {root}, "
                             "so there are no dev examples; the run evaluates on the validation split alone"}
    else:
        take = min(n_train + n_dev, len(train_pool))
        drawn = [train_pool[i] for i in rng.choice(len(train_pool), take, replace=False)]
        train_recs, dev_recs = drawn[: take - n_dev], drawn[take - n_dev :]
        if len(train_recs) < n_train:
            capped["train"] = {"asked": n_train, "drawn": len(train_recs), "reason": (
                f"{task.name}'s train split has {len(train_pool)} records and n_dev={n_dev} takes {n_dev} of them; "
                f"training on {len(train_recs)}")}
    test_recs = _test_records(task, val_pool, n_test, rng)
    source = str(root) if root is not None else "hf:" + "/".join(task.hf_name)
    return Splits(
        train=[task.example(r) for r in train_recs],
        dev=[task.example(r) for r in dev_recs],
        test=[task.example(r) for r in test_recs],
        source=source,
        counts={"train": len(train_recs), "dev": len(dev_recs), "test": len(test_recs)},
        capped=capped,
    )


def _train_pool(task: Task, root: Path | None, need_train: bool) -> list[dict] | None:
    """The train split's records; ``None`` when it is missing and not needed."""
    try:
        return read_split(task, "train", root)
    except FileNotFoundError as e:
        if need_train:
            raise FileNotFoundError(f"{e}; training needs it (--method zero-shot evaluates without one)") from None
        return None


def _test_records(task: Task, val_pool: list[dict], n_test: int, rng: np.random.RandomState) -> list[dict]:
    """``n_test`` records of the validation split (all of it if smaller), drawn one by one or by ``task.group``."""
    if n_test >= len(val_pool):
        return val_pool
    if task.group is None:
        return [val_pool[i] for i in rng.choice(len(val_pool), n_test, replace=False)]
    groups: dict = {}
    for r in val_pool:
        groups.setdefault(task.group(r), []).append(r)
    units = list(groups.values())
    out: list[dict] = []
    for i in rng.permutation(len(units)):
        if out and len(out) + len(units[i]) > n_test:
            break
        out.extend(units[i])
    return out
