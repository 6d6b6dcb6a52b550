"""Explicit objectives over one matrix variable ``W`` of shape ``(m, n)``.

- :mod:`.base`: the :class:`Objective` interface, :class:`GradientOperator` and
  :class:`LowRankModel` (``f(W0 + P Q^T)``);
- :mod:`.smooth`: least squares, indefinite least squares, matrix sensing, multi-response logistic;
- :mod:`.completion`: matrix completion (squared and Cauchy losses) over observed entries;
- :mod:`.network`: a two-layer MLP's loss in its first layer (a network layer to fine-tune);
- :mod:`.problems`: seeded instance generators (a ground truth, a radius, ``f*``);
- :mod:`.reference`: ``f*`` through cvxpy, and certificates.
"""

from .base import GradientOperator, LowRankModel, Objective
from .completion import CauchyCompletion, MatrixCompletion
from .network import TwoLayerMLP
from .smooth import IndefiniteLeastSquares, MatrixLeastSquares, MatrixSensing, MultiResponseLogistic

__all__ = [
    "CauchyCompletion",
    "GradientOperator",
    "IndefiniteLeastSquares",
    "LowRankModel",
    "MatrixCompletion",
    "MatrixLeastSquares",
    "MatrixSensing",
    "MultiResponseLogistic",
    "Objective",
    "TwoLayerMLP",
]
