"""Factor refinement: polish the iterate's low-rank factors between LMO steps.

COLA's idea applied to the convex problem, in the spirit of in-face directions (Freund,
Grigas and Mazumder 2017) and of the hybrid FW + local search of Laue (2012): keep the
residual as ``X = P Q^T`` with ``k`` columns and take projected gradient steps on
``phi(P, Q) = f(W0 + P Q^T)`` over the Burer-Monteiro ball
``(||P||_F^2 + ||Q||_F^2) / 2 <= tau``. Since ``||P Q^T||_* <= (||P||^2 + ||Q||^2) / 2``
(with equality for balanced factors of an SVD), every refined point stays in the nuclear
ball, and the ball in ``(P, Q)`` space is Euclidean, so its projection is a rescaling.

Each accepted step satisfies the projected-gradient sufficient decrease
``phi(new) <= phi + <grad, new - old> + ||new - old||^2 / (2 eta)``, which implies
``phi(new) <= phi(old)``: refinement never increases ``f``. Hence any Frank-Wolfe bound
proven from the one-step inequality ``f(x_{t+1}) <= f(x_t + gamma_t (s_t - x_t))``
(Jaggi 2013, Theorem 1; Lacoste-Julien 2016, Theorem 1) still holds for the refined run.

Like an oracle, the refinement answers one call with one proposal
(:meth:`FactorRefinement.propose`): the refined ``X`` itself, merged by the driver with
``gamma = 1, shrink = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..checks import integer, real
from .active_set import ActiveSet
from .proposal import Proposal
from .spectral import compress_factors

__all__ = ["FactorRefinement", "RefineInfo", "RefinedFactors"]


@dataclass
class RefineInfo:
    """What a refinement did: steps taken, backtracks, ``f`` before and after, final rank."""

    steps: int
    backtracks: int
    f_before: float
    f_after: float
    rank: int


@dataclass
class RefinedFactors(Proposal):
    """The refined ``X = U diag(s) V^T`` as a proposal: ``Delta = X_new`` with ``gamma = rho = 1``."""

    U: np.ndarray | None = None
    s: np.ndarray | None = None
    V: np.ndarray | None = None

    def book(self, atoms: ActiveSet, gamma: float) -> None:
        """The atoms become the refined thin SVD."""
        atoms.set_svd(self.U, self.s, self.V)

    def rank_after(self, rank: int, gamma: float, atoms: ActiveSet | None) -> int:
        """The number of refined atoms."""
        return len(atoms)


class FactorRefinement:
    """Accelerated projected gradient with backtracking on the factors of ``X``.

    Args:
        steps: at most this many accepted steps per call (``>= 1``).
        eta0: first step length; later calls start from the last accepted one.
        growth: multiply ``eta`` by this after an accepted step (``>= 1``).
        rtol: stop when a step decreases ``f`` by less than ``rtol * |f|``.
        stall: stop when a step decreases ``f`` by less than ``stall`` times the first
            step's decrease (the factors have stalled at this rank: let the next LMO step
            add a direction).
        drop_rtol: singular values ``<= drop_rtol * s_max`` are dropped when compressing.
        max_backtracks: halvings allowed per step before giving up (``>= 1``).
        accelerate: Nesterov momentum (FISTA, Beck and Teboulle 2009) with a restart
            whenever a step would not descend from the last accepted point (O'Donoghue and
            Candes 2015); accepted points still decrease ``f`` monotonically.

    Raises:
        ValueError: on a bad setting, naming it (numbers must be finite; ``rtol``,
            ``drop_rtol`` and ``stall`` ``>= 0``).
    """

    def __init__(self, steps: int = 50, eta0: float = 1.0, growth: float = 1.2, rtol: float = 1e-12,
                 drop_rtol: float = 1e-8, max_backtracks: int = 40, accelerate: bool = True,
                 stall: float = 1e-3) -> None:
        self.steps = integer(steps, "refinement steps", 1)
        self.eta = real(eta0, "refinement eta0", above=0)
        self.growth = real(growth, "refinement growth", at_least=1)
        self.rtol = real(rtol, "refinement rtol", at_least=0)
        self.drop_rtol = real(drop_rtol, "refinement drop_rtol", at_least=0)
        self.max_backtracks = integer(max_backtracks, "refinement max_backtracks", 1)
        self.accelerate = bool(accelerate)
        self.stall = real(stall, "refinement stall", at_least=0)

    def __repr__(self) -> str:
        return f"FactorRefinement(steps={self.steps})"

    def run(self, model, U: np.ndarray, c: np.ndarray, V: np.ndarray, tau: float):
        """Refine ``X = U diag(c) V^T`` (``sum c <= tau``, unit columns).

        Args:
            model: a :class:`cola_opt.objectives.base.LowRankModel` (``value``, ``gradient`` of factors).
            U: ``(m, k)``; c: ``(k,)`` ``>= 0``; V: ``(n, k)``; tau: the radius.

        Returns:
            ``(U, s, V, info)``: a thin SVD of the refined ``X`` (orthonormal columns,
            ``sum s <= tau``) and a :class:`RefineInfo`.
        """
        root = np.sqrt(np.maximum(c, 0.0))
        P, Q = self._project(U * root, V * root, tau)
        f = f0 = model.value(P, Q)
        steps = backtracks = 0
        eta, momentum = self.eta, 1.0
        YP, YQ = P, Q
        first_decrease = None
        while steps < self.steps:
            fy, G = model.value_and_gradient(YP, YQ)
            gP, gQ = G.matmat(YQ), G.rmatmat(YP)
            for _ in range(self.max_backtracks):
                Pn, Qn = self._project(YP - eta * gP, YQ - eta * gQ, tau)
                dP, dQ = Pn - YP, Qn - YQ
                fn = model.value(Pn, Qn)
                quad = float(np.vdot(gP, dP) + np.vdot(gQ, dQ)) + (np.vdot(dP, dP) + np.vdot(dQ, dQ)) / (2 * eta)
                if fn <= fy + quad:
                    break
                eta *= 0.5
                backtracks += 1
            else:
                break
            if fn > f:  # not a descent from the last accepted point: restart the momentum there
                if YP is P:
                    break
                YP, YQ, momentum = P, Q, 1.0
                continue
            decrease = f - fn
            if self.accelerate:
                nxt = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * momentum * momentum))
                beta = (momentum - 1.0) / nxt
                YP, YQ = self._project(Pn + beta * (Pn - P), Qn + beta * (Qn - Q), tau)
                momentum = nxt
            else:
                YP, YQ = Pn, Qn
            P, Q, f = Pn, Qn, fn
            steps += 1
            eta *= self.growth
            first_decrease = decrease if first_decrease is None else first_decrease
            if decrease <= self.rtol * max(abs(f), 1e-300) or decrease < self.stall * first_decrease:
                break
        self.eta = eta
        Uo, s, Vo = compress_factors(P, Q, rtol=self.drop_rtol)
        excess = float(s.sum()) / tau
        if excess > 1.0:  # rounding only: the BM bound already keeps ||X||_* <= tau
            s = s / excess
        return Uo, s, Vo, RefineInfo(steps, backtracks, f0, f, int(s.size))

    def propose(self, model, atoms: ActiveSet) -> RefinedFactors:
        """Refine the factors of ``X`` held by ``atoms`` (:meth:`run`); the refined ``X`` as a proposal.

        Args:
            model: as in :meth:`run`; atoms: the active set of ``X`` on the ball of radius ``atoms.tau``.
        """
        U, s, V, info = self.run(model, atoms.U, atoms.c, atoms.V, atoms.tau)
        return RefinedFactors(U * s, V.T, "refine", gamma_max=1.0, shrink=1.0, steps=info.steps, U=U, s=s, V=V)

    @staticmethod
    def _project(P: np.ndarray, Q: np.ndarray, tau: float):
        bm = 0.5 * (float(np.vdot(P, P)) + float(np.vdot(Q, Q)))
        if bm > tau:
            scale = math.sqrt(tau / bm)
            return P * scale, Q * scale
        return P, Q

    def state_dict(self) -> dict:
        return {"eta": self.eta}

    def load_state_dict(self, state: dict) -> None:
        self.eta = state["eta"]
