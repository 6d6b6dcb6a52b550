"""Tables, paired tests and the bar plot of a grid (:mod:`cola_opt.llm.grid`).

Everything here is computed from the grid's records alone, so a resumed grid gives the
same table as an uninterrupted one. A cell is the test metric, ``mean ± std`` over seeds
(sample standard deviation, ``ddof = 1``): accuracy in percent for classification tasks,
exact match in percent for ``completion``, loss in nats per token for ``text`` (lower is
better; :mod:`cola_opt.llm.metrics`). A grid's tasks share one metric
(:meth:`~cola_opt.llm.grid_plan.GridConfig.validate`).

Paired comparison of a COLA method against LoRA (the paper reports neither test):

- **paired t-test** across seeds (``scipy.stats.ttest_rel``, two-sided) on the test
  accuracies; seed ``s`` of both methods shares one data draw. With 3 seeds it has
  2 degrees of freedom and little power.
- **paired bootstrap** over test examples (Efron and Tibshirani 1993; Berg-Kirkpatrick
  et al. 2012): resample each seed's test examples with replacement, the same indices
  for both methods, and recompute the mean (over seeds, then tasks) accuracy
  difference. Reported: its 95% percentile interval, and the two-sided p-value of the
  shifted bootstrap, ``P(|d* - d| >= |d|)``. It measures test-sampling noise given the
  trained models, not seed-to-seed training noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..atomic import atomic_save_json, atomic_write
from .grid_plan import GridConfig, main_runs, search_runs
from .lm_objective import task_metric
from .methods import grid_method
from .metrics import Metric, get_metric, record_items, record_value

__all__ = ["TASK_NAMES", "blind_lr_choices", "cell_values", "mean_std", "method_label", "paired_tests", "plot_bars",
           "results_table", "tests_table", "write_report"]

TASK_NAMES = {"sst2": "SST-2", "rte": "RTE", "cb": "CB", "wic": "WiC", "wsc": "WSC", "boolq": "BoolQ",
              "multirc": "MultiRC"}
BOOTSTRAP_SAMPLES = 5000


def method_label(method: str, rank: int = 8) -> str:
    """Display name of a grid method (``"cola3"`` -> ``"COLA (3 links)"``); other names as they are."""
    try:
        return grid_method(method).label(rank)
    except ValueError:  # a row that is not a method ("majority class")
        return method


def _main(grid: GridConfig, records: list[dict], chosen: dict) -> dict[tuple[str, str, int], dict]:
    by_id = {r["run_id"]: r for r in records}
    out = {}
    for run in main_runs(grid, chosen):
        rec = by_id.get(run.run_id)
        if rec is not None and record_value(rec, "test") is not None:
            out[(run.task, run.method, run.seed)] = rec
    return out


def grid_metric(grid: GridConfig) -> Metric:
    """The test metric of the grid's tasks (:func:`cola_opt.llm.lm_objective.task_metric`)."""
    return get_metric(task_metric(grid.tasks[0]))


def cell_values(grid: GridConfig, records: list[dict], chosen: dict) -> dict:
    """Per-seed test values in display units (:func:`grid_metric`; accuracy in percent):
    ``{(task, method): {seed: value}}``, plus majority-class rows for tasks with labels."""
    main = _main(grid, records, chosen)
    metric = grid_metric(grid)
    cells: dict = {}
    for (task, method, seed), rec in main.items():
        cells.setdefault((task, method), {})[seed] = metric.shown(record_value(rec, "test"))
        if rec.get("majority") is not None:
            cells.setdefault((task, "majority class"), {})[seed] = 100 * rec["majority"]
    return cells


def mean_std(values: list[float], seeds: int | None = None, digits: int = 1) -> str:
    """``mean ± std`` with ``digits`` decimals; ``(n=k)`` is added when only ``k`` of ``seeds`` seeds are there."""
    if not values:
        return "—"
    mean = float(np.mean(values))
    text = f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {float(np.std(values, ddof=1)):.{digits}f}"
    return text + (f" (n={len(values)})" if seeds is not None and len(values) < seeds else "")


def _average(cells: dict, tasks, method) -> dict[int, float]:
    """Per seed, the mean over tasks; only seeds present for every task."""
    per_task = [cells.get((t, method), {}) for t in tasks]
    seeds = set.intersection(*(set(p) for p in per_task)) if per_task else set()
    return {s: float(np.mean([p[s] for p in per_task])) for s in sorted(seeds)}


def results_table(grid: GridConfig, records: list[dict], chosen: dict) -> str:
    """Markdown: one row per method (majority class first), one column per task, then the average.

    A cell missing seeds (a run still to come, or one whose loss became NaN) shows ``(n=k)``.
    """
    cells = cell_values(grid, records, chosen)
    digits = grid_metric(grid).digits
    head = [TASK_NAMES.get(t, t) for t in grid.tasks]
    rows = ["| method | " + " | ".join(head) + " | avg |", "|---" * (len(head) + 2) + "|"]
    majority = ("majority class",) if any(m == "majority class" for _, m in cells) else ()
    for m in (*majority, *grid.methods):
        vals = [mean_std(list(cells.get((t, m), {}).values()), grid.seeds, digits) for t in grid.tasks]
        avg = mean_std(list(_average(cells, grid.tasks, m).values()), grid.seeds, digits)
        rows.append(f"| {method_label(m, grid.base.rank)} | " + " | ".join(vals) + f" | {avg} |")
    return "\n".join(rows)


def _bootstrap(pairs: list[list[tuple[np.ndarray, np.ndarray]]], rng: np.random.Generator,
               scale: float = 100.0) -> np.ndarray:
    """Replicates of mean over tasks of (mean over seeds of value(a) - value(b)), times ``scale`` (100: points)."""
    reps = np.zeros(BOOTSTRAP_SAMPLES)
    chunk = 500
    for task_pairs in pairs:
        per_task = np.zeros(BOOTSTRAP_SAMPLES)
        for a, b in task_pairs:
            d = a.astype(np.float64) - b.astype(np.float64)
            for lo in range(0, BOOTSTRAP_SAMPLES, chunk):
                idx = rng.integers(0, len(d), size=(min(chunk, BOOTSTRAP_SAMPLES - lo), len(d)))
                per_task[lo : lo + len(idx)] += d[idx].mean(axis=1)
        reps += per_task / len(task_pairs)
    return scale * reps / len(pairs)


def paired_tests(grid: GridConfig, records: list[dict], chosen: dict, baseline: str = "lora") -> list[dict]:
    """COLA-type methods (``cola<N>``, ``stepdown-r<K>``) against ``baseline``, per task and on average.

    Returns:
        one dict per (method, task or ``"avg"``): ``diff`` (mean over seeds, in the
        metric's display units: points, or nats for a loss), ``metric``, ``wins`` / ``n``
        (seeds where the method beats the baseline: higher, or lower for a loss), ``t_p`` (paired
        t-test p-value, NaN when undefined), ``boot_lo`` / ``boot_hi`` (95% bootstrap
        interval of ``diff``) and ``boot_p``.
    """
    from scipy import stats

    main = _main(grid, records, chosen)
    metric = grid_metric(grid)
    rng = np.random.default_rng(0)
    out = []
    for m in grid.methods:
        if not grid_method(m).method.knots or baseline not in grid.methods:
            continue
        groups = [(t, [t]) for t in grid.tasks] + ([("avg", list(grid.tasks))] if len(grid.tasks) > 1 else [])
        for name, tasks in groups:
            seeds = [s for s in range(grid.seeds) if all((t, x, s) in main for t in tasks for x in (m, baseline))]
            if not seeds:
                continue
            acc = {x: np.array([metric.shown(np.mean([record_value(main[(t, x, s)], "test") for t in tasks]))
                                for s in seeds]) for x in (m, baseline)}
            diffs = acc[m] - acc[baseline]
            if len(seeds) > 1 and np.ptp(diffs) > 0:
                t_p = float(stats.ttest_rel(acc[m], acc[baseline]).pvalue)
            else:
                t_p = float("nan")
            pairs = [[(record_items(main[(t, m, s)]), record_items(main[(t, baseline, s)])) for s in seeds]
                     for t in tasks]
            reps = _bootstrap(pairs, rng, 100.0 if metric.percent else 1.0)
            d = float(diffs.mean())
            wins = diffs > 0 if metric.higher_is_better else diffs < 0
            out.append({
                "method": m, "task": name, "diff": d, "metric": metric.name, "wins": int(wins.sum()),
                "ties": int((diffs == 0).sum()),
                "n": len(seeds), "t_p": t_p, "boot_lo": float(np.percentile(reps, 2.5)),
                "boot_hi": float(np.percentile(reps, 97.5)),
                "boot_p": float(np.mean(np.abs(reps - d) >= abs(d))) if d != 0 else 1.0,
            })
    return out


def tests_table(tests: list[dict], rank: int = 8, extra: dict | None = None) -> str:
    """Markdown rendering of :func:`paired_tests`; ``extra`` maps further column headers to a function
    of a test's dict that gives the cell (the paper's stated gain, in ``experiments/paper_report.py``)."""
    metric = get_metric(tests[0].get("metric", "accuracy")) if tests else get_metric("accuracy")
    unit, d, extra = metric.unit, max(2, metric.digits), extra or {}
    rows = [f"| method vs LoRA | task | diff ({unit}) | wins / ties / seeds | paired t-test p | bootstrap 95% CI | "
            "bootstrap p |" + "".join(f" {h} |" for h in extra), "|---" * (7 + len(extra)) + "|"]
    for r in tests:
        t_p = "—" if math.isnan(r["t_p"]) else f"{r['t_p']:.3f}"
        rows.append(
            f"| {method_label(r['method'], rank)} | {TASK_NAMES.get(r['task'], r['task'])} | {r['diff']:+.{d}f} | "
            f"{r['wins']} / {r['ties']} / {r['n']} | {t_p} | [{r['boot_lo']:+.{d}f}, {r['boot_hi']:+.{d}f}] | "
            f"{r['boot_p']:.3f} |" + "".join(f" {cell(r)} |" for cell in extra.values())
        )
    return "\n".join(rows)


def plot_bars(grid: GridConfig, records: list[dict], chosen: dict, path: str | Path) -> None:
    """Bars of the mean test metric per task (and average) and method, error bars one std; majority as a dash."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = cell_values(grid, records, chosen)
    groups = [TASK_NAMES.get(t, t) for t in grid.tasks] + ["avg"]
    methods = list(grid.methods)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(groups), 4.2))
    for i, m in enumerate(methods):
        series = [list(cells.get((t, m), {}).values()) for t in grid.tasks]
        series.append(list(_average(cells, grid.tasks, m).values()))
        means = [np.mean(v) if v else np.nan for v in series]
        stds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in series]
        x = np.arange(len(groups)) - 0.4 + width * (i + 0.5)
        ax.bar(x, means, width, yerr=stds, capsize=2, label=method_label(m, grid.base.rank))
    major = [list(cells.get((t, "majority class"), {}).values()) for t in grid.tasks]
    major.append(list(_average(cells, grid.tasks, "majority class").values()))
    for j, v in enumerate(major):
        if v:
            ax.hlines(np.mean(v), j - 0.45, j + 0.45, colors="black", linestyles="dashed", linewidth=1)
    ax.set_xticks(np.arange(len(groups)), groups)
    metric = grid_metric(grid)
    ax.set_ylabel(f"test {_title(metric)}")
    if metric.percent:
        ax.set_ylim(0, 100)
    dashed = " (dashed: majority class)" if any(major) else ""
    ax.set_title(f"{grid.base.model}: mean ± std over {grid.seeds} seeds{dashed}")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def _title(metric: Metric) -> str:
    """``"accuracy (%)"``, ``"exact match (%)"``, ``"loss (nats per token, lower is better)"``."""
    name = metric.name.replace("_", " ")
    return f"{name} (%)" if metric.percent else f"{name} ({metric.unit} per token, lower is better)"


def lr_table(grid: GridConfig, chosen: dict) -> str:
    """Markdown: the learning rate of each (task, trained method)."""
    methods = grid.trained_methods
    rows = ["| method | " + " | ".join(TASK_NAMES.get(t, t) for t in grid.tasks) + " |",
            "|---" * (len(grid.tasks) + 1) + "|"]
    for m in methods:
        rows.append(f"| {method_label(m, grid.base.rank)} | " + " | ".join(f"{chosen[(t, m)]:g}" for t in grid.tasks) + " |")
    return "\n".join(rows)


def blind_lr_choices(grid: GridConfig, records: list[dict]) -> list[str]:
    """One line per (task, judging method) whose LR search learned nothing measurable on dev.

    A search is blind when every one of its seed-0 runs has a dev accuracy at or below
    the dev majority class (``dev_majority`` of the record: the dev accuracy of always
    answering the most frequent training label): the LR it chose is then a choice among
    runs that did not learn. Searches of a metric other than accuracy, and records
    without ``dev_majority`` (written before it was recorded), are not judged.
    """
    by_id = {r["run_id"]: r for r in records}
    lines = []
    searches: dict[tuple[str, str], list[dict]] = {}
    for run in search_runs(grid):
        searches.setdefault((run.task, run.method), []).append(by_id.get(run.run_id))
    for (task, method), recs in searches.items():
        if any(r is None or r.get("dev_accuracy") is None or r.get("dev_majority") is None for r in recs):
            continue
        best = max(r["dev_accuracy"] for r in recs)
        if best <= recs[0]["dev_majority"]:
            lines.append(f"- {TASK_NAMES.get(task, task)}, {method_label(method, grid.base.rank)}: every LR's dev "
                         f"accuracy (best {100 * best:.1f}%) is at or below the dev majority class "
                         f"({100 * recs[0]['dev_majority']:.1f}%); the LR was chosen among runs that learned nothing "
                         "measurable on dev.")
    return lines


def write_report(grid: GridConfig, records: list[dict], chosen: dict, seconds: float | None = None) -> str:
    """Write ``table.md`` (results, paired tests, LRs), ``plot.png`` and ``summary.json`` into ``grid.out``.

    Returns:
        the text of ``table.md``; it depends on the records only (no wall times).
    """
    out = Path(grid.out)
    tests = paired_tests(grid, records, chosen)
    text = "\n\n".join([
        f"Test {_title(grid_metric(grid))}, mean ± std over seeds 0..{grid.seeds - 1}; model {grid.base.model}.",
        results_table(grid, records, chosen),
        "Paired comparison with LoRA (same seed = same data draw):",
        tests_table(tests, grid.base.rank) if tests else "(no COLA-vs-LoRA pairs)",
        "Learning rate per task and method" + (" (chosen on dev at seed 0):" if any(len(grid.lrs_of(m)) > 1 for m in grid.methods) else ":"),
        lr_table(grid, chosen),
        *blind_lr_choices(grid, records),
    ]) + "\n"
    atomic_write(out / "table.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    plot_bars(grid, records, chosen, out / "plot.png")
    train_s = sum(r.get("train_seconds") or 0 for r in records)
    wall_s = sum(r.get("wall_seconds") or 0 for r in records)
    cpus = [r.get("train_cpu_seconds") for r in records]  # None: written before it was recorded, or a failed run
    cpu_s = None if None in cpus else sum(cpus)  # a partial sum would understate the cost without saying so
    summary = {"table": text, "tests": tests, "lrs": {f"{t}/{m}": lr for (t, m), lr in chosen.items()},
               "runs": len(records), "sum_train_seconds": train_s, "sum_train_cpu_seconds": cpu_s,
               "sum_run_wall_seconds": wall_s,
               "this_session_seconds": seconds}
    atomic_save_json(summary, out / "summary.json")
    return text
