"""Right-hand sides of the convergence theorems, as plain functions.

Notation: ``L`` is the Frobenius-norm smoothness constant of ``f`` and ``D`` the
Frobenius diameter of the set (``2 tau`` for the nuclear ball of radius ``tau``); the
curvature constant of Jaggi (2013) satisfies ``C_f <= L D^2`` (Jaggi 2013, Lemma 7).
Iterations ``t`` count from 0 (``x_0`` is the start). Derivations: ``docs/theory.md``.
"""

from __future__ import annotations

import math

__all__ = [
    "JAGGI_BETA",
    "cola_bound",
    "cola_prefix_bound",
    "cola_step_size",
    "curvature_bound",
    "fw_min_gap_bound",
    "fw_primal_bound",
    "nonconvex_min_gap_bound",
    "nuclear_diameter",
    "rank_bound",
]

#: Jaggi (2013), Theorem 2: ``beta = 27/8``.
JAGGI_BETA = 27.0 / 8.0


def _positive(**kw) -> None:
    for k, v in kw.items():
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"{k} = {v} must be finite and >= 0")


def nuclear_diameter(tau: float) -> float:
    """Frobenius diameter ``2 tau`` of ``{||X||_* <= tau}`` (antipodal rank-1 atoms)."""
    _positive(tau=tau)
    return 2.0 * tau


def curvature_bound(L: float, D: float) -> float:
    """``C_f <= L D^2`` (Jaggi 2013, Lemma 7)."""
    _positive(L=L, D=D)
    return L * D * D


def fw_primal_bound(t: int, L: float, D: float) -> float:
    """``f(x_t) - f* <= 2 L D^2 / (t + 2)`` for ``t >= 1``, convex ``f``, steps ``2/(t+2)``.

    Jaggi (2013), Theorem 1 (with ``C_f <= L D^2``); it also holds for line search and for
    any method whose ``x_{t+1}`` is no worse than the open-loop FW step from ``x_t``.

    Raises:
        ValueError: if ``t < 1`` (the bound starts after the first step) or constants are bad.
    """
    if t < 1:
        raise ValueError(f"the primal bound holds for t >= 1, got t = {t}")
    return 2.0 * curvature_bound(L, D) / (t + 2.0)


def fw_min_gap_bound(K: int, L: float, D: float) -> float:
    """``min_{1 <= k <= K} g(x_k) <= 2 beta C_f / (K + 2)``, ``beta = 27/8``, for ``K >= 2``.

    Jaggi (2013), Theorem 2 (convex ``f``, open-loop or line-search steps).

    Raises:
        ValueError: if ``K < 2``.
    """
    if K < 2:
        raise ValueError(f"the minimum-gap bound holds for K >= 2, got K = {K}")
    return 2.0 * JAGGI_BETA * curvature_bound(L, D) / (K + 2.0)


def nonconvex_min_gap_bound(T: int, h0: float, L: float, D: float) -> float:
    """``min_{0 <= t <= T} g_t <= max(2 h0, L D^2) / sqrt(T + 1)``.

    Lacoste-Julien (2016), Theorem 1, for ``L``-smooth (possibly nonconvex) ``f`` with
    line search or the step ``min(g_t / C, 1)``, ``C >= C_f``; ``h0 = f(x_0) - min f``.
    An upper bound on ``h0`` (from a lower bound on ``f``) keeps the bound valid.

    Raises:
        ValueError: if ``T < 0`` or ``h0 < 0``.
    """
    if T < 0:
        raise ValueError(f"T = {T} must be >= 0")
    _positive(h0=h0)
    return max(2.0 * h0, curvature_bound(L, D)) / math.sqrt(T + 1.0)


def cola_step_size(M: float, beta: float, D: float, T: int) -> float:
    """COLA Theorem 4.1's fixed step ``eta = sqrt(M / (beta D^2 T))`` (derived in docs/theory.md).

    ``M >= f(x_1) - min f``. Returns ``min(eta, 1)`` so that iterates stay in the set.

    Raises:
        ValueError: on non-positive constants or ``T < 1``.
    """
    if T < 1:
        raise ValueError(f"T = {T} must be >= 1")
    _positive(M=M, beta=beta, D=D)
    if M == 0 or beta == 0 or D == 0:
        raise ValueError("M, beta and D must be > 0 for the COLA step size")
    return min(1.0, math.sqrt(M / (beta * D * D * T)))


def cola_bound(T: int, M: float, beta: float, D: float, eps: float) -> float:
    """``(1/T) sum_{t=1}^T g_t <= 2 sqrt(M beta) D / sqrt(T) + eps`` (Xia, Qin, Hazan 2024, Thm 4.1).

    ``eps`` bounds each step's oracle error; the averaged errors also work (docs/theory.md).
    """
    if T < 1:
        raise ValueError(f"T = {T} must be >= 1")
    _positive(M=M, beta=beta, D=D, eps=eps)
    return 2.0 * math.sqrt(M * beta) * D / math.sqrt(T) + eps


def cola_prefix_bound(t: int, eta: float, M: float, beta: float, D: float, eps_mean: float) -> float:
    """``(1/t) sum_{s=1}^t g_s <= M / (eta t) + beta eta D^2 / 2 + mean(eps_1..eps_t)``.

    The inequality behind Theorem 4.1 before ``eta`` is chosen; valid for every ``t >= 1``
    and any fixed ``eta in (0, 1]`` (docs/theory.md, eq. (C4.3)).
    """
    if t < 1:
        raise ValueError(f"t = {t} must be >= 1")
    _positive(eta=eta, M=M, beta=beta, D=D)
    return M / (eta * t) + 0.5 * beta * eta * D * D + eps_mean


def rank_bound(links: int, rank: int) -> int:
    """``rank(X_k) <= k r``: ``k`` merged links of rank ``r`` (subadditivity of rank)."""
    if links < 0 or rank < 1:
        raise ValueError(f"links {links} must be >= 0 and rank {rank} >= 1")
    return links * rank
