"""Reference optima through cvxpy, with the solver's tolerance turned into certified bounds.

``min f(W0 + X)  s.t.  ||X||_* <= tau`` is posed in cvxpy (``normNuc`` becomes an SDP
cone) and solved by CLARABEL (interior point, tolerance 1e-8 by default, memory grows
fast: DESIGN §6 saw > 16 GB at n = 100) or SCS (first order; ``eps_abs = eps_rel`` set
here, default 1e-6).

A solver's answer ``X_s`` is only approximately feasible and optimal, so it is not
trusted as is. It is scaled into the ball, ``X = X_s * min(1, tau / ||X_s||_*)``, and
then bounds ``f* in [f(X) - g(X), f(X)]`` are certified by the Frank-Wolfe gap
``g(X) = <grad f(X), X> + tau * sigma_max(grad f(X))`` (convexity: ``f(X) - f* <= g(X)``,
Jaggi 2013, Section 2). Tests and checks use these bounds, not the solver's value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..fw.sets import NuclearBall
from .base import Objective

__all__ = ["ReferenceOptimum", "certify", "reference_optimum"]


@dataclass
class ReferenceOptimum:
    """A certified reference optimum.

    Attributes:
        lower: certified lower bound on ``f*``.
        upper: ``f`` at a feasible point, an upper bound on ``f*``.
        X: that feasible residual, ``(m, n)`` float64.
        solver: solver name; status: cvxpy's status; seconds: solve wall time.
        solver_value: the objective value cvxpy reported (not certified).
    """

    lower: float
    upper: float
    X: np.ndarray
    solver: str
    status: str
    seconds: float
    solver_value: float

    @property
    def f_star(self) -> float:
        """The feasible value ``upper`` (the best point estimate)."""
        return self.upper

    @property
    def width(self) -> float:
        """``upper - lower``: how well ``f*`` is known."""
        return self.upper - self.lower


def certify(objective: Objective, X: np.ndarray, tau: float, W0=None) -> tuple[float, float, np.ndarray]:
    """Scale ``X`` into the ball and return ``(lower, upper, X_feasible)`` for ``f*``.

    Raises:
        ValueError: if ``objective`` is not convex (the gap certifies nothing then).
    """
    if not objective.convex:
        raise ValueError(f"{type(objective).__name__} is not convex: the FW gap does not bound f - f*")
    W0 = np.zeros(objective.shape) if W0 is None else np.asarray(W0, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    nuc = float(np.linalg.svd(X, compute_uv=False).sum())
    if nuc > tau:
        X = X * (tau / nuc)
    W = W0 + X
    G = objective.gradient(W)
    answer = NuclearBall(tau).lmo(G, method="dense")
    gap = G.inner(X) - answer.value
    f = objective.value(W)
    return f - max(gap, 0.0), f, X


def reference_optimum(objective: Objective, tau: float, W0=None, *, solver: str = "CLARABEL",
                      eps: float = 1e-6, max_iters: int = 200_000, verbose: bool = False) -> ReferenceOptimum:
    """Solve the nuclear-ball problem with cvxpy and certify the answer.

    Args:
        objective: a convex :class:`Objective` with ``cvxpy_objective``.
        tau: the radius (``> 0``); W0: the centre (zeros if None).
        solver: ``"CLARABEL"`` or ``"SCS"``.
        eps: SCS's ``eps_abs`` and ``eps_rel`` (ignored by CLARABEL, which runs at its
            defaults, 1e-8).
        max_iters: SCS's iteration cap.

    Raises:
        ValueError: on a nonconvex objective, bad ``tau`` or unknown solver.
        RuntimeError: if the solver returns no point.
    """
    import cvxpy as cp

    if not objective.convex:
        raise ValueError(f"{type(objective).__name__} is not convex: cvxpy cannot pose it")
    if not tau > 0:
        raise ValueError(f"radius tau = {tau} must be > 0")
    if solver not in ("CLARABEL", "SCS"):
        raise ValueError(f"solver {solver!r} must be 'CLARABEL' or 'SCS'")
    m, n = objective.shape
    W0 = np.zeros((m, n)) if W0 is None else np.asarray(W0, dtype=np.float64)
    X = cp.Variable((m, n))
    problem = cp.Problem(cp.Minimize(objective.cvxpy_objective(W0 + X)), [cp.normNuc(X) <= tau])
    opts = dict(eps_abs=eps, eps_rel=eps, max_iters=max_iters) if solver == "SCS" else {}
    t0 = time.perf_counter()
    problem.solve(solver=solver, verbose=verbose, **opts)
    seconds = time.perf_counter() - t0
    if X.value is None:
        raise RuntimeError(f"{solver} returned no solution (status {problem.status})")
    lower, upper, Xf = certify(objective, X.value, tau, W0)
    return ReferenceOptimum(lower, upper, Xf, solver, str(problem.status), seconds, float(problem.value))
