"""Tasks: data sources, prompt templates, verbalizers and MeZO-protocol sampling.

Each task turns a record of the official release into an :class:`Example`: a prompt
and the candidate answers (the verbalizer) appended to it, plus the gold index. A
causal LM classifies by scoring each candidate (:mod:`cola_opt.llm.scoring`).

Sources, in order: ``--data-dir``; the ``COLA_DATA_DIR`` variable; the folder
``../shared/data/<benchmark>`` (beside the working directory or beside this
checkout) when it exists; else Hugging Face ``datasets`` for users online. A local
folder holds one subfolder per task in the official release layout: SuperGLUE
``WSC/train.jsonl``, ``WSC/val.jsonl``, ...; GLUE ``SST-2/train.tsv``, ``SST-2/dev.tsv``
(header ``sentence\tlabel``). A folder that holds ``super_glue/`` and ``glue/`` (such
as ``../shared/data``) serves every task.

Seven tasks: SST-2 (GLUE); RTE, CB, WiC, WSC, BoolQ and MultiRC (SuperGLUE). MultiRC is
scored per answer option: each (paragraph, question, answer) is one yes/no
:class:`Example`, and sampling draws answer options, as MeZO does.

Templates are ours, written in the spirit of MeZO's (princeton-nlp/MeZO,
``large_models/templates.py``); they are listed in ``docs/tasks.md``.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TASKS", "Example", "Splits", "Task", "get_task", "read_split", "resolve_data_dir", "sample_splits"]


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
        reader: ``(task folder, file stem) -> records`` for a release format other
            than one record per jsonl line; ``None`` reads ``<stem>.jsonl``.
        max_dev: MeZO's dev-set size for the task (500; 100 for CB, whose train split
            has 250 records).
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
    max_dev: int = 500

    def example(self, record: dict) -> Example:
        """The :class:`Example` of one record.

        Raises:
            ValueError: if the record lacks a field the template needs, or its label is
                not one this task knows; the message names the task and the record's idx.
        """
        try:
            return Example(self.template(record), self.candidates, self.label(record))
        except (KeyError, TypeError) as e:
            where = record.get("idx", "?") if isinstance(record, dict) else "?"
            raise ValueError(f"{self.name} record idx={where} is malformed: missing or bad field {e}") from None


def _read_jsonl(path: Path) -> list[dict]:
    """Records of a jsonl file; a ValueError naming the file and line on a bad line."""
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not valid JSON ({e.msg}, column {e.colno})") from None
                if not isinstance(rec, dict):
                    raise ValueError(f"{path}:{number}: expected a JSON object, got {type(rec).__name__}")
                records.append(rec)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return records


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
    return _label_index("RTE", ("entailment", "not_entailment"), r["label"])


def _rte_from_hf(row: dict) -> dict:
    return {**row, "label": ("entailment", "not_entailment")[row["label"]]}


def _label_index(task: str, labels: tuple, value) -> int:
    """Index of ``value`` in ``labels``; a ValueError naming the task and value otherwise."""
    if value not in labels:
        raise ValueError(f"{task} label {value!r} is not one of {list(labels)}")
    return labels.index(value)


# ----------------------------------------------------------------------------- CB
_CB_LABELS = ("entailment", "contradiction", "neutral")


def _cb_prompt(r: dict) -> str:
    return f'{r["premise"]}\nQuestion: Does this mean that "{r["hypothesis"]}" is true? Yes, No, or Maybe?\nAnswer:'


# ----------------------------------------------------------------------------- WiC
def _wic_span(r: dict, k: int) -> str:
    text, start, end = r[f"sentence{k}"], r[f"start{k}"], r[f"end{k}"]
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
        raise ValueError(f"WiC record {r.get('idx')!r}: span{k} [{start}, {end}) is not inside sentence{k} ({len(text)} chars)")
    return text[start:end]


def _wic_prompt(r: dict) -> str:
    w1, w2 = _wic_span(r, 1), _wic_span(r, 2)
    return (
        f"Sentence 1: {r['sentence1']}\nSentence 2: {r['sentence2']}\n"
        f'Question: Does the word "{r["word"]}" have the same meaning in both sentences '
        f'("{w1}" in sentence 1, "{w2}" in sentence 2)? Yes or No?\nAnswer:'
    )


# ----------------------------------------------------------------------------- SST-2
def _read_glue_tsv(folder: Path, stem: str) -> list[dict]:
    """GLUE TSV with header ``sentence\tlabel``; no quoting (the release has bare quotes)."""
    path = folder / f"{stem}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: expected the GLUE {folder.name} layout ({stem}.tsv)")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or rows[0][:2] != ["sentence", "label"]:
        raise ValueError(f"{path}: header {rows[0] if rows else []!r} is not ['sentence', 'label']")
    out = []
    for i, row in enumerate(rows[1:]):
        if len(row) != 2 or row[1] not in ("0", "1"):
            raise ValueError(f"{path}, line {i + 2}: expected 'sentence<TAB>0|1', got {row!r}")
        out.append({"sentence": row[0], "label": int(row[1]), "idx": i})
    return out


def _sst2_prompt(r: dict) -> str:
    return f"{r['sentence'].strip()}\nQuestion: Was that review terrible or great?\nAnswer: It was"


# ----------------------------------------------------------------------------- BoolQ
def _boolq_prompt(r: dict) -> str:
    question = r["question"].strip().rstrip("?")
    return f"{r['passage']}\nQuestion: {question}?\nAnswer:"


def _bool_label(task: str):
    def label(r: dict) -> int:
        if not isinstance(r["label"], (bool, int)) or r["label"] not in (0, 1):
            raise ValueError(f"{task} label {r['label']!r} is not a boolean")
        return int(r["label"])

    return label


# ----------------------------------------------------------------------------- MultiRC
def _multirc_text(html: str) -> str:
    """The passage without the release's ``<b>Sent k: </b>`` markers and ``<br>`` breaks."""
    text = re.sub(r"<b>Sent \d+: </b>", "", html)
    return re.sub(r"\s*<br\s*/?>\s*", " ", text).strip()


def _read_multirc(folder: Path, stem: str) -> list[dict]:
    """One record per answer option, from the release's nested records (passage -> questions -> answers)."""
    path = folder / f"{stem}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: expected the SuperGLUE MultiRC layout ({stem}.jsonl)")
    out = []
    for rec in _read_jsonl(path):
        paragraph = _multirc_text(rec["passage"]["text"])
        for q in rec["passage"]["questions"]:
            for a in q["answers"]:
                idx = {"paragraph": rec["idx"], "question": q["idx"], "answer": a["idx"]}
                out.append({"paragraph": paragraph, "question": q["question"], "answer": a["text"],
                            "label": a.get("label"), "idx": idx})
    return out


def _multirc_prompt(r: dict) -> str:
    return (
        f"{r['paragraph']}\nQuestion: {r['question']}\n"
        f'Is "{r["answer"]}" a correct answer to that question? Yes or No?\nAnswer:'
    )


def _multirc_from_hf(row: dict) -> dict:
    return {"paragraph": _multirc_text(row["paragraph"]), "question": row["question"], "answer": row["answer"],
            "label": row["label"], "idx": row["idx"]}


TASKS: dict[str, Task] = {
    "wsc": Task(
        name="wsc",
        folder="WSC",
        benchmark="super_glue",
        candidates=(" No", " Yes"),
        template=_wsc_prompt,
        label=_bool_label("WSC"),
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
    "cb": Task(
        name="cb",
        folder="CB",
        benchmark="super_glue",
        candidates=(" Yes", " No", " Maybe"),
        template=_cb_prompt,
        label=lambda r: _label_index("CB", _CB_LABELS, r["label"]),
        hf_name=("aps/super_glue", "cb"),
        from_hf=lambda row: {**row, "label": _CB_LABELS[row["label"]]},
        max_dev=100,
    ),
    "wic": Task(
        name="wic",
        folder="WiC",
        benchmark="super_glue",
        candidates=(" No", " Yes"),
        template=_wic_prompt,
        label=_bool_label("WiC"),
        hf_name=("aps/super_glue", "wic"),
        from_hf=lambda row: {**row, "label": bool(row["label"])},
    ),
    "sst2": Task(
        name="sst2",
        folder="SST-2",
        benchmark="glue",
        candidates=(" terrible", " great"),
        template=_sst2_prompt,
        label=_bool_label("SST-2"),
        hf_name=("nyu-mll/glue", "sst2"),
        splits=("train", "dev"),
        reader=_read_glue_tsv,
    ),
    "boolq": Task(
        name="boolq",
        folder="BoolQ",
        benchmark="super_glue",
        candidates=(" No", " Yes"),
        template=_boolq_prompt,
        label=_bool_label("BoolQ"),
        hf_name=("aps/super_glue", "boolq"),
        from_hf=lambda row: {**row, "label": bool(row["label"])},
    ),
    "multirc": Task(
        name="multirc",
        folder="MultiRC",
        benchmark="super_glue",
        candidates=(" No", " Yes"),
        template=_multirc_prompt,
        label=_bool_label("MultiRC"),
        hf_name=("aps/super_glue", "multirc"),
        from_hf=_multirc_from_hf,
        reader=_read_multirc,
    ),
}


def get_task(name: str) -> Task:
    """The task called ``name`` (case-insensitive).

    Raises:
        ValueError: on an unknown task, listing the known ones.
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[key]


def _default_dirs(benchmark: str) -> list[Path]:
    here = Path(__file__).resolve().parents[3]  # the folder that holds this checkout
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
        ValueError: on a negative count, ``n_train < 1``, a seed outside ``[0, 2**32)``,
            an empty validation split, or ``n_dev`` that leaves no training example.
        FileNotFoundError, RuntimeError: as :func:`resolve_data_dir` and :func:`read_split`.
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
    train_pool = read_split(task, "train", root)
    val_pool = read_split(task, "val", root)
    if not val_pool:
        raise ValueError(f"the validation split of {task.name} is empty: nothing to test on ({root or 'HF'})")
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
