"""The headline metrics of the objectives: which way is better, and how they are shown.

Everything that compares or prints a run's metric asks here: the LR choice of the grid
(:func:`cola_opt.llm.grid_plan.choose_lrs`), its tables and paired tests
(:mod:`cola_opt.llm.report`), ``compare``'s table and the CLI's last line.

===============  =========  ================  ==================================================
metric           better     shown as          objective
===============  =========  ================  ==================================================
``accuracy``     higher     percent           classification (built-in tasks, ``classification``)
``exact_match``  higher     percent           ``completion`` (greedy completion equals the reference)
``loss``         lower      nats per token    ``text`` (mean next-token cross-entropy)
``perplexity``   lower      ``exp(loss)``     ``text``, ``completion`` (reported, not a headline)
===============  =========  ================  ==================================================

A grid record (``runs.jsonl``) written before language-model tasks existed has no
``metric`` entry; it is a classification record (``accuracy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "METRICS",
    "Metric",
    "cell",
    "get_metric",
    "headline",
    "lm_record_fields",
    "record_items",
    "record_metric",
    "record_value",
    "result_line",
    "selection_key",
    "table_columns",
]


@dataclass(frozen=True)
class Metric:
    """A metric and its display.

    Attributes:
        name: the key in an evaluation's result (``"loss"``).
        higher_is_better: the direction (``False`` for a loss).
        percent: shown (and tabulated, and differenced) in percent of [0, 1] values.
        label: short column name (``"EM (%)"``).
        unit: unit of a shown value or difference (``"points"``, ``"nats"``).
        digits: decimals of a shown value.
    """

    name: str
    higher_is_better: bool
    percent: bool
    label: str
    unit: str
    digits: int

    def shown(self, value: float | None) -> float | None:
        """``value`` in display units (percent for a share); ``None`` stays ``None``."""
        return None if value is None else 100 * value if self.percent else value

    def text(self, value: float | None) -> str:
        """``"81.2"`` (percent), ``"2.346"`` (a loss), with :attr:`digits` decimals; ``"-"`` for ``None``."""
        return "-" if value is None else f"{self.shown(value):.{self.digits}f}"

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        return a > b if self.higher_is_better else a < b


METRICS = {m.name: m for m in (
    Metric("accuracy", True, True, "acc (%)", "points", 1),
    Metric("exact_match", True, True, "EM (%)", "points", 1),
    Metric("loss", False, False, "loss", "nats", 3),
    Metric("perplexity", False, False, "ppl", "perplexity", 2),
)}


def get_metric(name: str) -> Metric:
    """The :class:`Metric` called ``name``.

    Raises:
        ValueError: on an unknown name, listing the known ones.
    """
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    return METRICS[name]


def headline(evaluation: dict) -> Metric:
    """The headline metric of an evaluation result (a run's ``test`` or ``dev`` dict): accuracy, exact match or loss."""
    for name in ("accuracy", "exact_match"):
        if name in evaluation:
            return METRICS[name]
    return METRICS["loss"]


def record_metric(record: dict) -> Metric:
    """The headline metric of a grid record (``accuracy`` for a record without a ``metric`` entry)."""
    return get_metric(record.get("metric") or "accuracy")


def record_value(record: dict, split: str) -> float | None:
    """A grid record's headline value on ``split`` (``"dev"`` or ``"test"``) in [0, 1] or nats; ``None`` if missing."""
    if record.get("metric"):
        return record.get(f"{split}_metric")
    return record.get(f"{split}_accuracy")


def selection_key(record: dict) -> tuple[float, float]:
    """Sort key of a run by its dev results, larger is better: the headline metric, then (exact match only) the dev loss.

    The loss breaks ties of exact match, a coarse metric (0 at every LR early on);
    accuracy ties stay ties, as before language-model tasks. A run without a dev value
    sorts last.
    """
    metric = record_metric(record)
    value = record_value(record, "dev")
    first = -math.inf if value is None else value if metric.higher_is_better else -value
    loss = record.get("dev_loss") if metric.name == "exact_match" else None
    return first, -math.inf if loss is None else -loss


def lm_record_fields(result: dict) -> dict:
    """The metric entries of a grid record (``runs.jsonl``) for a language-model run's ``results.json`` dict.

    ``metric`` (the headline's name), ``dev_metric`` / ``test_metric`` (its values; dev
    ``None`` without dev examples), ``dev_loss`` / ``test_loss`` (nats per token),
    ``test_perplexity``, and ``test_items``: the per-item values of the test split that the
    paired bootstrap resamples (exact match 0/1 per pair, mean token loss per block).
    """
    metric = headline(result["test"])
    dev = result["dev"] if result["dev"] and result["dev"]["n"] else {}
    return {"metric": metric.name, "dev_metric": dev.get(metric.name), "test_metric": result["test"][metric.name],
            "dev_loss": dev.get("loss"), "test_loss": result["test"]["loss"],
            "test_perplexity": result["test"]["perplexity"], "test_items": result["test"]["predictions"]}


def record_items(record: dict):
    """The per-test-item values of a grid record, a float64 array: 0/1 correct (classification, from
    ``test_correct``), 0/1 exact match, or mean token loss (``test_items``)."""
    import numpy as np

    if record.get("metric"):
        return np.asarray(record["test_items"], dtype=np.float64)
    return (np.frombuffer(record["test_correct"].encode(), dtype=np.uint8) - 48).astype(np.float64)


def table_columns(metric: Metric) -> list[tuple[str, str, str]]:
    """``(header, split, key)`` of the metric columns of a run table: dev and test headline, and for a language
    model the test loss and perplexity."""
    if metric.name == "accuracy":
        return [("dev acc (%)", "dev", "accuracy"), ("test acc (%)", "test", "accuracy")]
    cols = [(f"dev {metric.label}", "dev", metric.name), (f"test {metric.label}", "test", metric.name)]
    if metric.name != "loss":
        cols.append(("test loss", "test", "loss"))
    return [*cols, ("test ppl", "test", "perplexity")]


def cell(result: dict, split: str, key: str) -> str:
    """One table cell: ``result[split][key]`` shown by its metric, ``"-"`` when the split or value is missing."""
    part = result.get(split) or {}
    return get_metric(key).text(part.get(key))


def result_line(cfg, result: dict) -> str:
    """The CLI's last line for a finished run: its test headline metric (and perplexity) and where ``results.json`` is."""
    test = result["test"]
    metric = headline(test)
    value = test.get(metric.name)
    shown = "-" if value is None else f"{metric.shown(value):.2f}%" if metric.percent else f"{value:.4f} nats per token"
    parts = [f"test {metric.name.replace('_', ' ')} {shown}"]
    if "f1a" in test:  # MultiRC's official metrics beside accuracy (cola_opt.llm.tasks.metrics)
        parts.append(f"F1a {test['f1a'] * 100:.2f}%, EM {test['exact_match'] * 100:.2f}%")
    if "perplexity" in test:
        if metric.name != "loss":
            parts.append(f"loss {cell(result, 'test', 'loss')}")
        parts.append(f"perplexity {cell(result, 'test', 'perplexity')}")
    return f"{cfg.method} on {cfg.task}: {', '.join(parts)} -> {result['results_path']}"
