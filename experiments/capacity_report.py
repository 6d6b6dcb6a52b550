"""The capacity study's report: one table per workload, from the grid's records alone.

Per method, at the LR chosen on dev at seed 0: the test metric (mean ± std over seeds), its
paired difference from the baseline (LoRA r = 8) with the paired t-test across seeds and a
paired bootstrap over seeds and test items, the share of the gap between LoRA at the same
rank and full fine-tuning that it closes, trainable parameters, median step time, peak RSS
(``cost.json``, when measured), and ``rank(W - W0)``: the median over adapted matrices of the
numerical rank (singular values above 1% of the largest) and of the stable rank, at the end
and after each link. ``curves.png`` plots the dev metric against the optimizer step.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from cola_opt.llm.grid import read_records
from cola_opt.llm.metrics import record_items, record_metric, record_value


def main_records(out: Path) -> tuple[dict[str, list[dict]], dict[str, float]]:
    """``({method: [record per seed, in seed order]}, {method: chosen lr})`` of the study in ``out/grid``."""
    grid = out / "grid"
    lrs = {k.split("/", 1)[1]: v for k, v in json.loads((grid / "summary.json").read_text())["lrs"].items()}
    by: dict[str, list[dict]] = {}
    for r in read_records(grid / "runs.jsonl"):
        if r.get("error") is None and lrs.get(r["method"]) == r["lr"]:
            by.setdefault(r["method"], []).append(r)
    return {m: sorted(rs, key=lambda r: r["seed"]) for m, rs in by.items()}, lrs


def _rank_of(method: str) -> int | None:
    m = re.search(r"-r(\d+)$", method)
    return int(m.group(1)) if m else None


def _bootstrap(a: list[dict], b: list[dict], scale: float, reps: int = 2000) -> tuple[float, float]:
    """95% interval of the mean paired difference, resampling seeds and then test items within each seed."""
    rng = np.random.default_rng(0)
    pairs = [(record_items(x), record_items(y)) for x, y in zip(a, b)]
    out = np.empty(reps)
    for i in range(reps):
        seeds = rng.integers(0, len(pairs), len(pairs))
        diffs = []
        for s in seeds:
            x, y = pairs[s]
            idx = rng.integers(0, len(x), len(x))
            diffs.append(x[idx].mean() - y[idx].mean())
        out[i] = scale * np.mean(diffs)
    return float(np.percentile(out, 2.5)), float(np.percentile(out, 97.5))


def _vs_baseline(value: dict[str, np.ndarray], m: str, baseline: str, higher_is_better: bool) -> dict:
    """Paired against ``baseline`` over the seeds both have: mean difference, t-test p (nan when
    undefined), wins (seeds where ``m`` is better) and ``n``; ``{}`` for the baseline itself or without it."""
    from scipy import stats

    if m == baseline or baseline not in value:
        return {}
    n = min(len(value[m]), len(value[baseline]))
    a, b = value[m][:n], value[baseline][:n]
    d = a - b
    return {"diff": float(d.mean()), "n": n, "wins": int((d > 0).sum() if higher_is_better else (d < 0).sum()),
            "t_p": float(stats.ttest_rel(a, b).pvalue) if n > 1 and np.ptp(d) > 0 else float("nan")}


def _gap_closed(value: dict[str, np.ndarray], m: str) -> dict:
    """``(m - LoRA at m's rank) / (full - LoRA at m's rank)`` for a chain (COLA, ReLoRA), with that LoRA's name;
    ``{}`` where either run is missing."""
    r = _rank_of(m)
    lora_r = f"lora-r{r}"
    if not (m.startswith(("cola", "relora")) and r is not None and lora_r in value and "full" in value):
        return {}
    gap = value["full"].mean() - value[lora_r].mean()
    return {"gap_closed": float((value[m].mean() - value[lora_r].mean()) / gap) if gap else None,
            "vs_lora_same_rank": lora_r}


def method_rows(recs: dict[str, list[dict]], baseline: str, cost: dict) -> list[dict]:
    """One summary dict per method (see the module docstring)."""
    metric = record_metric(next(iter(recs.values()))[0])
    scale = 100.0 if metric.percent else 1.0
    value = {m: np.array([scale * record_value(r, "test") for r in rs]) for m, rs in recs.items()}
    rows = []
    for m, rs in recs.items():
        row = {"method": m, "seeds": len(rs), "mean": float(value[m].mean()), "std": float(value[m].std(ddof=1))
               if len(rs) > 1 else 0.0, "trainable": rs[0].get("trainable_parameters"),
               "step_s": float(np.median([r["step_seconds_median"] for r in rs if r.get("step_seconds_median")]))
               if any(r.get("step_seconds_median") for r in rs) else None,
               "rss_mb": (cost.get(m) or {}).get("peak_rss_mb"), "cost_step_s": (cost.get(m) or {}).get("step_seconds_median")}
        ranks = [r["update_rank"] for r in rs if r.get("update_rank")]
        if ranks:
            row["rank_final"] = float(np.median([u[-1]["numerical_rank_median"] for u in ranks]))
            row["stable_final"] = float(np.median([u[-1]["stable_rank_median"] for u in ranks]))
            row["rank_growth"] = [u["numerical_rank_median"] for u in ranks[0]]
        row.update(_vs_baseline(value, m, baseline, metric.higher_is_better))
        if "diff" in row:
            row["boot"] = _bootstrap(rs[:row["n"]], recs[baseline][:row["n"]], scale)
        row.update(_gap_closed(value, m))
        rows.append(row)
    return rows


def _fmt(x, digits=1):
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def table(rows: list[dict], metric_name: str, baseline: str, lrs: dict) -> str:
    head = (f"| method | LR | test {metric_name} (mean ± std) | Δ vs {baseline} | paired t p | bootstrap 95% CI | "
            "wins | gap to full closed | trainable params | step (s) | peak RSS (MB) | rank(W−W0) end | "
            "stable rank end | rank per link |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        boot = f"[{r['boot'][0]:+.1f}, {r['boot'][1]:+.1f}]" if "boot" in r else "-"
        growth = " → ".join(_fmt(g, 0) for g in r.get("rank_growth", [])) or "-"
        lines.append(
            f"| {r['method']} | {lrs.get(r['method'], '-'):g} | {r['mean']:.1f} ± {r['std']:.1f} | "
            f"{format(r['diff'], '+.1f') if 'diff' in r else '-'} | {_fmt(r.get('t_p'), 3)} | {boot} | "
            f"{r.get('wins', '-')}/{r['seeds']} | {_fmt(r.get('gap_closed') and 100 * r['gap_closed'], 0)}"
            f"{'%' if r.get('gap_closed') is not None else ''} | {r['trainable'] or '-':,} | "
            f"{_fmt(r['step_s'], 2)} | {_fmt(r['rss_mb'], 0)} | {_fmt(r.get('rank_final'), 0)} | "
            f"{_fmt(r.get('stable_final'), 2)} | {growth} |")
    return "\n".join(lines)


def loss_table(recs: dict[str, list[dict]], baseline: str) -> tuple[str, list[dict]]:
    """Test loss (nats per completion token) per method, for a workload scored by exact match.

    Exact match is all or nothing per key; where most methods sit near 0% it cannot order
    them, the mean token loss on the same test items can. Columns: mean ± std over seeds,
    the paired difference from ``baseline`` (negative = lower loss) with its t-test across
    seeds, wins (seeds with a lower loss), and the share of the LoRA-same-rank -> full gap
    in loss closed (the same formula as the metric's).
    """
    loss = {m: np.array([r["test_loss"] for r in rs]) for m, rs in recs.items() if all("test_loss" in r for r in rs)}
    lines = [f"| method | test loss (mean ± std) | Δ vs {baseline} | paired t p | wins | gap to full closed |",
             "|---|---|---|---|---|---|"]
    rows = []
    for m, v in loss.items():
        row = {"method": m, "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
               **_vs_baseline(loss, m, baseline, higher_is_better=False), **_gap_closed(loss, m)}
        rows.append(row)
        gap = row.get("gap_closed")
        lines.append(f"| {m} | {row['mean']:.3f} ± {row['std']:.3f} | "
                     f"{format(row['diff'], '+.3f') if 'diff' in row else '-'} | {_fmt(row.get('t_p'), 3)} | "
                     f"{str(row['wins']) + '/' + str(row['n']) if 'wins' in row else '-'} | "
                     f"{'-' if gap is None else format(100 * gap, '.0f') + '%'} |")
    return "\n".join(lines), rows


def plot_curves(recs: dict[str, list[dict]], metric_name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for m, rs in recs.items():
        curves = [np.array(r["dev_curve"], dtype=float) for r in rs if r.get("dev_curve")]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        steps = curves[0][:n, 0]
        vals = np.mean([c[:n, 1] for c in curves], axis=0)
        ax.plot(steps, 100 * vals if metric_name != "loss" else vals, label=m, lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"dev {metric_name}" + (" (%)" if metric_name != "loss" else " (nats per token)"))
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_capacity_report(out: Path, baseline: str = "lora-r8") -> str:
    """Write ``table.md``, ``curves.png`` and ``summary.json`` into ``out``; return the table."""
    recs, lrs = main_records(out)
    if not recs:
        return "(no finished runs yet)"
    cost = json.loads((out / "cost.json").read_text()) if (out / "cost.json").is_file() else {}
    metric = record_metric(next(iter(recs.values()))[0])
    rows = method_rows(recs, baseline, cost)
    text = table(rows, metric.name.replace("_", " "), baseline, lrs) + "\n"
    loss_rows = []
    if metric.name != "loss":
        losses, loss_rows = loss_table(recs, baseline)
        text += "\nThe same runs, test loss (nats per completion token; lower is better):\n\n" + losses + "\n"
    (out / "table.md").write_text(text)
    plot_curves(recs, metric.name.replace("_", " "), out / "curves.png")
    (out / "summary.json").write_text(json.dumps({"rows": rows, "loss_rows": loss_rows, "lrs": lrs}, indent=1) + "\n")
    return text
