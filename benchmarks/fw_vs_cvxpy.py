"""Frank-Wolfe family against cvxpy (SCS, CLARABEL) and accelerated projected gradient, on nuclear-ball completion.

Instance (DESIGN §6): ``n x n``, rank-5 truth ``U V^T / sqrt(5)``, 20% of entries
observed with N(0, 0.1^2) noise, ``tau = tau_ratio * ||M||_*``; ``L = 1``, ``D = 2 tau``.

Methods, all on the same instance and measured against the same certified ``f*_lo``:

* cvxpy + SCS (cvxpy's default SCS settings) and, for ``n <= --clarabel-max``, CLARABEL:
  solve time, peak RSS, and the relative gap of the returned point (certified);
* the FW family through the chain loop: vanilla FW with ``2/(t+2)``, FW with exact line
  search, away-step and pairwise FW (line search), and FW + factor refinement (``refine``,
  the variant we ship as best);
* accelerated projected gradient (:mod:`apg_baseline`: FISTA with restart, float64), with
  the projection by a full dense SVD (``apg_full``) or by a truncated SVD of the factored
  iterate plus the sparse gradient (``apg_truncated``).

Each iterative method reports its time to a relative gap ``(f - f*_lo) / f*_lo`` of 1e-3
and of 1e-6 (``--targets``). ``f*_lo`` is a *certified* lower bound: the largest
``f(x) - g(x)`` (FW gap) at feasible points, from a long ``apg_truncated`` run (float64, until
its certificate stops improving) and a refined FW run (both run first, as references) and
from the solvers' answers
(:func:`cola_opt.objectives.reference.certify`); reaching a target against it implies the
true relative gap is at most the target.

Large ``n`` (``--large``, default 1000, 2000, 5000): vanilla FW's time per iteration, and the
times to the targets of ``refine``, ``apg_truncated`` and (``n <= --full-svd-max``) ``apg_full``,
against the best certified bound any of them reached. SCS at large ``n`` only with ``--cvxpy-large``.

Every method runs in a fresh subprocess (``--worker``), so peak RSS (``ru_maxrss``) is its
own; ``baseline`` is the RSS after imports, before the instance is built. Times are
wall-clock seconds of the solve call (problem generation and imports excluded; the FW
solve is timed cold, its first call in the process, and ``--repeat`` more times warm), with
``--threads`` threads for torch and BLAS (OMP/OpenBLAS/MKL variables are set in each
worker: 2 BLAS threads on these 2 shared cores made a 200 x 200 SVD 18 times slower).
Results: a Markdown table on stdout and JSON in ``--out``.

Usage: ``python benchmarks/fw_vs_cvxpy.py [--sizes 20,50,100,200] [--large 1000,2000,5000]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

FW_METHODS = ("refine", "vanilla", "line_search", "away", "pairwise")
APG_METHODS = ("apg_full", "apg_truncated")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def instance(n: int, tau_ratio: float, seed: int):
    from cola_opt.objectives import problems

    return problems.matrix_completion(n, rank=5, fraction=0.2, noise=0.1, tau_ratio=tau_ratio, seed=seed)


# --------------------------------------------------------------------- worker side
def _solver_worker(spec, obj, tau, out):
    import cvxpy as cp

    from cola_opt.objectives.reference import certify

    X = cp.Variable(obj.shape)
    prob = cp.Problem(cp.Minimize(obj.cvxpy_objective(X)), [cp.normNuc(X) <= tau])
    t0 = time.perf_counter()
    prob.solve(solver=spec["method"])
    out.update(seconds=time.perf_counter() - t0, status=str(prob.status))
    if X.value is not None:
        lower, upper, _ = certify(obj, X.value, tau)
        out.update(f_lower_cert=lower, f=upper)


def _apg_worker(spec, obj, tau, out):
    from apg_baseline import apg

    reference = spec.get("f_lower") is None  # a reference run: until its certificate stalls (or 1e-10)
    res = apg(obj, tau, projection=spec["method"].removeprefix("apg_"), f_lower=spec.get("f_lower"),
              targets=tuple(spec["targets"]), max_iter=spec.get("max_iter", 10**6), time_limit=spec["cap"],
              certify_every=10 if reference else 0, stop_width=1e-10)
    out.update(iterations=res.iterations, wall=res.seconds, rank=int(res.s.size), f=res.f,
               hits={str(k): v for k, v in res.hits.items()}, best_lower=res.best_lower)


def _fw_worker(spec, obj, tau, W0, out):
    import numpy as np

    from cola_opt.fw.refine import FactorRefinement
    from cola_opt.fw.sets import NuclearBall
    from cola_opt.fw.solver import minimize
    from cola_opt.fw.step_sizes import ExactLineSearch, OpenLoop

    method, lo, targets = spec["method"], spec.get("f_lower"), sorted(spec["targets"], reverse=True)
    kw = {"vanilla": dict(step_size=OpenLoop()),
          "line_search": dict(step_size=ExactLineSearch()),
          "away": dict(step_size=ExactLineSearch(), variant="away"),
          "pairwise": dict(step_size=ExactLineSearch(), variant="pairwise"),
          "refine": dict(step_size=ExactLineSearch(), refine=FactorRefinement())}[method]
    walls = []
    for _ in range(1 + spec.get("repeat", 0)):
        state = dict(hits={}, best_lower=-math.inf)
        t0 = time.perf_counter()

        def callback(row, solver, state=state, t0=t0):
            state["best_lower"] = max(state["best_lower"], row.primal - row.fw_gap)
            ref = lo if lo is not None else state["best_lower"]
            for target in targets:
                if str(target) not in state["hits"] and (row.primal - ref) / abs(ref) <= target:
                    state["hits"][str(target)] = (time.perf_counter() - t0, row.iteration)
            if lo is not None and len(state["hits"]) == len(targets):
                return False
            if spec.get("stop_rel") is not None and \
                    (row.primal - state["best_lower"]) / abs(state["best_lower"]) <= spec["stop_rel"]:
                return False
            return time.perf_counter() - t0 < spec["cap"]

        res = minimize(obj, W0, constraint=NuclearBall(tau), max_iter=spec.get("max_iter", 10**7), tol=None,
                       callback=callback, record_rank="bound", **kw)
        walls.append(time.perf_counter() - t0)
    times = np.asarray(res.trace.time)
    out.update(iterations=res.nit, wall=walls[0], warm_walls=walls[1:], f=res.fun, fw_gap=res.fw_gap,
               rank=res.trace.rank[-1], best_lower=state["best_lower"], hits=state["hits"],
               per_iter=float(np.diff(times).mean()) if times.size > 1 else math.nan)


def worker(spec: dict) -> dict:
    """Run one method on one instance; return measurements (executed in a subprocess)."""
    import torch

    torch.set_num_threads(spec["threads"])
    warnings.filterwarnings("ignore")
    import cola_opt.fw.solver  # noqa: F401  (imports outside the timed region)

    if spec["method"] in ("SCS", "CLARABEL"):
        import cvxpy  # noqa: F401
    baseline = _rss_mb()
    pb = instance(spec["n"], spec["tau_ratio"], spec["seed"])
    out = dict(method=spec["method"], n=spec["n"], baseline_mb=baseline)
    if spec["method"] in ("SCS", "CLARABEL"):
        _solver_worker(spec, pb.objective, pb.tau, out)
    elif spec["method"] in APG_METHODS:
        _apg_worker(spec, pb.objective, pb.tau, out)
    else:
        _fw_worker(spec, pb.objective, pb.tau, pb.W0, out)
    out["peak_mb"] = _rss_mb()
    return out


def spawn(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    threads = str(spec["threads"])
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return dict(method=spec["method"], n=spec["n"], error=f"timeout after {timeout:.0f} s")
    if proc.returncode != 0:
        return dict(method=spec["method"], n=spec["n"], error=proc.stderr.strip().splitlines()[-1][:200])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------- driver side
def rel_gap(r: dict, lower: float) -> float:
    return (r["f"] - lower) / abs(lower) if "f" in r else math.nan


def fmt_hit(r: dict, target: float, lower: float) -> str:
    if "error" in r:
        return r["error"]
    if r["method"] in ("SCS", "CLARABEL"):
        return f"{r['seconds']:.3g} s" if rel_gap(r, lower) <= target else f"its answer {rel_gap(r, lower):.1e}"
    hit = r.get("hits", {}).get(str(target))
    if hit is not None:
        return f"{hit[0]:.3g} s ({hit[1]} its)"
    return f"not in {r.get('wall', 0):.0f} s ({rel_gap(r, lower):.1e})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="20,50,100,200")
    parser.add_argument("--large", default="1000,2000,5000")
    parser.add_argument("--methods", default=",".join(("SCS", "CLARABEL") + FW_METHODS + APG_METHODS),
                        help="subset of the small-n methods to run")
    parser.add_argument("--targets", default="1e-3,1e-6")
    parser.add_argument("--tau-ratio", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cap", type=float, default=60.0, help="seconds per iterative method and size")
    parser.add_argument("--ref-cap", type=float, default=60.0,
                        help="seconds for each reference run (the apg_truncated one gets --large-cap at large n)")
    parser.add_argument("--clarabel-max", type=int, default=50, help="largest n given to CLARABEL")
    parser.add_argument("--full-svd-max", type=int, default=2000, help="largest n given to apg_full")
    parser.add_argument("--large-iters", type=int, default=20, help="vanilla FW iterations timed at large n")
    parser.add_argument("--large-cap", type=float, default=1200.0, help="seconds per method at large n")
    parser.add_argument("--repeat", type=int, default=1, help="warm repeats of each FW solve (small n)")
    parser.add_argument("--cvxpy-large", action="store_true", help="also run SCS at the large sizes (slow)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/benchmark")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    large = [int(s) for s in args.large.split(",") if s]
    targets = [float(t) for t in args.targets.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    base = dict(tau_ratio=args.tau_ratio, seed=args.seed, threads=args.threads, targets=targets)
    results = []
    lines = ["| n | method | " + " | ".join(f"time to {t:g}" for t in targets) + " | peak RSS (baseline) | note |",
             "|---|---|" + "---|" * len(targets) + "---|---|"]

    def row(r, lower, note=""):
        peak = f"{r['peak_mb']:.0f} MB ({r['baseline_mb']:.0f})" if "peak_mb" in r else "-"
        lines.append(f"| {r['n']} | {r['method']} | " + " | ".join(fmt_hit(r, t, lower) for t in targets)
                     + f" | {peak} | {note} |")
        print(lines[-1], flush=True)
        r["f_lower_used"] = lower
        results.append(r)

    def references(n, apg_cap):
        """The certified f*_lo: a long apg_truncated run (until its certificate stalls) and a refined FW run."""
        refs = [spawn(dict(base, method="apg_truncated", n=n, cap=apg_cap), timeout=apg_cap + 600),
                spawn(dict(base, method="refine", n=n, cap=args.ref_cap, stop_rel=1e-6), timeout=args.ref_cap + 600)]
        for r in refs:
            print(f"<!-- reference {r['method']} n={n}: best certificate {r.get('best_lower', math.nan):.12g} after "
                  f"{r.get('iterations', '?')} iterations, {r.get('wall', math.nan):.1f} s -->", flush=True)
        return max(r.get("best_lower", -math.inf) for r in refs), refs

    print("\n".join(lines), flush=True)
    for n in sizes:
        lower, refs = references(n, args.ref_cap)
        solved = [spawn(dict(base, method=s, n=n, f_lower=lower), timeout=1800)
                  for s in ("SCS", "CLARABEL") if s in methods and (s == "SCS" or n <= args.clarabel_max)]
        lower = max([lower] + [r.get("f_lower_cert", -math.inf) for r in solved])
        for r in solved:
            row(r, lower, f"status {r.get('status', '?')}; its answer's rel. gap {rel_gap(r, lower):.1e}")
        for mth in [m for m in FW_METHODS + APG_METHODS if m in methods]:
            spec = dict(base, method=mth, n=n, f_lower=lower, cap=args.cap,
                        repeat=args.repeat if mth == "refine" else 0)
            r = spawn(spec, timeout=args.cap * (2 + spec["repeat"]) + 300)
            warm = r.get("warm_walls")
            row(r, lower, f"f*_lo = {lower:.10g}" + (f"; warm repeats {', '.join(f'{w:.3g} s' for w in warm)}"
                                                    if warm else ""))
    for n in large:
        r = spawn(dict(base, method="vanilla", n=n, cap=args.large_cap, max_iter=args.large_iters, f_lower=None,
                       targets=[]), timeout=args.large_cap + 600)
        r["method"] = "vanilla (per iteration)"
        note = f"{r.get('per_iter', math.nan):.3g} s per iteration over {r.get('iterations', '?')} iterations"
        row(r, math.nan, note)
        lower, refs = references(n, args.large_cap)
        runs = [("refine", {}), ("apg_truncated", {})] + ([("apg_full", {})] if n <= args.full_svd_max else [])
        for mth, extra in runs:
            r = spawn(dict(base, method=mth, n=n, f_lower=lower, cap=args.large_cap, **extra),
                      timeout=args.large_cap + 600)
            row(r, lower, f"f*_lo = {lower:.10g} (best certificate of the references)")
        if args.cvxpy_large:
            row(spawn(dict(base, method="SCS", n=n, f_lower=lower), timeout=7200), lower)
    (out / "results.json").write_text(json.dumps(dict(args=vars(args), results=results), indent=1))
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print(f"\nresults in {out}/results.json and {out}/table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
