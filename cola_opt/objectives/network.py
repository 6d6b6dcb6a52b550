"""A network layer as an objective: a two-layer MLP's loss in its first weight matrix.

This is the shape of objective that COLA fine-tunes (a weight matrix inside a network,
trained through a nonlinearity), small enough to check exactly: the loss is nonconvex in
``W``, its gradient is closed-form, and the function a knot must keep is the network's
output on the data.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import GradientOperator, Objective, as_data, as_float64, check_shape

__all__ = ["TwoLayerMLP"]


class TwoLayerMLP(Objective):
    """``f(W) = 1/(2N) ||tanh(Z W^T) V^T - Y||_F^2``: squared loss of ``x -> V tanh(W x)`` in ``W``.

    Args:
        Z: ``(N, d)`` inputs; V: ``(o, h)`` the fixed second layer; Y: ``(N, o)`` targets.
        The variable ``W`` is the ``(h, d)`` first layer (the matrix a LoRA site adapts).

    The gradient is ``grad f = ((R V / N) * (1 - H^2))^T Z`` with ``H = tanh(Z W^T)`` and
    ``R = H V^T - Y``. Nonconvex (``convex = False``); no global smoothness constant is
    given (``smoothness = None``); ``f >= 0``.

    Raises:
        ValueError: on shapes that do not chain (``Z`` ``(N, d)``, ``V`` ``(o, h)``, ``Y``
            ``(N, o)``, all dimensions ``>= 1``) or entries that are not finite real numbers.
    """

    convex = False

    def __init__(self, Z, V, Y) -> None:
        who = type(self).__name__
        self.Z, self.V, self.Y = as_data(Z, "Z", who), as_data(V, "V", who), as_data(Y, "Y", who)
        if (self.Z.ndim, self.V.ndim, self.Y.ndim) != (2, 2, 2) or self.Y.shape != (self.Z.shape[0], self.V.shape[0]) \
                or 0 in self.Z.shape + self.V.shape:
            raise ValueError(f"{who}: Z {self.Z.shape}, V {self.V.shape}, Y {self.Y.shape} must be (N, d), (o, h), "
                             "(N, o) with every dimension >= 1")
        self.N = self.Z.shape[0]
        self.shape = (self.V.shape[1], self.Z.shape[1])
        self._t = tuple(torch.from_numpy(a) for a in (self.Z, self.V, self.Y))

    def outputs(self, W) -> np.ndarray:
        """The network's outputs ``tanh(Z W^T) V^T`` on the data, ``(N, o)`` float64."""
        check_shape(W, self.shape, type(self).__name__)
        return np.tanh(self.Z @ as_float64(W).T) @ self.V.T

    def value(self, W) -> float:
        R = self.outputs(W) - self.Y
        return 0.5 * float(np.vdot(R, R)) / self.N

    def gradient(self, W) -> GradientOperator:
        check_shape(W, self.shape, type(self).__name__)
        H = np.tanh(self.Z @ as_float64(W).T)
        R = H @ self.V.T - self.Y
        return GradientOperator((((R @ self.V) / self.N) * (1.0 - H * H)).T @ self.Z)

    def loss(self, W):
        check_shape(W, self.shape, type(self).__name__)
        Z, V, Y = (t.to(W.dtype) for t in self._t)
        R = torch.tanh(Z @ W.t()) @ V.t() - Y
        return 0.5 * (R * R).sum() / self.N

    def lower_bound(self, tau=None, W0=None) -> float:
        return 0.0
