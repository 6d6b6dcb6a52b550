"""Tables, paired tests and the bar plot of a grid (:mod:`cola_opt.llm.grid`).

Everything here is computed from the grid's records alone, so a resumed grid gives the
same table as an uninterrupted one. Accuracies are test accuracies in percent; a cell
is ``mean ± std`` over seeds (sample standard deviation, ``ddof = 1``).

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
from .grid_plan import GridConfig, main_runs
from .methods import grid_method

__all__ = ["TASK_NAMES", "cell_values", "method_label", "paired_tests", "plot_bars", "results_table", "write_report"]

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
        if rec is not None and rec.get("test_accuracy") is not None:
            out[(run.task, run.method, run.seed)] = rec
    return out


def cell_values(grid: GridConfig, records: list[dict], chosen: dict) -> dict:
    """Per-seed test accuracies (percent): ``{(task, method): {seed: acc}}``, plus majority-class rows."""
    main = _main(grid, records, chosen)
    cells: dict = {}
    for (task, method, seed), rec in main.items():
        cells.setdefault((task, method), {})[seed] = 100 * rec["test_accuracy"]
        cells.setdefault((task, "majority class"), {})[seed] = 100 * rec["majority"]
    return cells


def _fmt(values: list[float], seeds: int | None = None) -> str:
    """``mean ± std``; ``(n=k)`` is added when only ``k`` of ``seeds`` seeds are there."""
    if not values:
        return "—"
    mean = float(np.mean(values))
    text = f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {float(np.std(values, ddof=1)):.1f}"
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
    head = [TASK_NAMES.get(t, t) for t in grid.tasks]
    rows = ["| method | " + " | ".join(head) + " | avg |", "|---" * (len(head) + 2) + "|"]
    for m in ("majority class", *grid.methods):
        vals = [_fmt(list(cells.get((t, m), {}).values()), grid.seeds) for t in grid.tasks]
        avg = _fmt(list(_average(cells, grid.tasks, m).values()), grid.seeds)
        rows.append(f"| {method_label(m, grid.base.rank)} | " + " | ".join(vals) + f" | {avg} |")
    return "\n".join(rows)


def _bootstrap(pairs: list[list[tuple[np.ndarray, np.ndarray]]], rng: np.random.Generator) -> np.ndarray:
    """Replicates of mean over tasks of (mean over seeds of acc(a) - acc(b)), in points."""
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
    return 100 * reps / len(pairs)


def paired_tests(grid: GridConfig, records: list[dict], chosen: dict, baseline: str = "lora") -> list[dict]:
    """COLA-type methods (``cola<N>``, ``stepdown-r<K>``) against ``baseline``, per task and on average.

    Returns:
        one dict per (method, task or ``"avg"``): ``diff`` (mean over seeds, points),
        ``wins`` / ``n`` (seeds where the method beats the baseline), ``t_p`` (paired
        t-test p-value, NaN when undefined), ``boot_lo`` / ``boot_hi`` (95% bootstrap
        interval of ``diff``) and ``boot_p``.
    """
    from scipy import stats

    main = _main(grid, records, chosen)
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
            acc = {x: np.array([np.mean([main[(t, x, s)]["test_accuracy"] for t in tasks]) for s in seeds]) * 100
                   for x in (m, baseline)}
            diffs = acc[m] - acc[baseline]
            if len(seeds) > 1 and np.ptp(diffs) > 0:
                t_p = float(stats.ttest_rel(acc[m], acc[baseline]).pvalue)
            else:
                t_p = float("nan")
            vec = lambda t, x, s: np.frombuffer(main[(t, x, s)]["test_correct"].encode(), dtype=np.uint8) - 48
            pairs = [[(vec(t, m, s), vec(t, baseline, s)) for s in seeds] for t in tasks]
            reps = _bootstrap(pairs, rng)
            d = float(diffs.mean())
            out.append({
                "method": m, "task": name, "diff": d, "wins": int((diffs > 0).sum()), "ties": int((diffs == 0).sum()),
                "n": len(seeds), "t_p": t_p, "boot_lo": float(np.percentile(reps, 2.5)),
                "boot_hi": float(np.percentile(reps, 97.5)),
                "boot_p": float(np.mean(np.abs(reps - d) >= abs(d))) if d != 0 else 1.0,
            })
    return out


def tests_table(tests: list[dict], rank: int = 8) -> str:
    """Markdown rendering of :func:`paired_tests`."""
    rows = ["| method vs LoRA | task | diff (points) | wins / ties / seeds | paired t-test p | bootstrap 95% CI | "
            "bootstrap p |", "|---|---|---|---|---|---|---|"]
    for r in tests:
        t_p = "—" if math.isnan(r["t_p"]) else f"{r['t_p']:.3f}"
        rows.append(
            f"| {method_label(r['method'], rank)} | {TASK_NAMES.get(r['task'], r['task'])} | {r['diff']:+.2f} | "
            f"{r['wins']} / {r['ties']} / {r['n']} | {t_p} | [{r['boot_lo']:+.2f}, {r['boot_hi']:+.2f}] | "
            f"{r['boot_p']:.3f} |"
        )
    return "\n".join(rows)


def plot_bars(grid: GridConfig, records: list[dict], chosen: dict, path: str | Path) -> None:
    """Bars of mean test accuracy per task (and average) and method, error bars one std; majority as a dash."""
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
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{grid.base.model}: mean ± std over {grid.seeds} seeds (dashed: majority class)")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def lr_table(grid: GridConfig, chosen: dict) -> str:
    """Markdown: the learning rate of each (task, trained method)."""
    methods = grid.trained_methods
    rows = ["| method | " + " | ".join(TASK_NAMES.get(t, t) for t in grid.tasks) + " |",
            "|---" * (len(grid.tasks) + 1) + "|"]
    for m in methods:
        rows.append(f"| {method_label(m, grid.base.rank)} | " + " | ".join(f"{chosen[(t, m)]:g}" for t in grid.tasks) + " |")
    return "\n".join(rows)


def write_report(grid: GridConfig, records: list[dict], chosen: dict, seconds: float | None = None) -> str:
    """Write ``table.md`` (results, paired tests, LRs), ``plot.png`` and ``summary.json`` into ``grid.out``.

    Returns:
        the text of ``table.md``; it depends on the records only (no wall times).
    """
    out = Path(grid.out)
    tests = paired_tests(grid, records, chosen)
    text = "\n\n".join([
        f"Test accuracy (%), mean ± std over seeds 0..{grid.seeds - 1}; model {grid.base.model}.",
        results_table(grid, records, chosen),
        "Paired comparison with LoRA (same seed = same data draw):",
        tests_table(tests, grid.base.rank) if tests else "(no COLA-vs-LoRA pairs)",
        "Learning rate per task and method" + (" (chosen on dev at seed 0):" if len(grid.lrs) > 1 else ":"),
        lr_table(grid, chosen),
    ]) + "\n"
    atomic_write(out / "table.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    plot_bars(grid, records, chosen, out / "plot.png")
    train_s = sum(r.get("train_seconds") or 0 for r in records)
    wall_s = sum(r.get("wall_seconds") or 0 for r in records)
    summary = {"table": text, "tests": tests, "lrs": {f"{t}/{m}": lr for (t, m), lr in chosen.items()},
               "runs": len(records), "sum_train_seconds": train_s, "sum_run_wall_seconds": wall_s,
               "this_session_seconds": seconds}
    atomic_save_json(summary, out / "summary.json")
    return text
