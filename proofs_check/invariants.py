"""Every-iterate invariants of the Frank-Wolfe variants, checked from the recorded iterates.

For a run over the ball ``{W0 + X : ||X||_* <= tau}`` of an ``L``-smooth ``f``, with the
independent quantities of :func:`proofs_check.common.fw_quantities` at every iterate
(``g_t``, the LMO atom ``S_t``, ``d_t = S_t - X_t``):

* ``feasible``: ``||X_t||_* <= tau`` (plus the float32 slack of :func:`nuclear_tolerance`);
* ``f >= f*_lo``: ``f(x_t) >= f*_lo`` for a certified lower bound (convex: the FW-gap
  certificate; nonconvex: the objective's ``lower_bound``);
* ``gap = g_t``: the FW gap the solver reports equals the one computed here;
* ``direction``: ``x_{t+1} - x_t`` lies along the FW direction ``d_t`` (vanilla and
  line-search steps; skipped when ``sigma_1 = sigma_2`` to 1e-6, where ``S_t`` is not unique);
* ``open loop``: the step recovered from the iterates is ``2/(t+2)``;
* ``one step``: ``f(x_{t+1}) <= f(x_t) - gamma_t g_t + gamma_t^2 L ||d_t||^2 / 2`` with the
  open-loop ``gamma_t`` (smoothness along the FW direction; Jaggi 2013, proof of Thm 1).
  The ratio shown is the share of the curvature term used,
  ``(f_{t+1} - f_t + gamma g_t) / (gamma^2 L ||d||^2 / 2 + slack)``. It holds for the refined step
  too, which only lowers ``f`` after the FW step;
* ``decrease``: ``f(x_t) - f(x_{t+1}) >= Delta_t``, the short step's guaranteed decrease
  ``Delta_t = min(g^2 / (2 L ||d||^2), g - L ||d||^2 / 2 [g > L ||d||^2])`` (Lacoste-Julien 2016,
  proof of Thm 1), for short steps and exact line search (which does at least as well
  along the same ``d_t``); the ratio shown is ``Delta_t / (decrease + slack)``. This is the check
  that a slowed-down step fails even when the rate bounds, with their slack, still hold;
* ``monotone``: ``f(x_{t+1}) <= f(x_t)`` (line search, backtracking: away, pairwise, block).
"""

from __future__ import annotations

import math

import numpy as np

from .common import SLACK, U32, FWQuantities, Tracker, nuclear_tolerance

__all__ = ["fw_invariants", "guaranteed_decrease"]


def guaranteed_decrease(g: float, curvature: float) -> float:
    """``max_{0 <= gamma <= 1} gamma g - gamma^2 C / 2`` for ``C = L ||d||^2``: the short step's decrease."""
    if g <= 0.0:
        return 0.0
    if curvature <= 0.0:
        return g
    return g * g / (2.0 * curvature) if g <= curvature else g - 0.5 * curvature


def _f_tol(q: FWQuantities, W: np.ndarray) -> float:
    """Float slack on ``f(W)``: relative ``SLACK``, plus the effect of float32 rounding of ``W`` (``<= u ||G|| ||W||``)."""
    return SLACK * abs(q.f) + 4.0 * U32 * float(np.linalg.norm(q.G)) * float(np.linalg.norm(W)) + 1e-12


def fw_invariants(tr: Tracker, qs: list[FWQuantities], Ws: list[np.ndarray], rows, *, tau: float,
                  L: float | None, label: str, checks: tuple[str, ...], f_lower: float | None = None) -> None:
    """Run the named ``checks`` (see the module notes) at every iterate of one run.

    Args:
        qs: :func:`proofs_check.common.fw_quantities` at every iterate ``t = 0..T``.
        Ws: the iterates ``W_t`` (float64 copies); rows: the solver's trace rows.
        L: the smoothness constant (``one step`` and ``decrease`` need it).
        f_lower: a certified lower bound on ``f`` over the ball (``f >= f*_lo``).
    """
    T = len(qs) - 1
    for t, q in enumerate(qs):
        where = f"{label} t={t}"
        W = Ws[t]
        if "feasible" in checks:
            tr.at_most(q.nuclear, tau, nuclear_tolerance(W, tau, t), where, "feasible", shown=q.nuclear / tau)
        if "f >= f*_lo" in checks:
            tol = _f_tol(q, W) + q.sigma * nuclear_tolerance(W, tau, t) + SLACK * abs(f_lower)
            tr.at_most(f_lower - q.f, 0.0, tol, where, "f >= f*_lo")
        if "gap = g_t" in checks:
            gx = float(np.linalg.norm(q.G)) * float(np.linalg.norm(q.X))
            tol = 1e-6 * (gx + tau * q.sigma) + 4.0 * U32 * gx + 1e-12
            tr.at_most(abs(rows[t].fw_gap - q.gap), 0.0, tol, where, "gap = g_t")
        if t == T:
            continue
        nxt, dX = qs[t + 1], qs[t + 1].X - q.X
        d = q.S - q.X
        d2 = float(np.vdot(d, d))
        unique = q.sigma_gap > 1e-6 * q.sigma and d2 > 0
        fl = 4.0 * U32 * (float(np.linalg.norm(W)) + float(np.linalg.norm(Ws[t + 1])))
        if unique and ("direction" in checks or "open loop" in checks):
            gamma = float(np.vdot(dX, d)) / d2
            off = float(np.linalg.norm(dX - gamma * d))
            if "direction" in checks:
                tr.at_most(off, 0.0, fl + 1e-6 * float(np.linalg.norm(dX)), where, "direction")
            if "open loop" in checks:
                tr.at_most(abs(gamma - 2.0 / (t + 2.0)), 0.0, (fl + 1e-9) / math.sqrt(d2) + 1e-7, where, "open loop")
        ftol = _f_tol(q, W) + _f_tol(nxt, Ws[t + 1])
        if unique and "one step" in checks:
            gamma = 2.0 / (t + 2.0)
            allowance = 0.5 * gamma * gamma * L * d2
            excess = nxt.f - q.f + gamma * q.gap
            tr.at_most(excess, allowance, ftol, where, "one step", shown=excess / (allowance + ftol))
        if unique and "decrease" in checks:
            delta, got = guaranteed_decrease(q.gap, L * d2), q.f - nxt.f
            tr.at_most(delta, got, ftol, where, "decrease", shown=delta / max(got + ftol, 1e-300))
        if "monotone" in checks:
            tr.at_most(nxt.f - q.f, 0.0, ftol, where, "monotone")
