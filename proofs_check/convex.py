"""Certified brackets on ``f*`` for the convex claims: the checks' own FW certificates, anchored by cvxpy.

Every iterate ``x`` of every run on an instance gives ``f(x) - g(x) <= f* <= f(x)`` once
``x`` is in the ball (convexity; Jaggi 2013, Section 2); a point outside it (a broken run)
is scaled in first. The gaps come from :func:`proofs_check.common.fw_quantities` (dense
SVDs), not from the solver. cvxpy (CLARABEL, an interior-point solver, independent of
everything here) brackets ``f*`` too on a few instances per claim; the ``cvxpy`` check
asserts that the two brackets overlap.
"""

from __future__ import annotations

import math

import numpy as np

from cola_opt.fw.solver import ChainSolver

from .common import SLACK, Tracker, ball_for, fw_quantities, run_links

__all__ = ["certify_runs", "cvxpy_anchor", "run_certified"]


def certify_runs(objective, W0, tau: float, runs) -> tuple[float, float]:
    """``(lower, upper)`` on ``f*`` from every iterate's certificate; ``runs``: ``(label, checks, iterates, quantities)``."""
    lower, upper = -math.inf, math.inf
    for _, _, _, qs in runs:
        for q in qs:
            if q.nuclear > tau:
                q = fw_quantities(objective, W0 + q.X * (tau / q.nuclear), W0, tau)
            lower, upper = max(lower, q.f - max(q.gap, 0.0)), min(upper, q.f)
    return lower, upper


def cvxpy_anchor(tr: Tracker, problem, lower: float, upper: float) -> tuple[float, float]:
    """Check that cvxpy's certified bracket overlaps ``[lower, upper]``; return the intersection."""
    from cola_opt.objectives.reference import reference_optimum

    ref = reference_optimum(problem.objective, problem.tau, problem.W0, solver="CLARABEL")
    tol = SLACK * (abs(upper) + abs(ref.upper)) + 1e-12
    tr.at_most(ref.lower - upper, 0.0, tol, f"{problem.name}: cvxpy lower vs our upper", "cvxpy")
    tr.at_most(lower - ref.upper, 0.0, tol, f"{problem.name}: our lower vs cvxpy upper", "cvxpy")
    return max(lower, ref.lower), min(upper, ref.upper)


def run_certified(tr: Tracker, pb, variants, *, iters: int, broken: str | None, anchor: bool):
    """Run every variant on ``pb`` through the chain loop, recording its iterates; bracket ``f*`` from them all.

    Args:
        variants: ``(label, solver keyword arguments, extra)``; ``extra`` is passed through.
        anchor: also bracket ``f*`` with cvxpy (:func:`cvxpy_anchor`).

    Returns:
        ``(runs, lower, upper)``: ``runs`` as ``(label, extra, iterates, quantities)`` and the
        certified bracket on ``f*``.
    """
    obj, W0 = pb.objective, pb.W0.astype(np.float64)
    runs = []
    for label, kw, extra in variants:
        solver = ChainSolver(obj, pb.W0, constraint=ball_for(pb.tau, broken), record_rank="bound", **kw)
        it = run_links(solver, iters)
        runs.append((label, extra, it, [fw_quantities(obj, W, W0, pb.tau) for W in it.W]))
        tr.instances += 1
    lower, upper = certify_runs(obj, W0, pb.tau, runs)
    if anchor:
        lower, upper = cvxpy_anchor(tr, pb, lower, upper)
    return runs, lower, upper
