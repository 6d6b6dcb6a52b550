"""Losses over observed entries: matrix completion (convex) and Cauchy-loss completion (nonconvex).

Both store the observed set ``Omega`` as ``(rows, cols, values)`` (int32 indices when
``m n < 2^31``), return sparse gradients with support ``Omega`` (scipy CSR sharing one
index pattern), and evaluate ``f(W0 + P Q^T)`` from factors on ``Omega`` only, so that
nothing of size ``m x n`` is formed except ``W`` itself.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ..checks import real
from .base import GradientOperator, LowRankModel, Objective, as_data, check_shape, shape_arg

__all__ = ["CauchyCompletion", "MatrixCompletion"]


class _Observed(Objective):
    """Shared storage for losses over observed entries ``(rows[i], cols[i]) -> values[i]``."""

    def __init__(self, rows, cols, values, shape) -> None:
        who = type(self).__name__
        self.shape = shape_arg(shape, who)
        itype = np.int32 if self.shape[0] * self.shape[1] < 2**31 else np.int64  # halves index memory
        rows, cols = self._index_array(rows, "rows", who), self._index_array(cols, "cols", who)
        values = as_data(values, "values", who)
        if not (rows.shape == cols.shape == values.shape) or rows.ndim != 1:
            raise ValueError("rows, cols and values must be 1-D arrays of one length")
        m, n = self.shape
        if rows.size and (rows.min() < 0 or rows.max() >= m or cols.min() < 0 or cols.max() >= n):
            raise ValueError(f"observed indices fall outside the shape {self.shape}")  # checked before the cast
        self.rows, self.cols, self.values = rows.astype(itype, copy=False), cols.astype(itype, copy=False), values
        self.flat = self.rows.astype(itype) * itype(self.shape[1]) + self.cols  # row-major positions of Omega
        self._vt = torch.from_numpy(self.values)
        self._torch_index = None
        # The CSR pattern is built once; gradients share it with new data (no copies).
        if self.rows.size and np.all(np.diff(self.flat) > 0):
            self._order = None  # already in row-major order, no duplicates
        else:
            self._order = np.lexsort((self.cols, self.rows))
        r = self.rows if self._order is None else self.rows[self._order]
        c = self.cols if self._order is None else self.cols[self._order]
        self._indptr = np.searchsorted(r, np.arange(self.shape[0] + 1)).astype(itype)
        self._indices = np.ascontiguousarray(c, dtype=itype)

    @staticmethod
    def _index_array(x, name: str, who: str) -> np.ndarray:
        a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if a.size and a.dtype.kind not in "iu":  # floats would be truncated (0.7 -> 0), bools read as 0/1
            raise ValueError(f"{who}: {name} must be integer indices, got dtype {a.dtype}")
        return a if a.size else a.astype(np.int64)

    def _torch_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """int64 (row, column) indices for torch indexing (built on first use: inner optimizers only)."""
        if self._torch_index is None:
            self._torch_index = (torch.from_numpy(self.rows.astype(np.int64)), torch.from_numpy(self.cols.astype(np.int64)))
        return self._torch_index

    @property
    def _rt(self) -> torch.Tensor:
        return self._torch_indices()[0]

    @property
    def _ct(self) -> torch.Tensor:
        return self._torch_indices()[1]

    def value_and_gradient(self, W):
        check_shape(W, self.shape, type(self).__name__)
        w = self.gather(W)
        return self.value_from_entries(w), self.sparse_gradient(self.gradient_entries(w))

    def gather(self, W) -> np.ndarray:
        """``W[rows, cols]`` in float64."""
        if isinstance(W, torch.Tensor):
            W = W.detach().cpu().contiguous().numpy()
        return np.asarray(W).reshape(-1)[self.flat].astype(np.float64)

    def residual(self, W) -> np.ndarray:
        return self.gather(W) - self.values

    def value_from_entries(self, w: np.ndarray) -> float:
        """``f`` from the observed entries ``w = W[rows, cols]`` (float64, ``(|Omega|,)``)."""
        raise NotImplementedError

    def gradient_entries(self, w: np.ndarray) -> np.ndarray:
        """The gradient's entries on ``Omega`` from ``w = W[rows, cols]``, ``(|Omega|,)`` float64."""
        raise NotImplementedError

    def sparse_gradient(self, entries: np.ndarray) -> GradientOperator:
        """The sparse :class:`GradientOperator` with ``entries`` (``(|Omega|,)``, the support's order) on ``Omega``."""
        data = entries if self._order is None else entries[self._order]
        G = sp.csr_matrix((data, self._indices, self._indptr), shape=self.shape, copy=False)
        return GradientOperator(sparse=G, rows=self.rows, cols=self.cols, values=entries, flat=self.flat)

    def along(self, W, W0, B, A, shrink):
        w = self.gather(W)
        d = np.zeros(self.rows.size)
        step = 1 << 18
        for i in range(0, d.size, step):  # in chunks: no |Omega|-sized temporaries
            sl = slice(i, i + step)
            r, c = self.rows[sl], self.cols[sl]
            for k in range(B.shape[1]):
                d[sl] += B[r, k] * A[k, c]
        if shrink:
            d -= shrink * w
            if W0 is not None:
                d += shrink * self.gather(W0)
        curv = (lambda: float(np.dot(d, d))) if self.quadratic else None
        return curv, (lambda g: self.value_from_entries(w + g * d))

    def lowrank(self, W0) -> LowRankModel:
        return _ObservedLowRank(self, W0)

    def selection_cvxpy(self, X):
        """``X[rows, cols]`` as a cvxpy expression (row-major selection of ``vec(X)``)."""
        import cvxpy as cp

        m, n = self.shape
        S = sp.csr_matrix((np.ones(self.rows.size), (np.arange(self.rows.size), self.rows * n + self.cols)),
                          shape=(self.rows.size, m * n))
        return S @ cp.vec(X, order="C")


class MatrixCompletion(_Observed):
    """``f(W) = 1/2 sum_{(i,j) in Omega} (W_ij - M_ij)^2`` over the observed set ``Omega``.

    The Hessian is the projection onto ``Omega``, so ``L = 1``. The gradient is sparse
    (support ``Omega``); Candes and Recht (2009) pose the nuclear-norm version.

    Args:
        rows, cols: 1-D int arrays of observed positions; values: the observed ``M_ij``.
        shape: ``(m, n)``.

    Raises:
        ValueError: if ``shape`` is not two integers ``>= 1``, ``rows``/``cols`` are not of
            an integer dtype, on mismatched lengths, indices outside ``shape``, or values
            that are not finite.
    """

    quadratic = True
    smoothness = 1.0

    def value(self, W) -> float:
        check_shape(W, self.shape, "MatrixCompletion")
        return self.value_from_entries(self.gather(W))

    def value_from_entries(self, w: np.ndarray) -> float:
        r = w - self.values
        return 0.5 * float(np.dot(r, r))

    def gradient_entries(self, w: np.ndarray) -> np.ndarray:
        return w - self.values

    def gradient(self, W) -> GradientOperator:
        check_shape(W, self.shape, "MatrixCompletion")
        return self.sparse_gradient(self.residual(W))

    def loss(self, W):
        check_shape(W, self.shape, "MatrixCompletion")
        r = W[self._rt, self._ct] - self._vt.to(W.dtype)
        return 0.5 * (r * r).sum()

    def curvature(self, D) -> float:
        check_shape(D, self.shape, "MatrixCompletion", "D")
        d = self.gather(D)
        return float(np.dot(d, d))

    def lower_bound(self, tau=None, W0=None) -> float:
        return 0.0

    def cvxpy_objective(self, X):
        import cvxpy as cp

        return 0.5 * cp.sum_squares(self.selection_cvxpy(X) - self.values)


class CauchyCompletion(_Observed):
    """Nonconvex robust completion: ``f(W) = sum_Omega c^2/2 log(1 + ((W_ij - M_ij)/c)^2)``.

    ``rho(z) = c^2/2 log(1 + z^2/c^2)`` has ``rho''(z) = (1 - z^2/c^2) / (1 + z^2/c^2)^2``
    in ``[-1/8, 1]``, so ``L = 1``; ``f >= 0`` gives the lower bound 0. Nonconvex
    wherever a residual exceeds ``c``.

    Raises:
        ValueError: if ``c`` is not a finite number ``> 0``, or as :class:`MatrixCompletion`.
    """

    convex = False
    smoothness = 1.0

    def __init__(self, rows, cols, values, shape, c: float = 1.0) -> None:
        c = real(c, "Cauchy scale c", above=0)
        super().__init__(rows, cols, values, shape)
        self.c = c

    def value(self, W) -> float:
        check_shape(W, self.shape, "CauchyCompletion")
        return self.value_from_entries(self.gather(W))

    def value_from_entries(self, w: np.ndarray) -> float:
        z = (w - self.values) / self.c
        return 0.5 * self.c**2 * float(np.log1p(z * z).sum())

    def gradient_entries(self, w: np.ndarray) -> np.ndarray:
        r = w - self.values
        return r / (1.0 + (r / self.c) ** 2)

    def gradient(self, W) -> GradientOperator:
        check_shape(W, self.shape, "CauchyCompletion")
        r = self.residual(W)
        return self.sparse_gradient(r / (1.0 + (r / self.c) ** 2))

    def loss(self, W):
        check_shape(W, self.shape, "CauchyCompletion")
        z = (W[self._rt, self._ct] - self._vt.to(W.dtype)) / self.c
        return 0.5 * self.c**2 * torch.log1p(z * z).sum()

    def lower_bound(self, tau=None, W0=None) -> float:
        return 0.0


class _ObservedLowRank(LowRankModel):
    """Factored evaluation touching only the observed entries: ``O(|Omega| k)`` per call."""

    def __init__(self, objective: _Observed, W0) -> None:
        self.objective = objective
        self.w0 = 0.0 if W0 is None else objective.gather(W0)

    def _entries(self, P, Q):
        rows, cols = self.objective.rows, self.objective.cols
        if P.shape[0] * Q.shape[0] <= 4_000_000:  # small: one BLAS product, then a gather
            return self.w0 + (P @ Q.T).reshape(-1)[self.objective.flat]
        s = np.empty(rows.size)
        step = max(1024, (1 << 22) // max(1, P.shape[1]))  # chunks of ~32 MB: P[rows] would be |Omega| x k
        for i in range(0, rows.size, step):
            sl = slice(i, i + step)
            s[sl] = np.einsum("ij,ij->i", P[rows[sl]], Q[cols[sl]])
        return self.w0 + s

    def value(self, P, Q) -> float:
        return self.objective.value_from_entries(self._entries(P, Q))

    def gradient(self, P, Q) -> GradientOperator:
        return self.objective.sparse_gradient(self.objective.gradient_entries(self._entries(P, Q)))

    def value_and_gradient(self, P, Q):
        w = self._entries(P, Q)
        return self.objective.value_from_entries(w), self.objective.sparse_gradient(self.objective.gradient_entries(w))
