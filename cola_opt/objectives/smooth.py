"""Smooth objectives with dense data: least squares, indefinite least squares, sensing, logistic.

Each gives its value, gradient, smoothness ``L`` in the Frobenius norm and, when convex, a
cvxpy form (:mod:`cola_opt.objectives.reference` computes ``f*`` from it).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..checks import real
from .base import GradientOperator, Objective, as_data, as_float64, check_shape, shape_arg

__all__ = ["IndefiniteLeastSquares", "MatrixLeastSquares", "MatrixSensing", "MultiResponseLogistic"]


# --------------------------------------------------------------------- least squares
class MatrixLeastSquares(Objective):
    """``f(W) = 1/2 ||A W - Y||_F^2``, ``A`` of shape ``(p, m)``, ``Y`` ``(p, n)``.

    ``grad f = A^T (A W - Y)``; ``L = ||A||_2^2`` (the largest eigenvalue of ``A^T A``, the
    Hessian acting on each column). Convex quadratic.

    Raises:
        ValueError: if the shapes of ``A`` and ``Y`` disagree, a dimension is 0, or an entry
            is not a finite real number.
    """

    quadratic = True

    def __init__(self, A, Y) -> None:
        who = type(self).__name__
        self.A, self.Y = as_data(A, "A", who), as_data(Y, "Y", who)
        if self.A.ndim != 2 or self.Y.ndim != 2 or self.A.shape[0] != self.Y.shape[0]:
            raise ValueError(f"A {self.A.shape} and Y {self.Y.shape} must be (p, m) and (p, n)")
        if 0 in self.A.shape + self.Y.shape:
            raise ValueError(f"{who}: A {self.A.shape} and Y {self.Y.shape} need p, m, n >= 1")
        self.shape = (self.A.shape[1], self.Y.shape[1])
        self._s = np.linalg.svd(self.A, compute_uv=False)
        self.smoothness = float(self._s[0] ** 2)
        self._At, self._Yt = torch.from_numpy(self.A), torch.from_numpy(self.Y)

    def value(self, W) -> float:
        check_shape(W, self.shape, type(self).__name__)
        R = self.A @ as_float64(W) - self.Y
        return 0.5 * float(np.vdot(R, R))

    def gradient(self, W) -> GradientOperator:
        check_shape(W, self.shape, type(self).__name__)
        return GradientOperator(self.A.T @ (self.A @ as_float64(W) - self.Y))

    def loss(self, W):
        check_shape(W, self.shape, type(self).__name__)
        R = self._At.to(W.dtype) @ W - self._Yt.to(W.dtype)
        return 0.5 * (R * R).sum()

    def curvature(self, D) -> float:
        check_shape(D, self.shape, type(self).__name__, "D")
        AD = self.A @ as_float64(D)
        return float(np.vdot(AD, AD))

    def lower_bound(self, tau=None, W0=None) -> float:
        return 0.0

    def minimizer(self) -> np.ndarray:
        """The unconstrained least-squares solution ``A^+ Y`` (minimum norm), ``(m, n)``."""
        return np.linalg.lstsq(self.A, self.Y, rcond=None)[0]

    def cvxpy_objective(self, X):
        import cvxpy as cp

        return 0.5 * cp.sum_squares(self.A @ X - self.Y)


class IndefiniteLeastSquares(MatrixLeastSquares):
    """A smooth nonconvex quadratic: ``f(W) = 1/2 ||A W - Y||_F^2 - mu/2 ||W||_F^2``.

    Hessian eigenvalues lie in ``[s_min^2 - mu, s_max^2 - mu]`` (``s_min = 0`` when
    ``p < m``), so ``L = max(|s_max^2 - mu|, |s_min^2 - mu|)``; nonconvex when
    ``mu > s_min^2``. On ``{W0 + X : ||X||_* <= tau}``, ``||W||_F <= ||W0||_F + tau``,
    which gives :meth:`lower_bound`.

    Raises:
        ValueError: if ``mu`` is not a finite number ``>= 0``, or as :class:`MatrixLeastSquares`.
    """

    convex = False

    def __init__(self, A, Y, mu: float) -> None:
        mu = real(mu, "mu", at_least=0)
        super().__init__(A, Y)
        self.mu = mu
        smin2 = float(self._s[-1] ** 2) if self.A.shape[0] >= self.A.shape[1] else 0.0
        self.smoothness = max(abs(float(self._s[0] ** 2) - mu), abs(smin2 - mu))
        self.convex = mu <= smin2

    def value(self, W) -> float:
        w = as_float64(W)
        return super().value(W) - 0.5 * self.mu * float(np.vdot(w, w))

    def gradient(self, W) -> GradientOperator:
        return GradientOperator(super().gradient(W).dense - self.mu * as_float64(W))

    def loss(self, W):
        return super().loss(W) - 0.5 * self.mu * (W * W).sum()

    def curvature(self, D) -> float:
        d = as_float64(D)
        return super().curvature(D) - self.mu * float(np.vdot(d, d))

    def lower_bound(self, tau=None, W0=None) -> float:
        if tau is None:
            return -math.inf if self.mu > 0 else 0.0
        r = (0.0 if W0 is None else float(np.linalg.norm(as_float64(W0)))) + tau
        return -0.5 * self.mu * r * r

    def cvxpy_objective(self, X):
        raise NotImplementedError("IndefiniteLeastSquares is nonconvex: no cvxpy form")


# --------------------------------------------------------------------- sensing
class MatrixSensing(Objective):
    """``f(W) = 1/2 sum_i (<A_i, W> - y_i)^2`` with measurement matrices ``A_i`` (``(m, n)``).

    The operator is stored as ``ops`` of shape ``(p, m*n)`` acting on row-major
    ``vec(W)``; ``L = ||ops||_2^2``. Recht, Fazel and Parrilo (2010) pose the
    nuclear-norm version with Gaussian ``A_i``.

    Raises:
        ValueError: if ``shape`` is not two integers ``>= 1``, ``ops`` is not ``(p, m*n)``
            with ``p >= 1``, ``y`` not ``(p,)``, or an entry is not a finite real number.
    """

    quadratic = True

    def __init__(self, ops, y, shape) -> None:
        self.shape = shape_arg(shape, "MatrixSensing")
        self.ops, self.y = as_data(ops, "ops", "MatrixSensing"), as_data(y, "y", "MatrixSensing").ravel()
        if self.ops.ndim != 2 or self.y.size < 1 or self.ops.shape != (self.y.size, self.shape[0] * self.shape[1]):
            raise ValueError(f"ops {self.ops.shape} must be (len(y), m*n) = ({self.y.size}, {self.shape[0] * self.shape[1]})")
        self.smoothness = float(np.linalg.norm(self.ops, 2) ** 2)
        self._ot, self._yt = torch.from_numpy(self.ops), torch.from_numpy(self.y)

    def value(self, W) -> float:
        check_shape(W, self.shape, "MatrixSensing")
        r = self.ops @ as_float64(W).ravel() - self.y
        return 0.5 * float(r @ r)

    def gradient(self, W) -> GradientOperator:
        check_shape(W, self.shape, "MatrixSensing")
        r = self.ops @ as_float64(W).ravel() - self.y
        return GradientOperator((self.ops.T @ r).reshape(self.shape))

    def loss(self, W):
        check_shape(W, self.shape, "MatrixSensing")
        r = self._ot.to(W.dtype) @ W.reshape(-1) - self._yt.to(W.dtype)
        return 0.5 * (r * r).sum()

    def curvature(self, D) -> float:
        check_shape(D, self.shape, "MatrixSensing", "D")
        a = self.ops @ as_float64(D).ravel()
        return float(a @ a)

    def lower_bound(self, tau=None, W0=None) -> float:
        return 0.0

    def cvxpy_objective(self, X):
        import cvxpy as cp

        return 0.5 * cp.sum_squares(self.ops @ cp.vec(X, order="C") - self.y)


# --------------------------------------------------------------------- logistic
class MultiResponseLogistic(Objective):
    """``f(W) = (1/N) sum_{i,j} log(1 + exp(-Y_ij (Z W)_ij))``: ``n`` logistic regressions.

    ``Z`` is ``(N, m)`` features, ``Y`` is ``(N, n)`` labels in ``{-1, +1}``, ``W`` is
    ``(m, n)``. The logistic loss has second derivative at most 1/4, so
    ``L = ||Z||_2^2 / (4 N)``. Convex, not quadratic.

    Raises:
        ValueError: on mismatched shapes, a dimension of 0, features that are not finite
            real numbers, or labels outside ``{-1, +1}``.
    """

    def __init__(self, Z, Y) -> None:
        self.Z, self.Y = as_data(Z, "Z", "MultiResponseLogistic"), as_data(Y, "Y", "MultiResponseLogistic")
        if self.Z.ndim != 2 or self.Y.ndim != 2 or self.Z.shape[0] != self.Y.shape[0]:
            raise ValueError(f"Z {self.Z.shape} and Y {self.Y.shape} must be (N, m) and (N, n)")
        if 0 in self.Z.shape + self.Y.shape:
            raise ValueError(f"MultiResponseLogistic: Z {self.Z.shape} and Y {self.Y.shape} need N, m, n >= 1")
        if not np.all(np.isin(self.Y, (-1.0, 1.0))):
            raise ValueError("labels Y must be -1 or +1")
        self.N = self.Z.shape[0]
        self.shape = (self.Z.shape[1], self.Y.shape[1])
        self.smoothness = float(np.linalg.norm(self.Z, 2) ** 2 / (4 * self.N))
        self._Zt, self._Yt = torch.from_numpy(self.Z), torch.from_numpy(self.Y)

    def value(self, W) -> float:
        check_shape(W, self.shape, "MultiResponseLogistic")
        margins = self.Y * (self.Z @ as_float64(W))
        return float(np.logaddexp(0.0, -margins).sum() / self.N)

    def gradient(self, W) -> GradientOperator:
        check_shape(W, self.shape, "MultiResponseLogistic")
        margins = self.Y * (self.Z @ as_float64(W))
        weights = -self.Y * np.exp(-np.logaddexp(0.0, margins))  # -y * sigmoid(-margin)
        return GradientOperator(self.Z.T @ weights / self.N)

    def loss(self, W):
        check_shape(W, self.shape, "MultiResponseLogistic")
        margins = self._Yt.to(W.dtype) * (self._Zt.to(W.dtype) @ W)
        return torch.nn.functional.softplus(-margins).sum() / self.N

    def lower_bound(self, tau=None, W0=None) -> float:
        return 0.0

    def cvxpy_objective(self, X):
        import cvxpy as cp

        return cp.sum(cp.logistic(-cp.multiply(self.Y, self.Z @ X))) / self.N
