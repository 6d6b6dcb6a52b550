"""What one link of the Frank-Wolfe driver sees: the residual, the measured state, the step's line.

- :class:`Residual`: ``X = W - W0`` of the chain's site, formed densely only when a
  consumer needs it (a sparse gradient needs ``<G, X>`` on its support only);
- :class:`LinkState`: the iterate ``W_t`` measured (``f``, ``G``, ``<G, X>``, the gap set's
  LMO answer) and the chain it acts on: what an oracle's ``propose(state)`` reads;
- :func:`line_of`: the :class:`~cola_opt.fw.step_sizes.Line` of a proposal, with only
  what the step rule ``needs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..chain.optimizer import ResidualLowRankOptimizer
from ..chain.sites import TensorSite
from ..objectives.base import GradientOperator, Objective
from .proposal import Proposal
from .sets import ConstraintSet, LMOAnswer
from .step_sizes import Line

__all__ = ["LinkState", "Residual", "as_tensor", "line_of"]


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """A float64 array as a float32 tensor (the chain's dtype)."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).float()


class Residual:
    """``X = W - W0`` of a site, materialised only when a dense consumer asks for it.

    Args:
        site: the chain's :class:`~cola_opt.chain.sites.TensorSite` (built with ``keep_initial``).
        w0_zero: ``W0 = 0``, so that ``X = W`` (saves the subtractions).
    """

    def __init__(self, site: TensorSite, w0_zero: bool = False) -> None:
        self.site, self._dense, self.w0_zero = site, None, w0_zero

    def dense(self) -> torch.Tensor:
        """The ``(m, n)`` float32 residual (cached until :meth:`release`)."""
        if self._dense is None:
            self._dense = self.site.residual()
        return self._dense

    def release(self) -> None:
        """Drop the cached dense residual."""
        self._dense = None

    def inner(self, G: GradientOperator) -> float:
        """``<G, X>``; a sparse gradient needs only ``X`` on its support."""
        if G.dense is not None:
            return G.inner(self.dense())
        gw = G.inner(self.site.weight)
        return gw if self.w0_zero else gw - G.inner(self.site.initial)

    def times(self, At: torch.Tensor) -> torch.Tensor:
        """``X @ At`` for ``At`` of shape ``(n, k)``, as ``W @ At - W0 @ At``."""
        if self._dense is not None:
            return self._dense @ At
        wa = self.site.weight.float() @ At
        return wa if self.w0_zero else wa - self.site.initial @ At

    def norm2(self) -> float:
        """``||X||_F^2`` in float64, accumulated over row blocks."""
        if self._dense is not None:
            return float(torch.linalg.vector_norm(self._dense).double() ** 2)
        total = 0.0
        for blk in self.site.row_blocks():
            part = self.site.weight[blk].float()
            if not self.w0_zero:
                part = part - self.site.initial[blk]
            total += float(torch.linalg.vector_norm(part).double() ** 2)
        return total


@dataclass
class LinkState:
    """The measured iterate ``W_t`` and the chain: what an oracle's ``propose(state)`` reads.

    Attributes:
        t: the 0-based link index; svd_seed: the seed of this link's SVD start vectors.
        f: ``f(W_t)``; G: ``grad f(W_t)``; X: the :class:`Residual` ``W_t - W0``; gx: ``<G, X>``.
        gap_answer: the gap set's LMO answer at ``G`` (None on an unbounded gap set).
        gap_is_constraint: whether the gap set is the constraint set (then ``gap_answer``
            is the constraint's LMO answer too).
        constraint: the set of ``X``; objective: ``f``.
        chain: the :class:`~cola_opt.chain.optimizer.ResidualLowRankOptimizer`; site: its one site.
    """

    t: int
    svd_seed: int
    f: float
    G: GradientOperator
    X: Residual
    gx: float
    gap_answer: LMOAnswer | None
    gap_is_constraint: bool
    constraint: ConstraintSet
    objective: Objective
    chain: ResidualLowRankOptimizer
    site: TensorSite

    def lmo(self, method: str = "auto") -> LMOAnswer:
        """The constraint's LMO at ``G``: the gap's answer when the gap set is the constraint."""
        if self.gap_answer is not None and self.gap_is_constraint:
            return self.gap_answer
        return self.constraint.lmo(self.G, method=method, seed=self.svd_seed)


def line_of(state: LinkState, p: Proposal, needs) -> Line:
    """The line ``gamma -> W_t + gamma (Delta - rho X)`` of proposal ``p``, for a rule that ``needs`` these.

    ``slope = <G, Delta> - rho <G, X>``; ``||d||^2 = ||B A||^2 - 2 rho <B A, X> + rho^2 ||X||^2``
    (only for ``"norm2"``); the curvature and the values along the line come from
    :meth:`cola_opt.objectives.base.Objective.along` (only for ``"curvature"`` or ``"value"``).
    """
    B, A, shrink = p.B, p.A, p.shrink
    norm2 = math.nan
    if "norm2" in needs:
        ba2 = float(np.sum((B.T @ B) * (A @ A.T)))
        bax = float((as_tensor(B) * state.X.times(as_tensor(A).t())).double().sum()) if shrink != 0.0 else 0.0
        x2 = state.X.norm2() if shrink != 0.0 else 0.0
        norm2 = max(ba2 - 2 * shrink * bax + shrink * shrink * x2, 0.0)
    curv = value_at = None
    if "curvature" in needs or "value" in needs:
        site = state.site
        w0 = None if state.X.w0_zero else site.initial
        curv, value_at = state.objective.along(site.weight, w0, B, A, shrink)
    return Line(t=state.t, f=state.f, slope=state.G.inner_lowrank(B, A) - shrink * state.gx, norm2=norm2,
                gamma_max=p.gamma_max, smoothness=state.objective.smoothness, curvature=curv, value_at=value_at)
