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
* ``monotone``: ``f(x_{t+1}) <= f(x_t)`` (line search, backtracking: away, pairwise, block);
* ``block step``: block FW (rank-``r`` oracle with curvature ``c = L``) with exact line search,
  ``f(x_{t+1}) <= f(x_t) + min_V Q(V)``, ``Q(V) = <G_t, V - X_t> + L ||V - X_t||^2 / 2`` over
  ``{rank V <= r, ||V||_* <= tau}``: the line search does at least as well as ``gamma = 1``, where
  smoothness gives ``f <= f(x_t) + Q(V_t)``, and the oracle's ``V_t`` minimises ``Q`` (Allen-Zhu,
  Hazan, Hu and Li 2017). The minimum is computed here (:func:`block_model_min`: dense SVD of
  ``X_t - G_t / L``, its top ``r`` values projected by bisection); it is at most
  ``-g_t + L ||S_t - X_t||^2 / 2``, the FW step's model. Ratio shown: ``-min Q / (decrease + slack)``;
* ``fw steps`` (away-step FW): the steps the trace labels ``"fw"`` get the ``direction`` and
  ``decrease`` checks (``direction (fw steps)``, ``decrease (fw steps)``): a FW step of the
  away-step method has ``gamma_max = 1``, so exact line search gives the short step's decrease;
* ``drop steps`` (away-step FW with exact line search, with ``fw steps``): an away step that is
  not a drop step (``gamma < gamma_max``) stops at the line's minimum, so it decreases ``f`` by
  at least ``s^2 / (2 L ||d||^2) >= Delta(g_t, L D^2)`` (slope ``s >= g_t``, ``||d|| <= D = 2 tau``).
  An away step that decreases ``f`` by less is therefore a drop step, which removes an atom;
  atoms come only from FW steps (and the zero atom at the start), so at every ``t`` the
  number of such steps is at most ``1 +`` the number of FW steps (Lacoste-Julien and Jaggi
  2015, proof of Theorem 1). Ratio shown: ``short away steps / (1 + FW steps)``;
* ``one step (reported gamma)`` (away, pairwise): with the trace's step ``gamma_t > 0`` and
  ``d_t = (x_{t+1} - x_t) / gamma_t``, ``f(x_{t+1}) <= f(x_t) - gamma_t g_t + gamma_t^2 L ||d_t||^2 / 2``.
  By smoothness it holds when the direction is at least as steep as the FW one,
  ``<-G_t, d_t> >= g_t``: an away step is taken only when steeper, and a pairwise direction
  ``S_t - a`` has slope ``g_t + <G_t, a - X_t> >= g_t`` for an active atom ``a`` maximising
  ``<G_t, a>`` (Lacoste-Julien and Jaggi 2015, Algorithms 1 and 2). Ratio shown as ``one step``.
  The slope condition itself is the check ``steeper than FW``: ``g_t - <-G_t, d_t> <= slack``
  (the ratio shown is the excess in units of the slack: 0 when it holds with room); a zero
  step (``gamma_t = 0``: line search found no descent along ``d_t``) passes only at ``g_t = 0``.
"""

from __future__ import annotations

import math

import numpy as np

from .common import SLACK, U32, FWQuantities, Tracker, nuclear_tolerance

__all__ = ["block_model_min", "fw_invariants", "guaranteed_decrease"]


def guaranteed_decrease(g: float, curvature: float) -> float:
    """``max_{0 <= gamma <= 1} gamma g - gamma^2 C / 2`` for ``C = L ||d||^2``: the short step's decrease."""
    if g <= 0.0:
        return 0.0
    if curvature <= 0.0:
        return g
    return g * g / (2.0 * curvature) if g <= curvature else g - 0.5 * curvature


def _capped_simplex(s: np.ndarray, tau: float) -> np.ndarray:
    """Projection of ``s >= 0`` onto ``{w >= 0, sum w <= tau}``: ``max(s - theta, 0)``, ``theta`` by bisection."""
    if s.sum() <= tau:
        return s.copy()
    lo, hi = 0.0, float(s.max())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.maximum(s - mid, 0.0).sum() > tau else (lo, mid)
    return np.maximum(s - hi, 0.0)


def block_model_min(q: FWQuantities, L: float, rank: int, tau: float) -> float:
    """``min {<G, V - X> + L ||V - X||^2 / 2 : rank V <= rank, ||V||_* <= tau}`` at the iterate ``q``.

    ``Q(V) = L/2 ||V - (X - G/L)||^2 - ||G||^2 / (2L)``: the nearest point of the set to
    ``Z = X - G/L`` shares ``Z``'s singular vectors, with its top ``rank`` values projected onto
    ``{w >= 0, sum w <= tau}`` (von Neumann's trace inequality).
    """
    U, s, Vt = np.linalg.svd(q.X - q.G / L, full_matrices=False)
    w = _capped_simplex(s[:rank], tau)
    d = (U[:, :rank] * w) @ Vt[:rank] - q.X
    return float(np.vdot(q.G, d)) + 0.5 * L * float(np.vdot(d, d))


def _f_tol(q: FWQuantities, W: np.ndarray) -> float:
    """Float slack on ``f(W)``: relative ``SLACK``, plus the effect of float32 rounding of ``W`` (``<= u ||G|| ||W||``)."""
    return SLACK * abs(q.f) + 4.0 * U32 * float(np.linalg.norm(q.G)) * float(np.linalg.norm(W)) + 1e-12


def fw_invariants(tr: Tracker, qs: list[FWQuantities], Ws: list[np.ndarray], rows, *, tau: float,
                  L: float | None, label: str, checks: tuple[str, ...], f_lower: float | None = None,
                  block_rank: int | None = None) -> None:
    """Run the named ``checks`` (see the module notes) at every iterate of one run.

    Args:
        qs: :func:`proofs_check.common.fw_quantities` at every iterate ``t = 0..T``.
        Ws: the iterates ``W_t`` (float64 copies); rows: the solver's trace rows.
        L: the smoothness constant (``one step``, ``decrease``, ``block step`` need it).
        f_lower: a certified lower bound on ``f`` over the ball (``f >= f*_lo``).
        block_rank: the block oracle's rank (``block step`` needs it).
    """
    T = len(qs) - 1
    n_fw = n_drop = 0  # FW steps and short away steps so far (``fw steps``: drop steps <= FW steps + 1)
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
        fw_step = "fw steps" in checks and rows[t].direction == "fw"
        suffix = " (fw steps)" if fw_step else ""
        if unique and ("direction" in checks or "open loop" in checks or fw_step):
            gamma = float(np.vdot(dX, d)) / d2
            off = float(np.linalg.norm(dX - gamma * d))
            if "direction" in checks or fw_step:
                tr.at_most(off, 0.0, fl + 1e-6 * float(np.linalg.norm(dX)), where, "direction" + suffix)
            if "open loop" in checks:
                tr.at_most(abs(gamma - 2.0 / (t + 2.0)), 0.0, (fl + 1e-9) / math.sqrt(d2) + 1e-7, where, "open loop")
        ftol = _f_tol(q, W) + _f_tol(nxt, Ws[t + 1])
        if unique and "one step" in checks:
            gamma = 2.0 / (t + 2.0)
            allowance = 0.5 * gamma * gamma * L * d2
            excess = nxt.f - q.f + gamma * q.gap
            tr.at_most(excess, allowance, ftol, where, "one step", shown=excess / (allowance + ftol))
        if unique and ("decrease" in checks or fw_step):
            delta, got = guaranteed_decrease(q.gap, L * d2), q.f - nxt.f
            tr.at_most(delta, got, ftol, where, "decrease" + suffix, shown=delta / max(got + ftol, 1e-300))
        if "one step (reported gamma)" in checks:
            gamma, dx2 = float(rows[t].step_size), float(np.vdot(dX, dX))
            # the books' X (atoms) and the float32 X differ by the rounding of t knots (see nuclear_tolerance)
            books = 2.0 * (t + 1) * U32 * float(np.linalg.norm(q.G)) * float(np.linalg.norm(W)) \
                + 1e-6 * (abs(q.gap) + tau * q.sigma)
            if gamma > 0:
                slope, slack = -float(np.vdot(q.G, dX)) / gamma, books + fl * float(np.linalg.norm(q.G)) / gamma
                allowance, excess = 0.5 * L * dx2, nxt.f - q.f + gamma * q.gap
                tol = ftol + gamma * books
                tr.at_most(excess, allowance, tol, where, "one step (reported gamma)",
                           shown=excess / (allowance + tol))
            else:  # a zero step: the direction taken had slope <= 0, so g_t must be 0
                slope, slack = 0.0, books
            tr.at_most(q.gap - slope, 0.0, slack, where, "steeper than FW")
        if "fw steps" in checks and rows[t].direction in ("fw", "away"):
            if rows[t].direction == "fw":
                n_fw += 1
            elif q.f - nxt.f < guaranteed_decrease(q.gap, L * (2.0 * tau) ** 2) - ftol:
                n_drop += 1
            tr.at_most(n_drop, 1 + n_fw, 0.0, where, "drop steps", shown=n_drop / (1.0 + n_fw))
        if "block step" in checks:
            delta, got = -block_model_min(q, L, block_rank, tau), q.f - nxt.f
            tr.at_most(delta, got, ftol, where, "block step", shown=delta / max(got + ftol, 1e-300))
        if "monotone" in checks:
            tr.at_most(nxt.f - q.f, 0.0, ftol, where, "monotone")
