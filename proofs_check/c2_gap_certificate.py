"""C2: the FW gap certifies the primal gap, and its minimum decays as ``27/4 L D^2 / (K+2)``.

Claims (convex ``f``):

(a) ``g(x) = max_S <grad f(x), x - S> >= f(x) - f*`` at every feasible ``x`` (convexity:
    ``f* >= f(x) + <grad f(x), x* - x> >= f(x) - g(x)``; Jaggi 2013, Section 2);
(b) ``min_{1 <= k <= K} g(x_k) <= 2 beta C_f / (K + 2)`` with ``beta = 27/8`` for ``K >= 2``
    (Jaggi 2013, Theorem 2, verified against a formal statement of it), ``C_f <= L D^2``.

Source: Jaggi (2013), "Revisiting Frank-Wolfe", Section 2 (duality gap) and Theorem 2;
the constant ``beta = 27/8`` was checked against a formalised statement of Theorem 2.

Assumptions: as C1 (convex, ``L``-smooth, nuclear ball, ``D = 2 tau``, ``C_f <= L D^2``). (a) is checked for every variant (vanilla, line search, away-step,
pairwise, refinement), since it holds at any feasible point; (b) for the open-loop and
line-search steps and for the refinement (its one-step inequality is that of the FW step).

Check: (a) ``f(x_t) - f*_upper <= g_t`` at every iterate (ratio ``(f - f*) / g``; a
nonpositive gap below the primal gap counts as an infinite ratio), with a float slack of
``1e-6 |f|``; (b) ratio ``min_{k<=K} g_k / bound(K)`` at every ``K >= 2``.
Broken variant: ``wrong_sign`` (the LMO maximizes, so the "gap" is the wrong sign).
"""

from __future__ import annotations

import math

from cola_opt.fw.bounds import fw_min_gap_bound, nuclear_diameter
from cola_opt.fw.refine import FactorRefinement
from cola_opt.fw.solver import minimize
from cola_opt.fw.step_sizes import Backtracking, ExactLineSearch, OpenLoop
from cola_opt.objectives import problems

from .common import Tracker, ball_for, check_broken, fstar_bounds

NAME = "C2"
CLAIM = "FW gap >= f - f*; min gap <= 27/4 L D^2/(K+2) (Jaggi 2013, Thm 2)"
BROKEN = ("wrong_sign",)


def instances(quick: bool = False):
    out = [problems.matrix_completion(12, 10, rank=2, fraction=0.5, noise=0.05, tau_ratio=0.7, seed=3),
           problems.least_squares(10, 8, rank=2, tau_ratio=0.5, seed=4),
           problems.multi_response_logistic(9, 5, tau_ratio=0.5, seed=5)]
    if not quick:
        out += [problems.matrix_sensing(7, 6, rank=2, seed=6), problems.matrix_completion(20, rank=3, seed=7),
                problems.least_squares(16, 12, rank=3, tau_ratio=2.0, seed=8),
                problems.multi_response_logistic(15, 8, tau_ratio=0.3, seed=9),
                problems.matrix_completion(18, 14, rank=2, fraction=0.3, noise=0.2, tau_ratio=0.5, seed=10)]
    return out


def run(broken: str | None = None, quick: bool = False, iters: int = 120):
    check_broken(broken, BROKEN)
    tr = Tracker(NAME, CLAIM, broken=broken)
    for pb in instances(quick):
        lower, upper = fstar_bounds(pb)
        L, D = pb.objective.smoothness, nuclear_diameter(pb.tau)
        ball = ball_for(pb.tau, broken)
        search = ExactLineSearch() if pb.objective.quadratic else Backtracking()
        variants = [("open", dict(step_size=OpenLoop()), True)]
        if broken is None:
            variants += [("search", dict(step_size=search), pb.objective.quadratic),
                         ("away", dict(step_size=search, variant="away"), False),
                         ("pairwise", dict(step_size=search, variant="pairwise"), False),
                         ("refine", dict(step_size=OpenLoop(), refine=FactorRefinement(20)), True)]
        for label, kw, rate in variants:
            res = minimize(pb.objective, pb.W0, constraint=ball, max_iter=iters, record_rank="bound", tol=None, **kw)
            tr.instances += 1
            best = math.inf
            for row in res.trace.rows:
                g = row.fw_gap
                tr.at_most(row.primal - upper, g, abs(row.primal), f"{pb.name} {label} t={row.iteration} (a)")
                if row.iteration >= 1:
                    best = min(best, g)
                if rate and row.iteration >= 2:
                    tr.ratio(best, fw_min_gap_bound(row.iteration, L, D), f"{pb.name} {label} K={row.iteration} (b)")
    return tr.result()
