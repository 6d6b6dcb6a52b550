"""Shared pieces of the claim checks: the result record, ratio tracking, broken parts.

A check runs generated instances, compares an observed quantity with a bound at every
iterate, and keeps the worst ratio ``observed / bound``. A ratio above 1 (beyond a
stated floating-point slack) is a violation. "Broken" variants replace one part of the
algorithm by a wrong one (a step size, an LMO sign, an optimizer reset, a rank); each
check's tests show that it reports violations for them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from cola_opt.fw.sets import LMOAnswer, NuclearBall
from cola_opt.fw.spectral import top_singular

__all__ = ["SLACK", "ClaimResult", "DoubleAtomBall", "FlippedBall", "Tracker", "fstar_bounds"]

#: Relative floating-point slack allowed on a ratio (iterates are float32).
SLACK = 1e-6


@dataclass
class ClaimResult:
    """One claim's outcome: instances run, worst ratio, violations and notes."""

    name: str
    claim: str
    instances: int
    worst_ratio: float
    violations: int
    seconds: float = 0.0
    broken: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.violations == 0

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


def check_broken(broken: str | None, allowed: tuple[str, ...]) -> None:
    """Refuse an unknown broken-variant name before any instance runs.

    Raises:
        ValueError: naming ``broken`` and the variants this claim knows.
    """
    if broken not in (None,) + tuple(allowed):
        raise ValueError(f"unknown broken variant {broken!r}; choose from {allowed}")


def ball_for(tau: float, broken: str | None) -> NuclearBall:
    """The nuclear ball of radius ``tau``, or its LMO-sign-flipped twin for the ``wrong_sign`` variant."""
    return FlippedBall(tau) if broken == "wrong_sign" else NuclearBall(tau)


class Tracker:
    """Accumulates ``observed / bound`` ratios; counts those above ``1 + slack``."""

    def __init__(self, name: str, claim: str, slack: float = SLACK, broken: str | None = None) -> None:
        self.name, self.claim, self.slack, self.broken = name, claim, slack, broken
        self.worst, self.violations, self.instances = -math.inf, 0, 0
        self.notes: list[str] = []
        self.t0 = time.perf_counter()

    def ratio(self, observed: float, bound: float, where: str = "") -> float:
        """Record ``observed / bound`` (``bound > 0``); a NaN observation counts as a violation."""
        if not bound > 0:
            raise ValueError(f"bound {bound} must be > 0 ({where})")
        r = observed / bound if math.isfinite(observed) else math.inf
        self.worst = max(self.worst, r)
        if not r <= 1.0 + self.slack:
            self.violations += 1
            if len(self.notes) < 5:
                self.notes.append(f"{where}: observed {observed:.4g} > bound {bound:.4g}")
        return r

    def at_most(self, observed: float, bound: float, scale: float, where: str = "") -> None:
        """Check ``observed <= bound`` for a bound that may be ``<= 0`` (a FW gap, say).

        ``scale`` sets the floating-point slack ``SLACK * scale``. The recorded ratio is
        ``observed / bound`` when ``bound > 0``, else ``+inf`` on a violation and 0 otherwise.
        """
        tol = self.slack * max(abs(scale), 1e-300)
        bad = not observed <= bound + tol
        r = observed / bound if bound > 0 else (math.inf if bad else 0.0)
        self.worst = max(self.worst, r)
        if bad:
            self.violations += 1
            if len(self.notes) < 5:
                self.notes.append(f"{where}: observed {observed:.4g} > bound {bound:.4g}")

    def result(self) -> ClaimResult:
        return ClaimResult(self.name, self.claim, self.instances, self.worst, self.violations,
                           time.perf_counter() - self.t0, self.broken, self.notes)


class FlippedBall(NuclearBall):
    """Broken part: the nuclear ball's LMO with the wrong sign (returns the *maximizer*)."""

    def lmo(self, G, *, method="auto", v0=None, seed=0) -> LMOAnswer:
        a = super().lmo(G, method=method, v0=v0, seed=seed)
        return LMOAnswer(B=-a.B, A=a.A, value=-a.value, sigma=a.sigma, u=a.u, v=a.v)


class DoubleAtomBall(NuclearBall):
    """Broken part: an "LMO" that answers a rank-2 matrix (top two pairs, tau/2 each)."""

    def lmo(self, G, *, method="auto", v0=None, seed=0) -> LMOAnswer:
        U, s, V = top_singular(G, 2, method="dense")
        B = -0.5 * self.tau * U
        value = -0.5 * self.tau * float(s.sum())
        return LMOAnswer(B=B, A=V.T, value=value, sigma=s, u=U[:, 0], v=V[:, 0])


def fstar_bounds(problem, traces=()) -> tuple[float, float]:
    """Certified ``(lower, upper)`` bounds on ``f*`` of a convex nuclear-ball problem.

    cvxpy (CLARABEL up to 20 x 20, SCS above) gives a feasible point and a gap
    certificate (:func:`cola_opt.objectives.reference.reference_optimum`); every traced iterate
    adds ``f(x_t) - g_t`` to the lower and ``f(x_t)`` to the upper side.
    """
    from cola_opt.objectives.reference import reference_optimum

    m, n = problem.objective.shape
    solver = "CLARABEL" if max(m, n) <= 20 else "SCS"
    ref = reference_optimum(problem.objective, problem.tau, problem.W0, solver=solver, eps=1e-8)
    lower, upper = ref.lower, ref.upper
    for tr in traces:
        p, g = np.asarray(tr.primal), np.asarray(tr.fw_gap)
        ok = np.isfinite(g)
        if ok.any():
            lower = max(lower, float(np.max(p[ok] - g[ok])))
            upper = min(upper, float(np.min(p)))
    return lower, upper
