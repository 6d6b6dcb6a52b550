"""C3: nonconvex Frank-Wolfe, ``min_{0<=t<=T} g_t <= max(2 h0, L D^2) / sqrt(T + 1)``.

Source: Lacoste-Julien (2016), "Convergence rate of Frank-Wolfe for non-convex
objectives", Theorem 1. Constants confirmed by re-deriving the proof (docs/theory.md,
C3) and against a published walk-through of it: ``C`` is any constant ``>= C_f``
(``C_f <= L D^2``), ``h0 = f(x_0) - min_{x in set} f(x)``; the step is exact line search
or ``min(g_t / C, 1)``.

Assumptions: ``f`` ``L``-smooth (not necessarily convex) on ``{W0 + X : ||X||_* <= tau}``,
``D = 2 tau``; ``W0 = 0`` on half the instances, random on the others. Our short step
``min(g_t / (L ||d_t||^2), 1)`` decreases the quadratic upper bound at least as much as
``min(g_t / (L D^2), 1)``, so the proof applies. ``min f`` is unknown for a nonconvex
``f``; ``h0`` is replaced by the upper bound ``f(x_0) - lower_bound(f)`` (0 for the Cauchy
loss; ``-mu/2 (||W0|| + tau)^2`` for the indefinite quadratic), which can only enlarge
the bound.

Also checked at every iterate: ``g_t >= 0`` (the FW gap of a feasible point is
nonnegative by definition), ``f >= lower_bound(f)``, feasibility, the reported gap, the
FW direction and the guaranteed decrease of the short step (:mod:`proofs_check.invariants`),
the step that the proof of Theorem 1 sums.
Instances: Cauchy-loss robust completion (short step, refinement) and an indefinite least
squares (short step, refinement, exact line search). Broken variants: ``wrong_step``
(``gamma = 1``), ``wrong_sign`` (the LMO maximizes: negative "gaps").
"""

from __future__ import annotations

import math

import numpy as np

from cola_opt.fw import bounds
from cola_opt.fw.refine import FactorRefinement
from cola_opt.fw.solver import ChainSolver
from cola_opt.fw.step_sizes import Constant, ExactLineSearch, ShortStep
from cola_opt.objectives import problems

from .common import Tracker, ball_for, check_broken, fw_quantities, run_links, with_start
from .invariants import fw_invariants

NAME = "C3"
CLAIM = "nonconvex min FW gap <= max(2h0, L D^2)/sqrt(T+1) (Lacoste-Julien 2016, Thm 1)"
BROKEN = ("wrong_step", "wrong_sign")
BASE = ("feasible", "f >= f*_lo", "gap = g_t")


def instances(quick: bool = False):
    rng = np.random.default_rng(3)
    out = []
    for seed in range(2 if quick else 24):
        m, n = (int(x) for x in rng.integers(6, 15, size=2))
        scale = (0.0, 0.7)[seed % 2]
        out += [with_start(problems.cauchy_completion(m, n, seed=seed, outliers=(0.1, 0.2)[seed % 2],
                                                      c=(0.5, 0.2, 1.0)[seed % 3]), scale, 900 + seed),
                with_start(problems.indefinite_least_squares(m, n, mu=(0.3, 0.6, 1.0)[seed % 3], seed=seed), scale,
                           1000 + seed)]
    return out


def variants(pb, broken):
    direct = BASE + ("direction", "decrease")
    if broken is not None:
        return [("short", dict(step_size=Constant(1.0) if broken == "wrong_step" else ShortStep()), direct)]
    out = [("short", dict(step_size=ShortStep()), direct),
           ("short+refine", dict(step_size=ShortStep(), refine=FactorRefinement(5)), BASE + ("decrease",))]
    if pb.objective.quadratic:
        out.append(("line search", dict(step_size=ExactLineSearch()), direct))
    return out


def run(broken: str | None = None, quick: bool = False, iters: int = 40):
    check_broken(broken, BROKEN)
    tr = Tracker(NAME, CLAIM, broken=broken)
    for pb in instances(quick):
        obj, W0 = pb.objective, pb.W0.astype(np.float64)
        L, D = obj.smoothness, bounds.nuclear_diameter(pb.tau)
        lower = obj.lower_bound(pb.tau, pb.W0)
        h0 = obj.value(pb.W0) - lower
        for label, kw, checks in variants(pb, broken):
            solver = ChainSolver(obj, pb.W0, constraint=ball_for(pb.tau, broken), record_rank="bound", **kw)
            it = run_links(solver, iters)
            qs = [fw_quantities(obj, W, W0, pb.tau) for W in it.W]
            tr.instances += 1
            where = f"{pb.name} {label}"
            fw_invariants(tr, qs, it.W, it.rows, tau=pb.tau, L=L, label=where, checks=checks, f_lower=lower)
            best = math.inf
            for t, (q, row) in enumerate(zip(qs, it.rows)):
                best = min(best, q.gap)
                tr.at_most(-row.fw_gap, 0.0, 1e-6 * (abs(row.primal) + 1.0), f"{where} t={t}", "g >= 0")
                tr.ratio(best, bounds.nonconvex_min_gap_bound(t, h0, L, D), f"{where} T={t}", check="bound")
    return tr.result()
