"""Tasks: data sources, prompt templates, verbalizers and MeZO-protocol sampling.

Each task turns a record of the official release into an :class:`Example`: a prompt
and the candidate answers (the verbalizer) appended to it, plus the gold index. A
causal LM classifies by scoring each candidate (:mod:`cola_opt.llm.scoring`).

Sources, in order: ``--data-dir``; the ``COLA_DATA_DIR`` variable; the folder
``../shared/data/<benchmark>`` (beside the working directory or beside this
checkout) when it exists; else Hugging Face ``datasets`` for users online. A local
folder holds one subfolder per task in the official release layout
(``WSC/train.jsonl``, ``WSC/val.jsonl``, ...).

Templates are ours, written in the spirit of MeZO's (princeton-nlp/MeZO,
``large_models/templates.py``); they are listed in ``docs/tasks.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Example", "Task", "TASKS", "get_task", "resolve_data_dir", "read_split", "Splits", "sample_splits"]


@dataclass(frozen=True)
class Example:
    """One classification example for a causal LM.

    Attributes:
        prompt: the text before the answer.
        candidates: answer strings, each appended directly to ``prompt`` (they start
            with a space where a space is meant).
        label: index of the gold candidate.
    """

    prompt: str
    candidates: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class Task:
    """A task: where its data lives and how a record becomes an :class:`Example`.

    Attributes:
        name: lower-case id used on the command line (``"wsc"``).
        folder: the task's folder in the release layout (``"WSC"``).
        benchmark: ``"super_glue"`` or ``"glue"``; names the default data folder.
        candidates: the verbalizer, one string per class, in label order.
        template: record -> prompt.
        label: record -> gold index.
        hf_name: ``(path, config)`` for ``datasets.load_dataset``.
        from_hf: HF row -> record in the release format.
        splits: file stem of the train and validation splits.
        reader: ``(task folder, file stem) -> records`` for a non-jsonl release
            format; ``None`` reads ``<stem>.jsonl``.
    """

    name: str
    folder: str
    benchmark: str
    candidates: tuple[str, ...]
    template: Callable[[dict], str]
    label: Callable[[dict], int]
    hf_name: tuple[str, str]
    from_hf: Callable[[dict], dict] = lambda row: row
    splits: tuple[str, str] = ("train", "val")
    reader: Callable[[Path, str], list[dict]] | None = None

    def example(self, record: dict) -> Example:
        """The :class:`Example` of one record."""
        return Example(self.template(record), self.candidates, self.label(record))


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------- WSC
def _wsc_prompt(r: dict) -> str:
    t = r["target"]
    return (
        f"{r['text']}\n"
        f'Question: In the passage above, does the pronoun "{t["span2_text"]}" refer to "{t["span1_text"]}"?\n'
        "Answer:"
    )


def _wsc_from_hf(row: dict) -> dict:
    keys = ("span1_index", "span2_index", "span1_text", "span2_text")
    return {"text": row["text"], "target": {k: row[k] for k in keys}, "idx": row["idx"], "label": bool(row["label"])}


# ----------------------------------------------------------------------------- RTE
def _rte_prompt(r: dict) -> str:
    return f'{r["premise"]}\nQuestion: Does this mean that "{r["hypothesis"]}" is true? Yes or No?\nAnswer:'


def _rte_label(r: dict) -> int:
    labels = {"entailment": 0, "not_entailment": 1}
    if r["label"] not in labels:
        raise ValueError(f"RTE label {r['label']!r} is not one of {sorted(labels)}")
    return labels[r["label"]]


def _rte_from_hf(row: dict) -> dict:
    return {**row, "label": ("entailment", "not_entailment")[row["label"]]}


TASKS: dict[str, Task] = {
    "wsc": Task(
        name="wsc",
        folder="WSC",
        benchmark="super_glue",
        candidates=(" No", " Yes"),
        template=_wsc_prompt,
        label=lambda r: int(bool(r["label"])),
        hf_name=("aps/super_glue", "wsc.fixed"),
        from_hf=_wsc_from_hf,
    ),
    "rte": Task(
        name="rte",
        folder="RTE",
        benchmark="super_glue",
        candidates=(" Yes", " No"),
        template=_rte_prompt,
        label=_rte_label,
        hf_name=("aps/super_glue", "rte"),
        from_hf=_rte_from_hf,
    ),
}


def get_task(name: str) -> Task:
    """The task called ``name`` (case-insensitive).

    Raises:
        ValueError: on an unknown task, listing the known ones.
    """
    key = str(name).lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[key]


def _default_dirs(benchmark: str) -> list[Path]:
    here = Path(__file__).resolve().parents[3]  # the folder that holds this checkout
    return [Path.cwd().parent / "shared" / "data" / benchmark, here / "shared" / "data" / benchmark]


def resolve_data_dir(task: Task, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local folder holding ``task``'s release files, or ``None`` to use HF ``datasets``.

    Raises:
        FileNotFoundError: if ``data_dir`` (or ``COLA_DATA_DIR``) is given but does not
            exist, or lacks the task's folder.
    """
    given, origin = (data_dir, "--data-dir") if data_dir else (os.environ.get("COLA_DATA_DIR"), "COLA_DATA_DIR")
    if given:
        root = Path(given).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"data directory {str(root)!r} (from {origin}) does not exist")
        if not (root / task.folder).is_dir():
            raise FileNotFoundError(
                f"data directory {str(root)!r} (from {origin}) has no {task.folder}/ folder for task {task.name!r}"
            )
        return root
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
        return _read_jsonl(path)
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
    """

    train: list[Example]
    dev: list[Example]
    test: list[Example]
    source: str
    counts: dict[str, int]


def sample_splits(
    task: Task, *, seed: int, n_train: int, n_dev: int, n_test: int, data_dir: str | os.PathLike | None = None
) -> Splits:
    """Draw train, dev and test examples by the MeZO protocol, per seed.

    ``n_train + n_dev`` records are drawn without replacement from the train split
    with ``numpy.random.RandomState(seed)``; dev is the last ``n_dev`` of the draw.
    Test is ``n_test`` records drawn from the validation split, or all of it (in file
    order) when it is smaller, since the release's test files carry no labels. When
    the train split is too small, ``n_train`` is capped to what remains after dev.

    Raises:
        ValueError: on a negative count, ``n_train < 1``, or ``n_dev`` that leaves no
            training example.
        FileNotFoundError, RuntimeError: as :func:`resolve_data_dir` and :func:`read_split`.
    """
    for name, v in (("n_train", n_train), ("n_dev", n_dev), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got n_train={n_train}, n_test={n_test}")
    root = resolve_data_dir(task, data_dir)
    train_pool = read_split(task, "train", root)
    val_pool = read_split(task, "val", root)
    if n_dev >= len(train_pool):
        raise ValueError(f"n_dev={n_dev} leaves no training example: {task.name} has {len(train_pool)} train records")
    rng = np.random.RandomState(seed)
    take = min(n_train + n_dev, len(train_pool))
    drawn = [train_pool[i] for i in rng.choice(len(train_pool), take, replace=False)]
    train_recs, dev_recs = drawn[: take - n_dev], drawn[take - n_dev :]
    if n_test >= len(val_pool):
        test_recs = val_pool
    else:
        test_recs = [val_pool[i] for i in rng.choice(len(val_pool), n_test, replace=False)]
    source = str(root) if root is not None else "hf:" + "/".join(task.hf_name)
    return Splits(
        train=[task.example(r) for r in train_recs],
        dev=[task.example(r) for r in dev_recs],
        test=[task.example(r) for r in test_recs],
        source=source,
        counts={"train": len(train_recs), "dev": len(dev_recs), "test": len(test_recs)},
    )
