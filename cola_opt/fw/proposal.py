"""What a residual solver answers: one :class:`Proposal` per link.

Every oracle (exact LMO, block LMO, COLA's inexact link) and the factor refinement answer
one call, ``propose(state)``, with one proposal: the factors of an update
``Delta = B @ A``, the kind of step, the shrink ``rho`` and the largest step ``gamma_max``
along the direction ``d = Delta - rho X``. The driver
(:class:`cola_opt.fw.solver.ChainSolver`) picks ``gamma`` in ``[0, gamma_max]`` with its step
rule and merges ``W <- W + gamma d`` by one knot of the chain. A proposal also keeps the
books of its step: :meth:`Proposal.book` updates the active set, :meth:`Proposal.rank_after`
bounds the rank of ``X`` after it.

This module's :class:`Proposal` is the Frank-Wolfe step (``X <- (1 - gamma) X + gamma Delta``
on the ball, ``rho = 1``; COLA's unconstrained knot, ``rho = 0``). Away and pairwise steps
are subclasses in :mod:`cola_opt.fw.away` and :mod:`cola_opt.fw.pairwise`; the refinement's
is in :mod:`cola_opt.fw.refine`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .active_set import ActiveSet

__all__ = ["Proposal", "frank_wolfe"]


@dataclass
class Proposal:
    """One answer of a residual solver: ``Delta = B @ A`` and the line ``W + gamma (Delta - shrink X)``.

    Attributes:
        B: ``(m, k)`` float64; A: ``(k, n)`` float64 (``Delta`` includes LoRA's scaling).
        kind: ``"fw"`` (an LMO atom), ``"block"`` (a block-LMO point), ``"inexact"`` (a
            trained link), ``"away"``, ``"pairwise"`` or ``"refine"``; the trace's ``direction``.
        gamma_max: the largest feasible step (1 for a Frank-Wolfe step on the ball; ``inf``
            for an unconstrained link).
        shrink: ``rho``, the coefficient of ``X = W - W0`` in the direction.
        trained: the factors already are the chain's current link (the inexact oracle
            trained them in place): the knot merges the link as it is, not ``B`` and ``A``.
        value: ``<G, Delta>`` when the oracle knows it (the LMO's ``-tau sigma_1``), else NaN.
        oracle_error: ``eps_t = <G, Delta> - min_S <G, S>`` of an approximate LMO, else NaN.
        steps: inner steps spent on the proposal (inner optimizer steps of a link, accepted
            refinement steps).
        losses: the inner steps' losses, when the oracle records them.
    """

    B: np.ndarray
    A: np.ndarray
    kind: str
    gamma_max: float = 1.0
    shrink: float = 1.0
    trained: bool = False
    value: float = math.nan
    oracle_error: float = math.nan
    steps: int = 0
    losses: list[float] = field(default_factory=list)

    @property
    def rank(self) -> int:
        """``k``, the number of columns of ``B`` (a bound on ``rank(Delta)``)."""
        return int(self.B.shape[1])

    def book(self, atoms: ActiveSet, gamma: float) -> None:
        """Keep ``atoms`` in step with a Frank-Wolfe step: ``X <- (1 - gamma) X + gamma Delta``."""
        atoms.add_frank_wolfe(self.B, self.A, gamma)

    def rank_after(self, rank: int, gamma: float, atoms: ActiveSet | None) -> int:
        """A bound on ``rank(X)`` after the step, given the bound ``rank`` before it.

        ``X' = (1 - gamma rho) X + gamma Delta``: ``rank(Delta) <= k`` when ``gamma = rho = 1``
        (the old ``X`` is gone), else ``rank(X) + k`` (subadditivity).
        """
        return self.rank if (gamma == 1.0 and self.shrink == 1.0) else rank + self.rank


def frank_wolfe(proposal: Proposal, state, atoms: ActiveSet | None) -> Proposal:
    """The vanilla direction: the oracle's proposal as it is (``variant="vanilla"``)."""
    return proposal
