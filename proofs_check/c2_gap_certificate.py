"""C2: the FW gap certifies the primal gap, and its minimum decays as ``27/4 L D^2 / (K+2)``.

Claims (convex ``f``):

(a) ``g(x) = max_S <grad f(x), x - S> >= f(x) - f*`` at every feasible ``x`` (convexity:
    ``f* >= f(x) + <grad f(x), x* - x> >= f(x) - g(x)``; Jaggi 2013, Section 2);
(b) ``min_{1 <= k <= K} g(x_k) <= 2 beta C_f / (K + 2)`` with ``beta = 27/8`` for ``K >= 2``
    (Jaggi 2013, Theorem 2, verified against a formal statement of it), ``C_f <= L D^2``.

Source: Jaggi (2013), "Revisiting Frank-Wolfe", Section 2 (duality gap) and Theorem 2;
the constant ``beta = 27/8`` was checked against a formalised statement of Theorem 2.

Assumptions: as C1 (convex, ``L``-smooth, the ball ``{W0 + X : ||X||_* <= tau}``,
``D = 2 tau``, ``C_f <= L D^2``; ``W0 = 0`` on a third of the instances, random on the rest).
(a) is checked for every variant (vanilla, line search, away-step, pairwise, block), since
it holds at any feasible point; (b) for the open-loop and exact line-search steps.

Check: (a) ``f(x_t) - f*_upper <= g_t`` for the gap the solver *reports* (the certificate
users read), with a float slack of ``1e-6 |f|``; (b) ratio ``min_{k<=K} g_k / bound(K)``
at every ``K >= 2`` for the gap computed here. Every iterate also gets the invariants of
:mod:`proofs_check.invariants`: feasibility, ``f >= f*_lo``, the reported gap equal to the
independent one, the guaranteed decrease (exact line search) or monotone ``f`` (away,
pairwise, block, backtracking); on the quadratics (exact line search) the block step's
guarantee against the block oracle's model, and the away method's FW steps' direction and
decrease; for away and pairwise steps the one-step inequality with the reported step. ``f*`` as in C1 (certificates of every iterate; cvxpy on
the first instances).
Broken variant: ``wrong_sign`` (the LMO maximizes, so the "gap" is the wrong sign).
"""

from __future__ import annotations

import math

import numpy as np

from cola_opt.fw import bounds
from cola_opt.fw.oracles import BlockLMO
from cola_opt.fw.step_sizes import Backtracking, ExactLineSearch, OpenLoop
from cola_opt.objectives import problems

from .common import SLACK, Tracker, check_broken, with_start
from .convex import run_certified
from .invariants import fw_invariants

NAME = "C2"
CLAIM = "FW gap >= f - f*; min gap <= 27/4 L D^2/(K+2) (Jaggi 2013, Thm 2)"
BROKEN = ("wrong_sign",)
BASE = ("feasible", "f >= f*_lo", "gap = g_t")
#: The rank of the block-FW oracle.
BLOCK_RANK = 2


def instances(quick: bool = False):
    rng = np.random.default_rng(2)
    out = []
    for seed in range(2 if quick else 12):
        m, n = (int(x) for x in rng.integers(6, 15, size=2))
        scale = (0.0, 0.5, 1.0)[seed % 3]
        out += [with_start(problems.matrix_completion(m, n, rank=2, fraction=0.5, noise=0.1, tau_ratio=0.7,
                                                      seed=50 + seed), scale, 500 + seed),
                with_start(problems.least_squares(m, n, rank=3, tau_ratio=(0.5, 2.0)[seed % 2], seed=50 + seed),
                           scale, 600 + seed)]
        if not quick:
            out += [with_start(problems.multi_response_logistic(m, min(n, 6), tau_ratio=0.4, seed=50 + seed), scale,
                               700 + seed),
                    with_start(problems.matrix_sensing(min(m, 7), min(n, 6), rank=2, seed=50 + seed), scale, 800 + seed)]
    return out


def variants(pb, broken):
    """``(label, solver keywords, (rate, checks))``; ``rate``: part (b) applies (open loop, exact line search)."""
    quadratic = pb.objective.quadratic
    search, descent = (ExactLineSearch(), "decrease") if quadratic else (Backtracking(), "monotone")
    # exact line search (quadratics) gives each variant its one-step guarantee; backtracking only monotone f
    away, block = ("fw steps",) if quadratic else (), ("block step",) if quadratic else ()
    steep = ("one step (reported gamma)",)
    out = [("open", dict(step_size=OpenLoop()), (True, BASE))]
    if broken is None:
        out += [("search", dict(step_size=search), (quadratic, BASE + (descent,))),
                ("away", dict(step_size=search, variant="away"), (False, BASE + ("monotone",) + steep + away)),
                ("pairwise", dict(step_size=search, variant="pairwise"), (False, BASE + ("monotone",) + steep)),
                ("block", dict(oracle=BlockLMO(BLOCK_RANK), step_size=search), (False, BASE + ("monotone",) + block))]
    return out


def run(broken: str | None = None, quick: bool = False, iters: int = 40):
    check_broken(broken, BROKEN)
    tr = Tracker(NAME, CLAIM, broken=broken)
    for k, pb in enumerate(instances(quick)):
        L, D = pb.objective.smoothness, bounds.nuclear_diameter(pb.tau)
        runs, lower, upper = run_certified(tr, pb, variants(pb, broken), iters=iters, broken=broken,
                                           anchor=k < (1 if quick else 3) and broken is None)
        for label, (rate, checks), it, qs in runs:
            where = f"{pb.name} {label}"
            fw_invariants(tr, qs, it.W, it.rows, tau=pb.tau, L=L, label=where, checks=checks, f_lower=lower,
                          block_rank=BLOCK_RANK)
            best = math.inf
            for t, (q, row) in enumerate(zip(qs, it.rows)):
                tr.at_most(q.f - upper, row.fw_gap, SLACK * abs(q.f), f"{where} t={t} (a)", "bound")
                best = min(best, q.gap) if t >= 1 else best
                if rate and t >= 2:
                    tr.ratio(best, bounds.fw_min_gap_bound(t, L, D), f"{where} K={t} (b)", check="min gap")
    return tr.result()
