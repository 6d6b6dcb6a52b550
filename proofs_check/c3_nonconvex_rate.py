"""C3: nonconvex Frank-Wolfe, ``min_{0<=t<=T} g_t <= max(2 h0, L D^2) / sqrt(T + 1)``.

Source: Lacoste-Julien (2016), "Convergence rate of Frank-Wolfe for non-convex
objectives", Theorem 1. Constants confirmed by re-deriving the proof (docs/theory.md,
C3) and against a published walk-through of it: ``C`` is any constant ``>= C_f``
(``C_f <= L D^2``), ``h0 = f(x_0) - min_{x in set} f(x)``; the step is exact line search
or ``min(g_t / C, 1)``.

Assumptions: ``f`` ``L``-smooth (not necessarily convex) on the nuclear ball of radius
``tau``, ``D = 2 tau``. Our short step ``min(g_t / (L ||d_t||^2), 1)`` decreases the
quadratic upper bound at least as much as ``min(g_t / (L D^2), 1)``, so the proof applies.
``min f`` is unknown for a nonconvex ``f``; ``h0`` is replaced by the upper bound
``f(x_0) - lower_bound(f)`` (0 for the Cauchy loss; ``-mu/2 (||W0|| + tau)^2`` for the
indefinite quadratic), which can only enlarge the bound.

Also checked: ``g_t >= 0`` (the FW gap of a feasible point is nonnegative by definition).
Instances: Cauchy-loss robust completion (short step, refinement) and an indefinite least
squares (short step, exact line search). Broken variants: ``wrong_step`` (``gamma = 1``),
``wrong_sign`` (the LMO maximizes: negative "gaps").
"""

from __future__ import annotations

import math

from cola_opt.fw.bounds import nonconvex_min_gap_bound, nuclear_diameter
from cola_opt.fw.refine import FactorRefinement
from cola_opt.fw.solver import minimize
from cola_opt.fw.step_sizes import Constant, ExactLineSearch, ShortStep
from cola_opt.objectives import problems

from .common import Tracker, ball_for, check_broken

NAME = "C3"
CLAIM = "nonconvex min FW gap <= max(2h0, L D^2)/sqrt(T+1) (Lacoste-Julien 2016, Thm 1)"
BROKEN = ("wrong_step", "wrong_sign")


def instances(quick: bool = False):
    out = [problems.cauchy_completion(14, 12, seed=1), problems.indefinite_least_squares(10, 8, mu=0.6, seed=2)]
    if not quick:
        out += [problems.cauchy_completion(20, seed=3, outliers=0.2), problems.indefinite_least_squares(14, 6, mu=1.0, seed=4),
                problems.cauchy_completion(16, 10, seed=5, c=0.2), problems.indefinite_least_squares(9, 12, mu=0.3, seed=6)]
    return out


def run(broken: str | None = None, quick: bool = False, iters: int = 200):
    check_broken(broken, BROKEN)
    tr = Tracker(NAME, CLAIM, broken=broken)
    for pb in instances(quick):
        obj = pb.objective
        L, D = obj.smoothness, nuclear_diameter(pb.tau)
        h0 = obj.value(pb.W0) - obj.lower_bound(pb.tau, pb.W0)
        ball = ball_for(pb.tau, broken)
        variants = [("short", dict(step_size=Constant(1.0) if broken == "wrong_step" else ShortStep()))]
        if broken is None:
            variants.append(("short+refine", dict(step_size=ShortStep(), refine=FactorRefinement(10))))
            if obj.quadratic:
                variants.append(("line search", dict(step_size=ExactLineSearch())))
        for label, kw in variants:
            res = minimize(obj, pb.W0, constraint=ball, max_iter=iters, record_rank="bound", tol=None, **kw)
            tr.instances += 1
            best = math.inf
            for row in res.trace.rows:
                best = min(best, row.fw_gap)
                tr.at_most(-row.fw_gap, 0.0, abs(row.primal) + 1.0, f"{pb.name} {label} t={row.iteration} g>=0")
                tr.ratio(best, nonconvex_min_gap_bound(row.iteration, h0, L, D), f"{pb.name} {label} T={row.iteration}")
    return tr.result()
