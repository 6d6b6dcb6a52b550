"""Official metrics of a task beside accuracy: MultiRC's F1a and exact match.

MultiRC (Khashabi et al. 2018) is scored by SuperGLUE (Wang et al. 2019, Table 1) with two
numbers, as in its reference implementation (jiant's ``MultiRCTask``):

- **F1a**: the binary F1 of "this answer option is correct" over every answer option of
  the split, ``2 P R / (P + R)`` with precision ``P`` and recall ``R`` of the options
  predicted correct (0 when no option is predicted or labelled correct);
- **EM**: exact match per question: the share of questions all of whose answer options
  are classified right.

Both need whole questions, which is why MultiRC's test split is drawn by question
(:func:`cola_opt.llm.tasks.sample_splits`).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["multirc_metrics", "task_metrics"]


def multirc_metrics(examples: Sequence, predictions: Sequence[int]) -> dict:
    """F1a over answer options and exact match per question, in [0, 1].

    Args:
        examples: MultiRC :class:`~cola_opt.llm.tasks.Example` s (candidates ``" No"``,
            ``" Yes"``; label 1 = a correct answer), each with its release ``idx``
            (``{"paragraph", "question", "answer"}``).
        predictions: the predicted candidate index of each example, in order.

    Returns:
        ``{"f1a": float, "exact_match": float, "questions": int}``.

    Raises:
        ValueError: if the lengths differ, or an example has no question in its ``idx``.
    """
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    tp = sum(1 for e, p in zip(examples, predictions) if p == 1 and e.label == 1)
    predicted, gold = sum(1 for p in predictions if p == 1), sum(1 for e in examples if e.label == 1)
    f1a = 2 * tp / (predicted + gold) if predicted + gold else 0.0  # = 2PR / (P + R)
    right: dict[tuple, bool] = {}
    for e, p in zip(examples, predictions):
        if not isinstance(e.idx, dict) or "question" not in e.idx:
            raise ValueError(f"MultiRC example idx {e.idx!r} names no question; exact match needs it")
        key = (e.idx.get("paragraph"), e.idx["question"])
        right[key] = right.get(key, True) and p == e.label
    em = sum(right.values()) / len(right) if right else 0.0
    return {"f1a": f1a, "exact_match": em, "questions": len(right)}


def task_metrics(task, examples: Sequence, predictions: Sequence[int]) -> dict:
    """The task's official metrics beside accuracy (``task.metrics``), or ``{}`` if it has none."""
    metrics = getattr(task, "metrics", None)
    return metrics(examples, predictions) if metrics is not None and examples else {}
