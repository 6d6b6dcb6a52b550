"""Convergence study: LoRA, COLA, Frank-Wolfe and full-rank gradient descent on one problem.

Every method is a setting of the one chain loop (:func:`cola_opt.fw.solver.minimize`):

* FW, open loop ``2/(t+2)`` and exact line search, and FW + factor refinement
  (exact LMO, nuclear ball of radius ``tau``);
* COLA: chain lengths ``L`` (1 = LoRA) at a fixed budget of ``N`` inner Adam steps
  (``K = N / L`` per link), ranks 1, 2 and 4, knots with ``step_size = 1, shrink = 0``;
* full-rank gradient descent: the inexact oracle with ``r = min(m, n)``, one SGD step
  per link at ``lr = 1 / L``.

The problem is ``1/2 ||A W - Y||^2`` with a rank-8 signal plus noise, so the optimum
``A^+ Y`` has full rank: a single rank-``r`` link cannot get below the best rank-``r``
value (computed exactly, drawn as a dashed plateau), the chain can. ``tau`` is 1.2 times
the optimum's nuclear norm, so the optimum is feasible and ``f*`` is exact.

Outputs (``--out``, default ``runs/convergence``): ``primal_gap.png``, ``fw_gap.png``,
``wall_time.png``, ``chain_length.png``, ``traces.json`` (every trace row and COLA's inner
losses), one CSV per run under ``csv/``, and ``summary.json``.

Usage: ``python experiments/convergence.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from tqdm import tqdm

from cola_opt.atomic import atomic_save_json, atomic_write
from cola_opt.fw.bounds import fw_min_gap_bound, fw_primal_bound, nuclear_diameter
from cola_opt.fw.oracles import InexactOracle
from cola_opt.fw.refine import FactorRefinement
from cola_opt.fw.sets import NuclearBall, Unconstrained
from cola_opt.fw.solver import minimize
from cola_opt.fw.step_sizes import ExactLineSearch, OpenLoop
from cola_opt.objectives import problems


def _save_png(fig, path: Path) -> None:
    """``fig`` as a PNG at ``path``, atomically (a reader never sees a half-written figure)."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def best_rank_r_value(obj, r: int) -> float:
    """``min_{rank X <= r} 1/2 ||A X - Y||^2`` for full-column-rank ``A`` (Eckart-Young on ``Q^T Y``)."""
    Q, _ = np.linalg.qr(obj.A)
    QY = Q.T @ obj.Y
    s = np.linalg.svd(QY, compute_uv=False)
    return 0.5 * (float(np.sum((obj.Y - Q @ QY) ** 2)) + float(np.sum(s[r:] ** 2)))


def plan(quick: bool):
    budget = 400 if quick else 2000
    lengths = (1, 4, 16) if quick else (1, 4, 16, 64)
    ranks = (1, 2, 4)
    runs = [("FW open loop", "fw", dict(step_size=OpenLoop()), budget),
            ("FW line search", "fw", dict(step_size=ExactLineSearch()), budget),
            ("FW + refinement", "fw", dict(step_size=ExactLineSearch(), refine=FactorRefinement(20)), 60),
            ("full-rank GD", "gd", {}, budget)]
    for r in ranks:
        for L in lengths:
            label = f"LoRA r={r}" if L == 1 else f"COLA r={r} L={L}"
            runs.append((label, "cola", dict(rank=r, links=L, K=budget // L), budget))
    return budget, runs


def run_one(kind, kw, budget, pb, ball, lr):
    obj = pb.objective
    m, n = obj.shape
    if kind == "fw":
        return minimize(obj, pb.W0, constraint=ball, max_iter=budget, tol=None, record_rank="exact", **kw)
    if kind == "gd":
        oracle = InexactOracle(min(m, n), 1, optimizer="sgd", lr=1.0 / obj.smoothness)
        return minimize(obj, pb.W0, oracle=oracle, constraint=Unconstrained(), gap_set=ball, max_iter=budget,
                        tol=None, record_rank="exact")
    oracle = InexactOracle(kw["rank"], kw["K"], lr=lr, record_inner=True)
    return minimize(obj, pb.W0, oracle=oracle, constraint=Unconstrained(), gap_set=ball, max_iter=kw["links"],
                    tol=None, record_rank="exact")


def curves(kind, res, f_star):
    """(gradient evaluations, primal gap) for plotting: COLA's inner losses, else the trace."""
    if kind == "cola":
        y = np.asarray(res.inner_losses) - f_star
        return np.arange(1, y.size + 1), y
    # one gradient per link, plus one per accepted refinement step
    evals = np.concatenate([[1], 1 + np.cumsum(1 + np.asarray(res.trace.refine_steps[:-1]))])
    return evals, np.asarray(res.trace.primal) - f_star


def plot(out: Path, records, pb, f_star, plateaus, tau, budget):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L, D = pb.objective.smoothness, nuclear_diameter(tau)
    colors = {1: "tab:blue", 2: "tab:orange", 4: "tab:green"}
    styles = {1: ":", 4: "--", 16: "-.", 64: "-"}

    def style(rec):
        if rec["kind"] == "cola":
            return dict(color=colors[rec["rank"]], ls=styles.get(rec["links"], "-"), lw=1.3)
        return dict(color={"FW open loop": "black", "FW line search": "dimgray", "FW + refinement": "tab:purple",
                           "full-rank GD": "tab:red"}[rec["label"]], lw=2.0)

    fig, ax = plt.subplots(figsize=(9, 6))
    for rec in records:
        x, y = rec["x"], np.maximum(rec["y"], 1e-12)
        ax.loglog(x, y, label=rec["label"], **style(rec))
    t = np.arange(1, budget + 1)
    ax.loglog(t + 1, [fw_primal_bound(int(k), L, D) for k in t], color="black", lw=0.8, alpha=0.6,
              label="bound 2LD²/(t+2) (Jaggi Thm 1)")
    for r, v in plateaus.items():
        ax.axhline(v, color=colors[r], lw=0.8, ls=(0, (1, 3)), alpha=0.9)
        ax.text(budget, v * 1.15, f"best rank-{r} (LoRA plateau)", color=colors[r], fontsize=7, ha="right")
    ax.set_xlabel("gradient evaluations (FW/GD: links; COLA/LoRA: inner steps)")
    ax.set_ylabel("f - f*")
    ax.set_title(f"primal gap, {pb.name}, optimum of full rank")
    ax.set_ylim(1e-9, None)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save_png(fig, out / "primal_gap.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 6))
    for rec in records:
        it = np.asarray(rec["res"].trace.iteration)
        g = np.asarray(rec["res"].trace.fw_gap)
        if rec["kind"] == "cola":
            it = it * rec["K"]
        else:
            it = rec["x"] - 1
        ax.loglog(np.maximum(it, 1), np.maximum(g, 1e-12), marker="." if rec["kind"] == "cola" else None,
                  ms=3, label=rec["label"], **style(rec))
    ax.loglog(t[1:], [fw_min_gap_bound(int(k), L, D) for k in t[1:]], color="black", lw=0.8, alpha=0.6,
              label="bound (27/4) L D²/(K+2) on min gap (Jaggi Thm 2)")
    ax.set_xlabel("gradient evaluations")
    ax.set_ylabel(f"FW gap over the nuclear ball, tau = {tau:.1f}")
    ax.set_title("Frank-Wolfe gap (COLA/LoRA measured at knots)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save_png(fig, out / "fw_gap.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 6))
    for rec in records:
        tt = np.asarray(rec["res"].trace.time)
        y = np.asarray(rec["res"].trace.primal) - f_star
        ax.loglog(np.maximum(tt, 1e-4), np.maximum(y, 1e-12), label=rec["label"], **style(rec))
    ax.set_xlabel("solver wall time (s), 1 thread")
    ax.set_ylabel("f - f*")
    ax.set_title("primal gap against wall time (COLA/LoRA at knots)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save_png(fig, out / "wall_time.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    for r in colors:
        pts = sorted((rec["links"], rec["final_gap"]) for rec in records if rec["kind"] == "cola" and rec["rank"] == r)
        ax.loglog([p[0] for p in pts], [max(p[1], 1e-12) for p in pts], marker="o", color=colors[r], label=f"r = {r}")
        ax.axhline(plateaus[r], color=colors[r], lw=0.8, ls=":")
    ax.set_xlabel(f"chain length L (budget {budget} inner steps, K = {budget}/L)")
    ax.set_ylabel("final f - f*")
    ax.set_title("COLA: chain length at a fixed budget (L = 1 is LoRA)")
    ax.legend()
    fig.tight_layout()
    _save_png(fig, out / "chain_length.png")
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/convergence", help="output directory (created)")
    parser.add_argument("--quick", action="store_true", help="small budget and fewer chain lengths")
    parser.add_argument("--lr", type=float, default=0.03, help="Adam learning rate of the COLA/LoRA links")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    (out / "csv").mkdir(parents=True, exist_ok=True)

    pb = problems.least_squares(40, 30, p=80, rank=8, noise=0.5, seed=args.seed)
    obj = pb.objective
    X_star = obj.minimizer()
    f_star = obj.value(X_star)
    tau = 1.2 * float(np.linalg.svd(X_star, compute_uv=False).sum())
    ball = NuclearBall(tau)
    plateaus = {r: best_rank_r_value(obj, r) - f_star for r in (1, 2, 4)}
    budget, runs = plan(args.quick)
    records = []
    bar = tqdm(runs, desc="convergence", unit="run")
    for label, kind, kw, steps in bar:
        bar.set_postfix_str(label)
        t0 = time.perf_counter()
        res = run_one(kind, kw, steps, pb, ball, args.lr)
        x, y = curves(kind, res, f_star)
        rec = dict(label=label, kind=kind, res=res, x=x, y=y, seconds=time.perf_counter() - t0,
                   final_gap=float(min(y[-1], res.fun - f_star)), rank=kw.get("rank"), links=kw.get("links"),
                   K=kw.get("K"))
        records.append(rec)
        safe = label.replace(" ", "_").replace("=", "").replace("+", "plus").replace("/", "")
        res.trace.to_csv(out / "csv" / f"{safe}.csv")
    plot(out, records, pb, f_star, plateaus, tau, budget)

    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    dump = dict(problem=pb.name, info=pb.info, f_star=f_star, tau=tau, L=obj.smoothness, budget=budget,
                lora_plateaus=plateaus, runs=[dict(label=r["label"], kind=r["kind"], rank=r["rank"], links=r["links"],
                                                    K=r["K"], seconds=r["seconds"], final_gap=r["final_gap"],
                                                    trace=[{k: clean(v) for k, v in row.items()}
                                                           for row in r["res"].trace.to_records()],
                                                    inner_losses=list(map(float, r["res"].inner_losses)))
                                               for r in records])
    atomic_write(out / "traces.json", lambda tmp: Path(tmp).write_text(json.dumps(dump), encoding="utf-8"))
    summary = {r["label"]: dict(final_gap=r["final_gap"], seconds=round(r["seconds"], 3),
                                final_rank=r["res"].trace.rank[-1]) for r in records}
    atomic_save_json(dict(f_star=f_star, tau=tau, lora_plateaus=plateaus, runs=summary), out / "summary.json",
                     indent=1)
    width = max(len(k) for k in summary)
    print(f"f* = {f_star:.6g}; LoRA plateaus (best rank-r minus f*): "
          + ", ".join(f"r={r}: {v:.4g}" for r, v in plateaus.items()))
    for k, v in summary.items():
        print(f"{k:<{width}}  final f - f* = {v['final_gap']:.3e}  rank {v['final_rank']:>2}  {v['seconds']:.2f} s")
    print(f"figures and traces in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
