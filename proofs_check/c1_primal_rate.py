"""C1: convex primal gap of Frank-Wolfe, ``f(x_t) - f* <= 2 L D^2 / (t + 2)`` for ``t >= 1``.

Source: Jaggi (2013), "Revisiting Frank-Wolfe", Theorem 1, with the curvature constant
bounded by ``C_f <= L D^2`` (Lemma 7).

Assumptions: ``f`` convex and ``L``-smooth in the Frobenius norm; the set is
``{W0 + X : ||X||_* <= tau}`` (Frobenius diameter ``D = 2 tau``), ``x_0 = W0`` (``X_0 = 0``);
the step ``gamma_t = 2/(t+2)``, or any rule whose ``x_{t+1}`` is no worse than that step
(exact line search; the factor refinement, which only decreases ``f`` after the FW step).
``W0`` is zero on a third of the instances and a random ``N(0, s^2)`` matrix
(``s = 0.5, 1``) on the rest, as in fine-tuning.

Constants: ``L`` from the objective (1 for completion; ``||A||^2`` for least squares and
sensing; ``||Z||^2 / (4N)`` for logistic), ``D = 2 tau``.

Check: ``f*`` is bracketed by the FW-gap certificate of every iterate of every run,
computed here from dense SVDs (:func:`proofs_check.common.certified_bounds`), and by
cvxpy (CLARABEL) on the first instances (``cvxpy`` check: the two brackets overlap). The
observed gap uses the *upper* end (a feasible value), so a reported violation is a
definite one. Every iterate is also checked for the invariants of
:mod:`proofs_check.invariants`: feasibility, ``f >= f*_lo``, the reported gap, the
direction, the open-loop step and the one-step inequality (open loop, refinement), the
guaranteed decrease (line search).
Instances: completion, least squares, sensing and logistic, shapes 6..14 (18 seeds), up to 3 variants.
Broken variants: ``wrong_step`` (constant ``gamma = 1``), ``wrong_sign`` (LMO maximizes).
"""

from __future__ import annotations

import numpy as np

from cola_opt.fw import bounds
from cola_opt.fw.refine import FactorRefinement
from cola_opt.fw.step_sizes import Constant, ExactLineSearch, OpenLoop
from cola_opt.objectives import problems

from .common import Tracker, check_broken, with_start
from .convex import run_certified
from .invariants import fw_invariants

NAME = "C1"
CLAIM = "convex primal gap <= 2 L D^2/(t+2), open-loop steps (Jaggi 2013, Thm 1)"
BROKEN = ("wrong_step", "wrong_sign")
BASE = ("feasible", "f >= f*_lo", "gap = g_t")


def instances(quick: bool = False):
    rng = np.random.default_rng(1)
    out = []
    for seed in range(3 if quick else 18):
        m, n = (int(x) for x in rng.integers(6, 15, size=2))
        scale = (0.0, 0.5, 1.0)[seed % 3]
        out += [with_start(problems.matrix_completion(max(m, 8), n, rank=2, fraction=0.4, noise=0.05, tau_ratio=0.6,
                                                      seed=seed), scale, 100 + seed),
                with_start(problems.least_squares(m, n, rank=2, tau_ratio=0.5, seed=seed), scale, 200 + seed)]
        if not quick:
            out += [with_start(problems.matrix_sensing(min(m, 8), min(n, 6), rank=2, seed=seed), scale, 300 + seed),
                    with_start(problems.multi_response_logistic(m, min(n, 6), seed=seed), scale, 400 + seed)]
    return out


def variants(pb, broken):
    if broken is not None:
        return [("open", dict(step_size=Constant(1.0) if broken == "wrong_step" else OpenLoop()),
                 BASE + ("direction", "open loop", "one step"))]
    out = [("open", dict(step_size=OpenLoop()), BASE + ("direction", "open loop", "one step")),
           ("refine", dict(step_size=OpenLoop(), refine=FactorRefinement(5)), BASE + ("one step",))]
    if pb.objective.quadratic:
        out.append(("line search", dict(step_size=ExactLineSearch()), BASE + ("direction", "decrease")))
    return out


def run(broken: str | None = None, quick: bool = False, iters: int = 40):
    check_broken(broken, BROKEN)
    tr = Tracker(NAME, CLAIM, broken=broken)
    for k, pb in enumerate(instances(quick)):
        L, D = pb.objective.smoothness, bounds.nuclear_diameter(pb.tau)
        runs, lower, upper = run_certified(tr, pb, variants(pb, broken), iters=iters, broken=broken,
                                           anchor=k < (1 if quick else 3) and broken is None)
        for label, checks, it, qs in runs:
            where = f"{pb.name} {label}"
            fw_invariants(tr, qs, it.W, it.rows, tau=pb.tau, L=L, label=where, checks=checks, f_lower=lower)
            for t in range(1, len(qs)):
                tr.ratio(qs[t].f - upper, bounds.fw_primal_bound(t, L, D), f"{where} t={t}", check="bound")
    return tr.result()
