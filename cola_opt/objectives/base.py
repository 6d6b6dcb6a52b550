"""The objective interface, over one matrix variable ``W`` of shape ``(m, n)``.

Each objective gives its value, its gradient (as a :class:`GradientOperator`, dense or
sparse), a differentiable torch ``loss`` for inner optimizers, its smoothness constant
``L`` in the Frobenius norm where known, and, when convex, a cvxpy expression so that
:mod:`cola_opt.objectives.reference` can compute ``f*``. Quadratics also give the curvature
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

from ..checks import finite_array, real_array

__all__ = [
    "GradientOperator",
    "LowRankModel",
    "Objective",
    "as_data",
    "as_float64",
    "check_shape",
    "shape_arg",
]


def as_float64(W) -> np.ndarray:
    if isinstance(W, torch.Tensor):
        return W.detach().cpu().double().numpy()
    return np.asarray(W, dtype=np.float64)


def check_shape(W, shape, who: str, name: str = "W") -> None:
    got = tuple(W.shape) if hasattr(W, "shape") else np.shape(W)
    if got != tuple(shape):
        raise ValueError(f"{who} expects {name} of shape {tuple(shape)}, got {got}")


def as_data(x, name: str, who: str) -> np.ndarray:
    """Construction data ``x`` as a float64 array of finite real numbers.

    Raises:
        ValueError: naming ``who`` and ``name``, on anything else.
    """
    a = real_array(x, f"{who}: {name}")
    if isinstance(a, torch.Tensor):
        a = a.cpu().double().numpy()
    finite_array(a, f"{who}: {name}")
    return a


def shape_arg(shape, who: str) -> tuple[int, int]:
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
            return float(np.vdot(self.dense, as_float64(X)))
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
                X = as_float64(W) - (0.0 if W0 is None else as_float64(W0))
                cache["d"] = B @ A - shrink * X if shrink else B @ A
            return cache["d"]

        curv = (lambda: self.curvature(d())) if self.quadratic else None
        return curv, (lambda g: self.value(as_float64(W) + g * d()))

    def lowrank(self, W0) -> LowRankModel:
        """Evaluate ``f(W0 + P Q^T)`` and its gradient from factors (dense default)."""
        return LowRankModel(self, W0)

    def cvxpy_objective(self, X):
        """``f(X)`` as a cvxpy expression in an ``(m, n)`` ``cvxpy.Variable``."""
        raise NotImplementedError(f"{type(self).__name__} has no cvxpy form")


# --------------------------------------------------------------------- factored evaluation
class LowRankModel:
    """``P, Q -> f(W0 + P Q^T)`` and ``grad f`` there (a :class:`GradientOperator`).

    Args:
        objective: the :class:`Objective`; W0: the ``(m, n)`` base (torch or numpy).
    """

    def __init__(self, objective: Objective, W0) -> None:
        self.objective, self.W0 = objective, np.zeros(objective.shape) if W0 is None else as_float64(W0)

    def value(self, P: np.ndarray, Q: np.ndarray) -> float:
        return self.objective.value(self.W0 + P @ Q.T)

    def gradient(self, P: np.ndarray, Q: np.ndarray) -> GradientOperator:
        return self.objective.gradient(self.W0 + P @ Q.T)

    def value_and_gradient(self, P: np.ndarray, Q: np.ndarray) -> tuple[float, GradientOperator]:
        return self.objective.value_and_gradient(self.W0 + P @ Q.T)
