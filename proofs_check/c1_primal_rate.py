"""C1: convex primal gap of Frank-Wolfe, ``f(x_t) - f* <= 2 L D^2 / (t + 2)`` for ``t >= 1``.

Source: Jaggi (2013), "Revisiting Frank-Wolfe", Theorem 1, with the curvature constant
bounded by ``C_f <= L D^2`` (Lemma 7).

Assumptions: ``f`` convex and ``L``-smooth in the Frobenius norm; the set is the nuclear
ball of radius ``tau`` (Frobenius diameter ``D = 2 tau``); ``x_0 = 0``; the step
``gamma_t = 2/(t+2)``, or any rule whose ``x_{t+1}`` is no worse than that step (exact line
search; the factor refinement, which only decreases ``f`` after the FW step).

Constants: ``L`` from the objective (1 for completion; ``||A||^2`` for least squares and
sensing; ``||Z||^2 / (4N)`` for logistic), ``D = 2 tau``.

Check: ``f*`` is bracketed by cvxpy plus a Frank-Wolfe-gap certificate; the observed gap
uses the *upper* end (a feasible value), so a reported violation is a definite one.
Instances: completion, least squares, sensing and logistic, shapes 6..20 (6 seeds), up to 3 variants.
Broken variants: ``wrong_step`` (constant ``gamma = 1``), ``wrong_sign`` (LMO maximizes).
"""

from __future__ import annotations

import numpy as np

from cola_opt.fw.bounds import fw_primal_bound, nuclear_diameter
from cola_opt.fw.refine import FactorRefinement
from cola_opt.fw.solver import minimize
from cola_opt.fw.step_sizes import Constant, ExactLineSearch, OpenLoop
from cola_opt.objectives import problems

from .common import Tracker, ball_for, check_broken, fstar_bounds

NAME = "C1"
CLAIM = "convex primal gap <= 2 L D^2/(t+2), open-loop steps (Jaggi 2013, Thm 1)"
BROKEN = ("wrong_step", "wrong_sign")


def instances(quick: bool = False):
    rng = np.random.default_rng(1)
    out = []
    for seed in range(2 if quick else 6):
        m, n = (int(x) for x in rng.integers(6, 21, size=2))
        out += [problems.matrix_completion(max(m, 8), n, rank=2, fraction=0.4, noise=0.05, tau_ratio=0.6, seed=seed),
                problems.least_squares(m, n, rank=2, tau_ratio=0.5, seed=seed)]
        if not quick:
            out += [problems.matrix_sensing(min(m, 8), min(n, 6), rank=2, seed=seed),
                    problems.multi_response_logistic(m, min(n, 6), seed=seed)]
    return out


def run(broken: str | None = None, quick: bool = False, iters: int = 150):
    check_broken(broken, BROKEN)
    tr = Tracker(NAME, CLAIM, broken=broken)
    for pb in instances(quick):
        lower, upper = fstar_bounds(pb)
        L, D = pb.objective.smoothness, nuclear_diameter(pb.tau)
        ball = ball_for(pb.tau, broken)
        variants = [dict(step_size=Constant(1.0) if broken == "wrong_step" else OpenLoop())]
        if broken is None:
            variants.append(dict(step_size=OpenLoop(), refine=FactorRefinement(20)))
            if pb.objective.quadratic:
                variants.append(dict(step_size=ExactLineSearch()))
        for kw in variants:
            res = minimize(pb.objective, pb.W0, constraint=ball, max_iter=iters, record_rank="bound", tol=None, **kw)
            tr.instances += 1
            for row in res.trace.rows[1:]:
                tr.ratio(row.primal - upper, fw_primal_bound(row.iteration, L, D),
                         f"{pb.name} {kw['step_size']!r} t={row.iteration}")
    return tr.result()
