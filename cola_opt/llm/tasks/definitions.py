"""The seven tasks: prompt templates, verbalizers and label readers.

Each task turns a record of the official release into an :class:`Example`: a prompt
and the candidate answers (the verbalizer) appended to it, plus the gold index. A
causal LM classifies by scoring each candidate (:mod:`cola_opt.llm.scoring`).

Seven tasks: SST-2 (GLUE); RTE, CB, WiC, WSC, BoolQ and MultiRC (SuperGLUE). MultiRC is
scored per answer option: each (paragraph, question, answer) is one yes/no
:class:`Example`; training and dev examples are drawn by answer option, as MeZO does,
test examples by whole question (``Task.group``), so that its official metrics, F1a over
answer options and exact match per question (:mod:`.metrics`), are computed on whole
questions.

Templates are ours, written in the spirit of MeZO's (princeton-nlp/MeZO,
``large_models/templates.py``); they are listed in ``docs/tasks.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .metrics import multirc_metrics
from .readers import multirc_text, read_glue_tsv, read_multirc

__all__ = ["TASKS", "Example", "Task", "find_task", "get_task"]


@dataclass(frozen=True)
class Example:
    """One classification example for a causal LM.

    Attributes:
        prompt: the text before the answer.
        candidates: answer strings, each appended directly to ``prompt`` (they start
            with a space where a space is meant).
        label: index of the gold candidate.
        idx: the record's ``idx`` in the release (an int; for MultiRC
            ``{"paragraph", "question", "answer"}``), carried into the test predictions;
            not part of :meth:`~cola_opt.llm.tasks.Splits.fingerprint` (which hashes
            prompt, candidates and label) nor of equality.
    """

    prompt: str
    candidates: tuple[str, ...]
    label: int
    idx: Any = field(default=None, compare=False)


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
            has 250 records, and for WSC, whose 554 would leave 54 to train on after 500).
        group: record -> the unit the test split is drawn in (MultiRC: its question), or
            ``None`` to draw records one by one.
        metrics: ``(test examples, predictions) -> dict`` of the task's official metrics
            beside accuracy (MultiRC: F1a and exact match), or ``None``.
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
    group: Callable[[dict], Hashable] | None = None
    metrics: Callable[[list, list], dict] | None = None

    def example(self, record: dict) -> Example:
        """The :class:`Example` of one record.

        Raises:
            ValueError: if the record lacks a field the template needs, or its label is
                not one this task knows; the message names the task and the record's idx.
        """
        try:
            return Example(self.template(record), self.candidates, self.label(record), record.get("idx"))
        except (KeyError, TypeError) as e:
            where = record.get("idx", "?") if isinstance(record, dict) else "?"
            raise ValueError(f"{self.name} record idx={where} is malformed: missing or bad field {e}") from None


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
def _multirc_prompt(r: dict) -> str:
    return (
        f"{r['paragraph']}\nQuestion: {r['question']}\n"
        f'Is "{r["answer"]}" a correct answer to that question? Yes or No?\nAnswer:'
    )


def _multirc_from_hf(row: dict) -> dict:
    return {"paragraph": multirc_text(row["paragraph"]), "question": row["question"], "answer": row["answer"],
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
        max_dev=100,
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
        reader=read_glue_tsv,
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
        reader=read_multirc,
        group=lambda r: (r["idx"]["paragraph"], r["idx"]["question"]),
        metrics=multirc_metrics,
    ),
}


def find_task(name: str) -> Task | None:
    """The task called ``name`` (case-insensitive; ``-`` and ``_`` ignored), or ``None``."""
    return TASKS.get(str(name).lower().replace("-", "").replace("_", ""))


def get_task(name: str) -> Task:
    """The task called ``name`` (case-insensitive).

    Raises:
        ValueError: on an unknown task, listing the known ones.
    """
    task = find_task(name)
    if task is None:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return task
