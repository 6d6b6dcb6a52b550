"""Away steps (Guelat and Marcotte 1986; Lacoste-Julien and Jaggi 2015, Algorithm 1).

Over the active set ``X = sum_i lambda_i a_i`` (atoms ``a_i = tau u_i v_i^T`` and the zero
matrix, :class:`cola_opt.fw.active_set.ActiveSet`), the away direction moves ``X`` away from
the atom ``a`` most aligned with the gradient, ``a = argmax_i <G, a_i>``:
``d = X - a``, with the largest step ``lambda_a / (1 - lambda_a)`` that keeps every weight
``>= 0`` (a drop step when taken in full). It is taken instead of the Frank-Wolfe
direction ``S - X`` when its slope is steeper: ``<G, X - a> < <G, S - X>``.

In the chain's terms the away step merges ``Delta = -a`` with ``shrink = -1``:
``W + gamma (Delta - shrink X) = W + gamma (X - a)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .active_set import ActiveSet
from .proposal import Proposal

__all__ = ["AwayStep", "away_or_frank_wolfe"]


@dataclass
class AwayStep(Proposal):
    """``d = X - a`` for the active atom ``a`` (``index`` None: the zero atom)."""

    index: int | None = None

    def book(self, atoms: ActiveSet, gamma: float) -> None:
        """``X <- (1 + gamma) X - gamma a``; atoms whose weight reaches 0 are dropped."""
        atoms.away_step(self.index, gamma)

    def rank_after(self, rank: int, gamma: float, atoms: ActiveSet | None) -> int:
        """The number of active atoms (each of rank 1)."""
        return len(atoms)


def away_or_frank_wolfe(fw: Proposal, state, atoms: ActiveSet) -> Proposal:
    """The away step from ``atoms`` if it is steeper than the Frank-Wolfe proposal ``fw``, else ``fw``.

    Args:
        fw: the exact LMO's atom ``S`` (a rank-1 :class:`Proposal` with its ``value = <G, S>``).
        state: the link's :class:`cola_opt.fw.link.LinkState` (its gradient ``G`` and ``<G, X>``).
        atoms: the active set of ``X``.
    """
    index, away_value = atoms.away_atom(state.G)
    lam = atoms.weight(index)
    if not (state.gx - away_value < fw.value - state.gx and lam < 1.0 - 1e-12):
        return fw
    m, n = state.G.shape
    aB, aA = atoms.atom_factors(index) if index is not None else (np.zeros((m, 1)), np.zeros((1, n)))
    return AwayStep(-aB, aA, "away", gamma_max=lam / (1.0 - lam), shrink=-1.0, index=index)
