"""Mini-batch gradients for the stochastic form of COLA's Theorem 4.1 (claim C4).

Each wrapper keeps its objective's value, smoothness and lower bound, and answers
``gradient(W)`` with an unbiased mini-batch estimate ``g_hat`` (a uniform batch of ``b``
terms of the finite sum, without replacement, scaled by ``N / b``), drawn afresh at every
call from its own seeded generator. Every ``g_hat`` handed out is kept in ``drawn``, so
that the check can compare it with the full gradient.
"""

from __future__ import annotations

import numpy as np

from cola_opt.objectives.base import GradientOperator, Objective, as_float64

__all__ = ["MiniBatchEntries", "MiniBatchRows"]


class _MiniBatch(Objective):
    def __init__(self, base: Objective, batch: int, seed: int) -> None:
        self.base, self.batch = base, int(batch)
        self.shape, self.smoothness, self.convex, self.quadratic = base.shape, base.smoothness, False, False
        self.rng = np.random.default_rng(seed)
        self.drawn: list[np.ndarray] = []

    def value(self, W) -> float:
        return self.base.value(W)

    def loss(self, W):
        raise NotImplementedError("a mini-batch objective serves the linear target only")

    def lower_bound(self, tau=None, W0=None) -> float:
        return self.base.lower_bound(tau, W0)

    def gradient(self, W) -> GradientOperator:
        g = self._estimate(as_float64(W))
        self.drawn.append(g)
        return GradientOperator(g)


class MiniBatchRows(_MiniBatch):
    """``1/2 ||A W - Y||^2 - mu/2 ||W||^2`` (an :class:`IndefiniteLeastSquares`) over the ``p`` rows of ``A``.

    ``g_hat = (p / b) sum_{i in batch} a_i (a_i^T W - y_i) - mu W``.
    """

    def _estimate(self, W: np.ndarray) -> np.ndarray:
        A, Y = self.base.A, self.base.Y
        idx = self.rng.choice(A.shape[0], size=self.batch, replace=False)
        Ab = A[idx]
        return (A.shape[0] / self.batch) * Ab.T @ (Ab @ W - Y[idx]) - self.base.mu * W


class MiniBatchEntries(_MiniBatch):
    """A loss over observed entries (a :class:`CauchyCompletion`), over a batch of ``b`` of the ``|Omega|`` entries."""

    def _estimate(self, W: np.ndarray) -> np.ndarray:
        base = self.base
        idx = self.rng.choice(base.rows.size, size=self.batch, replace=False)
        entries = np.zeros(base.rows.size)
        entries[idx] = base.gradient_entries(base.gather(W))[idx] * (base.rows.size / self.batch)
        g = np.zeros(self.shape)
        np.add.at(g, (base.rows, base.cols), entries)
        return g
