"""Shared pieces of the claim checks: the result record, named checks, iterates, independent FW quantities.

A check runs generated instances, compares observed quantities with bounds at every
iterate, and keeps, per named check (the claim's bound and each every-iterate invariant),
the worst ratio ``observed / bound``. A ratio above 1 (beyond a stated floating-point slack)
is a violation. The checks never trust the product's own bookkeeping for what they verify:
they record every iterate ``W_t`` and recompute ``X_t = W_t - W0``, the gradient's top
singular pair, the LMO atom ``S_t``, the FW gap ``g_t`` and ``||X_t||_*`` with dense numpy
SVDs (:func:`fw_quantities`), and certify ``f*`` from those (:func:`certified_bounds`).

"Broken" variants replace one part of the algorithm by a wrong one inside a check (a step
size, an LMO sign, a rank); :mod:`proofs_check.mutations` instead patches the product's
own functions.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from cola_opt.fw.sets import LMOAnswer, NuclearBall
from cola_opt.fw.spectral import top_singular

__all__ = ["SLACK", "U32", "CheckStat", "ClaimResult", "DoubleAtomBall", "FWQuantities", "FlippedBall", "Tracker",
           "certified_bounds", "fw_quantities", "nuclear_tolerance", "rank_of", "run_links", "with_start"]

#: Relative floating-point slack allowed on a ratio.
SLACK = 1e-6
#: float32 unit round-off: the chain's iterates are float32.
U32 = 2.0**-24


@dataclass
class CheckStat:
    """One named check over a claim's instances: worst ratio, violations, number of comparisons."""

    worst: float = -math.inf
    violations: int = 0
    count: int = 0


@dataclass
class ClaimResult:
    """One claim's outcome: instances run, worst ratio over all checks, violations, notes, per-check stats."""

    name: str
    claim: str
    instances: int
    worst_ratio: float
    violations: int
    seconds: float = 0.0
    broken: str | None = None
    notes: list[str] = field(default_factory=list)
    checks: dict[str, CheckStat] = field(default_factory=dict)
    info: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.violations == 0

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def caught_by(self) -> list[str]:
        """The names of the checks with a violation."""
        return [k for k, s in self.checks.items() if s.violations]


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
    """Accumulates ``observed / bound`` ratios per named check; counts those above ``1 + slack``.

    The first check named is the claim's bound (its row in the table); the others are
    invariants, printed under it.
    """

    def __init__(self, name: str, claim: str, slack: float = SLACK, broken: str | None = None) -> None:
        self.name, self.claim, self.slack, self.broken = name, claim, slack, broken
        self.instances = 0
        self.notes: list[str] = []  # the first violations
        self.info: list[str] = []  # what the claim measured besides its checks (printed always)
        self.checks: dict[str, CheckStat] = {}
        self.t0 = time.perf_counter()

    def _record(self, check: str, r: float, bad: bool, where: str, observed: float, bound: float) -> None:
        stat = self.checks.setdefault(check, CheckStat())
        stat.count += 1
        stat.worst = max(stat.worst, r)
        if bad:
            stat.violations += 1
            if sum(s.violations for s in self.checks.values()) <= 5:
                self.notes.append(f"[{check}] {where}: observed {observed:.6g} > bound {bound:.6g}")

    def ratio(self, observed: float, bound: float, where: str = "", check: str = "bound") -> float:
        """Record ``observed / bound`` (``bound > 0``); a NaN observation counts as a violation."""
        if not bound > 0:
            raise ValueError(f"bound {bound} must be > 0 ({where})")
        r = observed / bound if math.isfinite(observed) else math.inf
        self._record(check, r, not r <= 1.0 + self.slack, where, observed, bound)
        return r

    def at_most(self, observed: float, bound: float, tol: float, where: str = "", check: str = "bound",
                shown: float | None = None) -> None:
        """Check ``observed <= bound + tol`` for a bound that may be ``<= 0`` (a FW gap, say).

        The recorded ratio is ``shown`` if given, else ``observed / (bound + tol)`` when
        ``bound > 0``, else the excess in units of the slack, ``max(observed - bound, 0) / tol``
        (0 when the check holds with room): above 1 exactly on a violation. A NaN observation
        is a violation.
        """
        tol = abs(tol)
        bad = not observed <= bound + tol
        if shown is None:
            if bound > 0:
                shown = observed / (bound + tol)
            else:
                shown = max(observed - bound, 0.0) / tol if tol > 0 else (math.inf if bad else 0.0)
        self._record(check, math.inf if bad and not shown > 1 else shown, bad, where, observed, bound)

    def result(self) -> ClaimResult:
        """The outcome; ``checks`` lists the claim's ``"bound"`` first, then the invariants in order of appearance."""
        worst = max((s.worst for s in self.checks.values()), default=-math.inf)
        ordered = dict(sorted(self.checks.items(), key=lambda kv: kv[0] != "bound"))
        return ClaimResult(self.name, self.claim, self.instances, worst,
                           sum(s.violations for s in self.checks.values()), time.perf_counter() - self.t0,
                           self.broken, self.notes, ordered, self.info)


# --------------------------------------------------------------------- iterates
@dataclass
class Iterates:
    """Every iterate of a run: ``W[t]`` (float64 copy of the float32 weight) and the trace rows."""

    W: list[np.ndarray]
    rows: list
    knots: list


def run_links(solver, links: int, stop=None) -> Iterates:
    """Run ``solver`` for ``links`` links (``measure``, copy ``W_t``, ``advance``), then measure the last iterate.

    Args:
        stop: optional ``stop(row) -> bool``; a True ends the run after measuring that row.
    """
    Ws = []
    for _ in range(links):
        row = solver.measure()
        Ws.append(solver.W.detach().double().numpy().copy())
        if stop is not None and stop(row):
            return Iterates(Ws, list(solver.trace.rows), list(solver.chain.knots))
        solver.advance()
    solver.measure()
    Ws.append(solver.W.detach().double().numpy().copy())
    return Iterates(Ws, list(solver.trace.rows), list(solver.chain.knots))


@dataclass
class FWQuantities:
    """Independent Frank-Wolfe quantities at one iterate (dense float64 numpy).

    Attributes:
        f: ``f(W)``; G: ``grad f(W)``; X: ``W - W0``; nuclear: ``||X||_*``; sigma: ``sigma_1(G)``
        and the gap of the top two (``sigma_1 - sigma_2``, for ties); S: ``-tau u1 v1^T``;
        gap: ``<G, X> + tau sigma_1(G)``.
    """

    f: float
    G: np.ndarray
    X: np.ndarray
    nuclear: float
    sigma: float
    sigma_gap: float
    S: np.ndarray
    gap: float


def fw_quantities(objective, W: np.ndarray, W0: np.ndarray, tau: float) -> FWQuantities:
    """The FW quantities at ``W`` over the ball ``{W0 + X : ||X||_* <= tau}``, from dense SVDs."""
    X = W - W0
    G = np.asarray(objective.gradient(W).toarray(), dtype=np.float64)
    U, s, Vt = np.linalg.svd(G, full_matrices=False)
    S = -tau * np.outer(U[:, 0], Vt[0])
    nuclear = float(np.linalg.svd(X, compute_uv=False).sum())
    return FWQuantities(objective.value(W), G, X, nuclear, float(s[0]), float(s[0] - (s[1] if s.size > 1 else 0.0)),
                        S, float(np.vdot(G, X)) + tau * float(s[0]))


def rank_of(X: np.ndarray, rtol: float = 1e-5) -> int:
    """Numerical rank of a dense ``X``: singular values above ``rtol * sigma_max`` (numpy SVD, not the product's).

    ``rtol = 1e-5`` suits differences of float32 matrices (unit round-off ``6e-8`` times the dimension).
    """
    s = np.linalg.svd(np.asarray(X, dtype=np.float64), compute_uv=False)
    return int((s > rtol * s[0]).sum()) if s.size and s[0] > 0.0 else 0


def nuclear_tolerance(W: np.ndarray, tau: float, t: int) -> float:
    """Float32 slack on ``||X_t||_*``: ``tau 1e-6 + 2 sqrt(min(m, n)) (t + 1) u ||W_t||_F``.

    Each of ``t`` knots rounds ``W`` to float32 (relative error ``u = 2^-24`` per entry), and
    ``||E||_* <= sqrt(rank E) ||E||_F`` for the accumulated rounding ``E``.
    """
    return tau * 1e-6 + 2.0 * math.sqrt(min(W.shape)) * (t + 1) * U32 * float(np.linalg.norm(W))


def certified_bounds(objective, W0: np.ndarray, tau: float, points) -> tuple[float, float]:
    """Certified ``(lower, upper)`` on ``f* = min {f(W0 + X) : ||X||_* <= tau}`` of a convex ``f``.

    Every point ``X`` (a residual; scaled into the ball if it is outside) gives
    ``f(W0 + X) - g(X) <= f* <= f(W0 + X)`` (convexity; Jaggi 2013, Section 2), with the gap
    computed here from a dense SVD of the gradient (not by the product's solver).
    """
    lower, upper = -math.inf, math.inf
    for X in points:
        nuc = float(np.linalg.svd(X, compute_uv=False).sum())
        if nuc > tau:
            X = X * (tau / nuc)
        q = fw_quantities(objective, W0 + X, W0, tau)
        lower, upper = max(lower, q.f - max(q.gap, 0.0)), min(upper, q.f)
    return lower, upper


def with_start(problem, scale: float, seed: int):
    """``problem`` with a random nonzero start ``W0`` (i.i.d. ``N(0, scale^2)``, float32), as in fine-tuning."""
    if scale == 0.0:
        return problem
    W0 = (scale * np.random.default_rng(seed).standard_normal(problem.objective.shape)).astype(np.float32)
    return replace(problem, W0=W0, name=problem.name + f"+W0({scale:g})")


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
