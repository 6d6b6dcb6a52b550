"""Constraint sets for the residual ``X = W - W0``: the nuclear-norm ball, and unconstrained.

A set knows its LMO (``argmin_{S in set} <G, S>``, Jaggi 2013 Section 4.2 for the
nuclear ball), whether it is bounded (then it has an LMO and a radius ``tau``), membership,
and the ``shrink`` coefficient that a Frank-Wolfe step on it merges with (DESIGN §2: 1 on
a constraint set, 0 without one). Its Frobenius diameter is
:func:`cola_opt.fw.bounds.nuclear_diameter`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..checks import real
from .spectral import top_singular

__all__ = ["ConstraintSet", "LMOAnswer", "NuclearBall", "Unconstrained"]


@dataclass
class LMOAnswer:
    """An extreme point ``S = B @ A`` and the linear value ``<G, S>``.

    Attributes:
        B: ``(m, k)`` float64; A: ``(k, n)`` float64.
        value: ``<G, S>`` (for the nuclear ball: ``-tau * sigma_max(G)``).
        sigma: the top singular values of ``G`` found on the way, ``(k,)``.
        u, v: top left ``(m,)`` and right ``(n,)`` singular vectors of ``G`` (warm starts).
    """

    B: np.ndarray
    A: np.ndarray
    value: float
    sigma: np.ndarray
    u: np.ndarray
    v: np.ndarray


class ConstraintSet:
    """Where the residual lives.

    Attributes:
        shrink: the merge coefficient of a Frank-Wolfe step on this set.
        bounded: whether the set is bounded: then :meth:`lmo` answers and ``tau`` is its radius.
        tau: the radius of a bounded set, else None.
    """

    shrink: float = 0.0
    bounded: bool = False
    tau: float | None = None

    def lmo(self, G, *, method: str = "auto", v0=None, seed: int = 0) -> LMOAnswer:
        raise ValueError(f"{type(self).__name__} has no linear minimization oracle (it is unbounded)")

    def contains(self, X, rtol: float = 1e-6) -> bool:
        return True


class Unconstrained(ConstraintSet):
    """No constraint: COLA and LoRA as used for fine-tuning (``shrink = 0``)."""

    def __repr__(self) -> str:
        return "Unconstrained()"


class NuclearBall(ConstraintSet):
    """``{X : ||X||_* <= tau}``; Frobenius diameter ``2 tau``; ``shrink = 1``.

    Args:
        tau: the radius, ``> 0`` and finite.

    Raises:
        ValueError: on a bad ``tau``.
    """

    shrink = 1.0
    bounded = True

    def __init__(self, tau: float) -> None:
        self.tau = real(tau, "nuclear-ball radius tau", above=0)

    def __repr__(self) -> str:
        return f"NuclearBall(tau={self.tau:g})"

    def lmo(self, G, *, method: str = "auto", v0=None, seed: int = 0) -> LMOAnswer:
        """``argmin_{||S||_* <= tau} <G, S> = -tau u1 v1^T``, value ``-tau sigma_1(G)``.

        Args:
            G: the ``(m, n)`` gradient (ndarray, sparse, or GradientOperator).
            method, v0, seed: as in :func:`cola_opt.fw.spectral.top_singular`.

        Returns:
            an :class:`LMOAnswer` with ``B = -tau u1`` ``(m, 1)`` and ``A = v1^T`` ``(1, n)``.
            A zero gradient gives ``S = -tau e1 e1^T`` (any point is a minimizer).
        """
        U, s, V = top_singular(G, 1, method=method, v0=v0, seed=seed)
        u, v = U[:, 0], V[:, 0]
        if not np.all(np.isfinite(s)):
            raise FloatingPointError("the gradient's top singular value is not finite")
        return LMOAnswer(B=(-self.tau * u)[:, None], A=v[None, :], value=-self.tau * float(s[0]), sigma=s, u=u, v=v)

    def contains(self, X, rtol: float = 1e-6) -> bool:
        """Whether ``||X||_* <= tau (1 + rtol)``."""
        a = np.asarray(X.detach().cpu().double() if hasattr(X, "detach") else X, dtype=np.float64)
        return float(np.linalg.svd(a, compute_uv=False).sum()) <= self.tau * (1.0 + rtol)
