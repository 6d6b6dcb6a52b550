"""Explicit objectives over one matrix variable ``W`` of shape ``(m, n)``.

Each objective gives its value, its gradient (as a :class:`GradientOperator`, dense or
sparse), a differentiable torch ``loss`` for inner optimizers, its smoothness constant
``L`` in the Frobenius norm where known, and, when convex, a cvxpy expression so that
:mod:`cola_opt.reference` can compute ``f*``. Quadratics also give the curvature
``<D, H D>`` used by exact line search.

Values are computed in float64 whatever the dtype of ``W``; ``W`` may be a torch tensor
or a numpy array.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from ._checks import finite_array, real, real_array

__all__ = [
    "CauchyCompletion",
    "GradientOperator",
    "IndefiniteLeastSquares",
    "MatrixCompletion",
    "MatrixLeastSquares",
    "MatrixSensing",
    "MultiResponseLogistic",
    "Objective",
]


def _np(W) -> np.ndarray:
    if isinstance(W, torch.Tensor):
        return W.detach().cpu().double().numpy()
    return np.asarray(W, dtype=np.float64)


def _check_shape(W, shape, who: str, name: str = "W") -> None:
    got = tuple(W.shape) if hasattr(W, "shape") else np.shape(W)
    if got != tuple(shape):
        raise ValueError(f"{who} expects {name} of shape {tuple(shape)}, got {got}")


def _data(x, name: str, who: str) -> np.ndarray:
    """Construction data ``x`` as a float64 array of finite real numbers.

    Raises:
        ValueError: naming ``who`` and ``name``, on anything else.
    """
    a = real_array(x, f"{who}: {name}")
    if isinstance(a, torch.Tensor):
        a = a.cpu().double().numpy()
    finite_array(a, f"{who}: {name}")
    return a


def _shape_arg(shape, who: str) -> tuple[int, int]:
    """``shape`` as ``(m, n)``, two integers ``>= 1`` (numpy integers accepted, floats not)."""
    try:
        m, n = shape
    except (TypeError, ValueError):
        m = n = None
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in (m, n)):
        raise ValueError(f"{who}: shape {shape!r} must be a pair (m, n) of integers >= 1")
    return int(m), int(n)


class GradientOperator:
    """``grad f(W)`` as an ``(m, n)`` linear operator, dense or sparse, in float64.

    Args:
        dense: an ``(m, n)`` ndarray; or
        sparse: a scipy CSR matrix whose pattern is the support ``(rows, cols)``;
            ``rows``, ``cols`` and ``values`` (the entries, in the support's order) make
            :meth:`inner` cost ``O(nnz)`` on a dense ``X``.
    """

    def __init__(self, dense: np.ndarray | None = None, *, sparse=None, rows=None, cols=None, values=None,
                 flat=None):
        if (dense is None) == (sparse is None):
            raise ValueError("give exactly one of dense= or sparse=")
        self.dense, self.sparse = dense, sparse
        self.rows, self.cols, self.values = rows, cols, values
        self.flat = flat  # row-major positions of the support (optional cache)
        self.shape = dense.shape if dense is not None else sparse.shape

    @property
    def matrix(self):
        """The dense ndarray or the scipy sparse matrix."""
        return self.dense if self.dense is not None else self.sparse

    def aslinearoperator(self) -> LinearOperator:
        return aslinearoperator(self.matrix)

    def toarray(self) -> np.ndarray:
        return self.dense if self.dense is not None else self.sparse.toarray()

    def matmat(self, V: np.ndarray) -> np.ndarray:
        """``G @ V`` for ``V`` of shape ``(n, k)``."""
        return np.asarray(self.matrix @ V)

    def rmatmat(self, U: np.ndarray) -> np.ndarray:
        """``G.T @ U`` for ``U`` of shape ``(m, k)``."""
        return np.asarray(self.matrix.T @ U)

    def inner(self, X) -> float:
        """``<G, X>`` (Frobenius) for a dense ``(m, n)`` tensor or array ``X``."""
        if self.dense is not None:
            return float(np.vdot(self.dense, _np(X)))
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().contiguous().numpy()
        flat = self.flat if self.flat is not None else self.rows.astype(np.int64) * self.shape[1] + self.cols
        xs = np.asarray(X).reshape(-1)[flat]
        return float(np.dot(self.values, xs.astype(np.float64, copy=False)))

    def inner_lowrank(self, B: np.ndarray, A: np.ndarray) -> float:
        """``<G, B @ A>`` for ``B`` ``(m, k)`` and ``A`` ``(k, n)``, without forming ``B @ A``."""
        return float(np.sum(self.matmat(np.asarray(A).T) * np.asarray(B)))

    def frobenius_norm(self) -> float:
        return float(np.linalg.norm(self.dense) if self.dense is not None else np.linalg.norm(self.values))


class Objective(ABC):
    """A differentiable function of one ``(m, n)`` matrix.

    Attributes:
        shape: ``(m, n)``.
        smoothness: ``L`` with ``||grad f(X) - grad f(Y)||_F <= L ||X - Y||_F``, or None.
        convex: whether ``f`` is convex.
        quadratic: whether ``f`` is quadratic (then :meth:`curvature` works).
    """

    shape: tuple[int, int]
    smoothness: float | None = None
    convex: bool = True
    quadratic: bool = False

    @property
    def L(self) -> float | None:
        """Alias of :attr:`smoothness`."""
        return self.smoothness

    @abstractmethod
    def value(self, W) -> float:
        """``f(W)`` in float64."""

    @abstractmethod
    def gradient(self, W) -> GradientOperator:
        """``grad f(W)`` as a :class:`GradientOperator`."""

    def value_and_gradient(self, W) -> tuple[float, GradientOperator]:
        """``(f(W), grad f(W))``; objectives that can share work override it."""
        return self.value(W), self.gradient(W)

    @abstractmethod
    def loss(self, W: torch.Tensor) -> torch.Tensor:
        """``f(W)`` as a differentiable torch scalar in ``W``'s dtype (for inner optimizers)."""

    def curvature(self, D) -> float:
        """``<D, H D>`` for quadratics (``H`` the constant Hessian). Others raise."""
        raise NotImplementedError(f"{type(self).__name__} is not quadratic: no closed-form curvature")

    def lower_bound(self, tau: float | None = None, W0=None) -> float:
        """A number ``<= min f`` over ``{W0 + X : ||X||_* <= tau}`` (or everywhere if ``tau`` is None)."""
        return -math.inf

    def along(self, W, W0, B: np.ndarray, A: np.ndarray, shrink: float):
        """Line functions for ``d = B @ A - shrink * (W - W0)``: ``(curvature(), value_at(gamma))``.

        ``curvature()`` is ``<d, H d>`` (quadratics only, else None); ``value_at(g)`` is
        ``f(W + g d)``. The default forms ``d`` densely (float64); sparse objectives override.
        """
        cache = {}

        def d():
            if "d" not in cache:
                X = _np(W) - (0.0 if W0 is None else _np(W0))
                cache["d"] = B @ A - shrink * X if shrink else B @ A
            return cache["d"]

        curv = (lambda: self.curvature(d())) if self.quadratic else None
        return curv, (lambda g: self.value(_np(W) + g * d()))

    def lowrank(self, W0) -> LowRankModel:
        """Evaluate ``f(W0 + P Q^T)`` and its gradient from factors (dense default)."""
        return LowRankModel(self, W0)

    def cvxpy_objective(self, X):
        """``f(X)`` as a cvxpy expression in an ``(m, n)`` ``cvxpy.Variable``."""
        raise NotImplementedError(f"{type(self).__name__} has no cvxpy form")


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
        self.A, self.Y = _data(A, "A", who), _data(Y, "Y", who)
        if self.A.ndim != 2 or self.Y.ndim != 2 or self.A.shape[0] != self.Y.shape[0]:
            raise ValueError(f"A {self.A.shape} and Y {self.Y.shape} must be (p, m) and (p, n)")
        if 0 in self.A.shape + self.Y.shape:
            raise ValueError(f"{who}: A {self.A.shape} and Y {self.Y.shape} need p, m, n >= 1")
        self.shape = (self.A.shape[1], self.Y.shape[1])
        self._s = np.linalg.svd(self.A, compute_uv=False)
        self.smoothness = float(self._s[0] ** 2)
        self._At, self._Yt = torch.from_numpy(self.A), torch.from_numpy(self.Y)

    def value(self, W) -> float:
        _check_shape(W, self.shape, type(self).__name__)
        R = self.A @ _np(W) - self.Y
        return 0.5 * float(np.vdot(R, R))

    def gradient(self, W) -> GradientOperator:
        _check_shape(W, self.shape, type(self).__name__)
        return GradientOperator(self.A.T @ (self.A @ _np(W) - self.Y))

    def loss(self, W):
        _check_shape(W, self.shape, type(self).__name__)
        R = self._At.to(W.dtype) @ W - self._Yt.to(W.dtype)
        return 0.5 * (R * R).sum()

    def curvature(self, D) -> float:
        _check_shape(D, self.shape, type(self).__name__, "D")
        AD = self.A @ _np(D)
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
        w = _np(W)
        return super().value(W) - 0.5 * self.mu * float(np.vdot(w, w))

    def gradient(self, W) -> GradientOperator:
        return GradientOperator(super().gradient(W).dense - self.mu * _np(W))

    def loss(self, W):
        return super().loss(W) - 0.5 * self.mu * (W * W).sum()

    def curvature(self, D) -> float:
        d = _np(D)
        return super().curvature(D) - self.mu * float(np.vdot(d, d))

    def lower_bound(self, tau=None, W0=None) -> float:
        if tau is None:
            return -math.inf if self.mu > 0 else 0.0
        r = (0.0 if W0 is None else float(np.linalg.norm(_np(W0)))) + tau
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
        self.shape = _shape_arg(shape, "MatrixSensing")
        self.ops, self.y = _data(ops, "ops", "MatrixSensing"), _data(y, "y", "MatrixSensing").ravel()
        if self.ops.ndim != 2 or self.y.size < 1 or self.ops.shape != (self.y.size, self.shape[0] * self.shape[1]):
            raise ValueError(f"ops {self.ops.shape} must be (len(y), m*n) = ({self.y.size}, {self.shape[0] * self.shape[1]})")
        self.smoothness = float(np.linalg.norm(self.ops, 2) ** 2)
        self._ot, self._yt = torch.from_numpy(self.ops), torch.from_numpy(self.y)

    def value(self, W) -> float:
        _check_shape(W, self.shape, "MatrixSensing")
        r = self.ops @ _np(W).ravel() - self.y
        return 0.5 * float(r @ r)

    def gradient(self, W) -> GradientOperator:
        _check_shape(W, self.shape, "MatrixSensing")
        r = self.ops @ _np(W).ravel() - self.y
        return GradientOperator((self.ops.T @ r).reshape(self.shape))

    def loss(self, W):
        _check_shape(W, self.shape, "MatrixSensing")
        r = self._ot.to(W.dtype) @ W.reshape(-1) - self._yt.to(W.dtype)
        return 0.5 * (r * r).sum()

    def curvature(self, D) -> float:
        _check_shape(D, self.shape, "MatrixSensing", "D")
        a = self.ops @ _np(D).ravel()
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
        self.Z, self.Y = _data(Z, "Z", "MultiResponseLogistic"), _data(Y, "Y", "MultiResponseLogistic")
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
        _check_shape(W, self.shape, "MultiResponseLogistic")
        margins = self.Y * (self.Z @ _np(W))
        return float(np.logaddexp(0.0, -margins).sum() / self.N)

    def gradient(self, W) -> GradientOperator:
        _check_shape(W, self.shape, "MultiResponseLogistic")
        margins = self.Y * (self.Z @ _np(W))
        weights = -self.Y * np.exp(-np.logaddexp(0.0, margins))  # -y * sigmoid(-margin)
        return GradientOperator(self.Z.T @ weights / self.N)

    def loss(self, W):
        _check_shape(W, self.shape, "MultiResponseLogistic")
        margins = self._Yt.to(W.dtype) * (self._Zt.to(W.dtype) @ W)
        return torch.nn.functional.softplus(-margins).sum() / self.N

    def lower_bound(self, tau=None, W0=None) -> float:
        return 0.0

    def cvxpy_objective(self, X):
        import cvxpy as cp

        return cp.sum(cp.logistic(-cp.multiply(self.Y, self.Z @ X))) / self.N


# --------------------------------------------------------------------- factored evaluation
class LowRankModel:
    """``P, Q -> f(W0 + P Q^T)`` and ``grad f`` there (a :class:`GradientOperator`).

    Args:
        objective: the :class:`Objective`; W0: the ``(m, n)`` base (torch or numpy).
    """

    def __init__(self, objective: Objective, W0) -> None:
        self.objective, self.W0 = objective, np.zeros(objective.shape) if W0 is None else _np(W0)

    def value(self, P: np.ndarray, Q: np.ndarray) -> float:
        return self.objective.value(self.W0 + P @ Q.T)

    def gradient(self, P: np.ndarray, Q: np.ndarray) -> GradientOperator:
        return self.objective.gradient(self.W0 + P @ Q.T)

    def value_and_gradient(self, P: np.ndarray, Q: np.ndarray) -> tuple[float, GradientOperator]:
        return self.objective.value_and_gradient(self.W0 + P @ Q.T)


from .completion import CauchyCompletion, MatrixCompletion
