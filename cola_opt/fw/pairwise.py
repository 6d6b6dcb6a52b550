"""Pairwise steps (Lacoste-Julien and Jaggi 2015, Algorithm 2).

Over the active set (:class:`cola_opt.fw.active_set.ActiveSet`), the pairwise direction
moves weight from the away atom ``a = argmax_i <G, a_i>`` straight to the Frank-Wolfe atom
``S``: ``d = S - a``, with the largest step ``lambda_a``, the away atom's weight. ``X``'s
other weights do not change, so ``shrink = 0``; the merged update is the rank-2
``Delta = S - a`` (rank 1 when the away atom is the zero matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .active_set import ActiveSet
from .proposal import Proposal

__all__ = ["PairwiseStep", "pairwise"]


@dataclass
class PairwiseStep(Proposal):
    """``d = S - a``: ``S = tau u v^T`` the FW atom, ``a`` the active atom ``index`` (None: zero)."""

    index: int | None = None
    u: np.ndarray | None = None
    v: np.ndarray | None = None

    def book(self, atoms: ActiveSet, gamma: float) -> None:
        """``X <- X + gamma (S - a)``: weight ``gamma`` moves from ``a`` to ``S``."""
        atoms.pairwise_step(self.index, self.u, self.v, gamma)

    def rank_after(self, rank: int, gamma: float, atoms: ActiveSet | None) -> int:
        """The number of active atoms (each of rank 1)."""
        return len(atoms)


def pairwise(fw: Proposal, state, atoms: ActiveSet) -> PairwiseStep:
    """The pairwise step from the away atom of ``atoms`` to the exact LMO's atom ``fw``.

    Args:
        fw: the exact LMO's rank-1 atom ``S = B @ A`` with ``B = -tau u`` (``(m, 1)``).
        state: the link's :class:`cola_opt.fw.link.LinkState` (its gradient ``G``).
        atoms: the active set of ``X``.
    """
    index, _ = atoms.away_atom(state.G)
    lam = atoms.weight(index)
    B, A = fw.B, fw.A
    if index is not None:
        aB, aA = atoms.atom_factors(index)
        B, A = np.hstack([fw.B, -aB]), np.vstack([fw.A, aA])
    return PairwiseStep(B, A, "pairwise", gamma_max=lam, shrink=0.0, index=index,
                        u=fw.B[:, 0] / atoms.tau, v=fw.A[0])
