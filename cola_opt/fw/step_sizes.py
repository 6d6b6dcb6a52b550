"""Step-size rules: one small type per rule, one verb (``__call__(line) -> gamma``).

The driver describes the step's line ``gamma -> W_t + gamma * d`` by a :class:`Line`
(slope ``<grad f, d>``, ``||d||^2``, and lazy curvature and values); the rule answers a
``gamma`` in ``[0, gamma_max]``. For a Frank-Wolfe direction ``d = S - X`` the slope is
``-g_t``, minus the FW gap. This is FrankWolfe.jl's ``perform_line_search``.

A rule's ``needs`` names what it reads from the line beyond ``t``, ``f``, ``slope`` and
``gamma_max``; the driver checks the objective can provide it before any work, and computes
only what is needed (``||d||^2`` is a pass over the ``(m, n)`` residual; the values along
the line cost an objective evaluation each):

* ``"L"``: a smoothness constant (the objective's, unless the rule has its own);
* ``"curvature"``: ``<d, H d>``, so the objective must be quadratic;
* ``"value"``: ``f(W_t + gamma d)``;
* ``"norm2"``: ``||d||_F^2`` (NaN on the line when not needed).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

from ..checks import integer, real

__all__ = ["NEEDS", "Backtracking", "Constant", "ExactLineSearch", "Line", "OpenLoop", "ShortStep", "StepRule",
           "make_step_rule"]


@dataclass
class Line:
    """The step's line search problem, ``phi(gamma) = f(W_t + gamma d)``.

    Attributes:
        t: 0-based iteration (link) index.
        f: ``phi(0) = f(W_t)``.
        slope: ``phi'(0) = <grad f(W_t), d>``.
        norm2: ``||d||_F^2`` (NaN unless the rule ``needs`` ``"norm2"``).
        gamma_max: the largest feasible step (1 for a FW step; less for away steps).
        smoothness: the objective's ``L``, or None.
        curvature: ``() -> <d, H d>`` for quadratics, else None (None unless needed).
        value_at: ``gamma -> f(W_t + gamma d)``, or None (None unless needed).
    """

    t: int
    f: float
    slope: float
    norm2: float
    gamma_max: float = 1.0
    smoothness: float | None = None
    curvature: Callable[[], float] | None = None
    value_at: Callable[[float], float] | None = None


def _clip(gamma: float, gamma_max: float) -> float:
    if not math.isfinite(gamma):
        return gamma_max if gamma > 0 else 0.0
    return min(max(gamma, 0.0), gamma_max)


#: Everything a rule may need from its line (see the module notes).
NEEDS = ("L", "curvature", "value", "norm2")


class StepRule:
    """A step-size rule. ``needs`` names what it reads (a subset of :data:`NEEDS`).

    The base's ``needs`` is ``("norm2", "value")``, so a rule written elsewhere gets the
    whole line unless it says it needs less.
    """

    needs: tuple[str, ...] = ("norm2", "value")

    def __call__(self, line: Line) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class OpenLoop(StepRule):
    """``gamma_t = ell / (t + ell)``; ``ell = 2`` is Jaggi's (2013, Algorithm 1) ``2/(t+2)``.

    Raises:
        ValueError: if ``ell`` is not a finite number ``> 0`` (``inf`` would make every step 0).
    """

    needs = ()

    def __init__(self, ell: float = 2.0) -> None:
        self.ell = real(ell, "open-loop parameter ell", above=0)

    def __call__(self, line: Line) -> float:
        return _clip(self.ell / (line.t + self.ell), line.gamma_max)

    def __repr__(self) -> str:
        return f"OpenLoop({self.ell:g})"


class ShortStep(StepRule):
    """``gamma = min(-slope / (L ||d||^2), gamma_max)``: the minimizer of the quadratic upper bound.

    With ``d = S - X`` this is ``min(g_t / (L ||d||^2), 1)`` (Lacoste-Julien 2016,
    Algorithm 1, with the per-step curvature ``L ||d||^2 <= L D^2``).

    Args:
        L: smoothness constant; None takes the objective's.

    Raises:
        ValueError: if ``L`` is given and not ``> 0``; at the call, if no ``L`` is known.
    """

    def __init__(self, L: float | None = None) -> None:
        self.L = None if L is None else real(L, "short step L", above=0)

    @property
    def needs(self) -> tuple[str, ...]:
        return ("norm2",) if self.L is not None else ("L", "norm2")

    def __call__(self, line: Line) -> float:
        L = self.L if self.L is not None else line.smoothness
        if L is None:
            raise ValueError("ShortStep needs a smoothness constant L: pass ShortStep(L=...) or an objective with one")
        if line.norm2 <= 0.0:
            return 0.0
        return _clip(-line.slope / (L * line.norm2), line.gamma_max)

    def __repr__(self) -> str:
        return f"ShortStep(L={self.L})"


class ExactLineSearch(StepRule):
    """Exact ``argmin_{0 <= gamma <= gamma_max} phi(gamma)`` for a quadratic objective.

    ``phi(gamma) = f + gamma * slope + gamma^2 * c / 2`` with ``c = <d, H d>``. For
    ``c > 0`` the answer is ``clip(-slope / c)``; for ``c <= 0`` (a nonconvex quadratic) it
    is the better endpoint. Never increases ``f``.
    """

    needs = ("curvature",)

    def __call__(self, line: Line) -> float:
        if line.curvature is None:
            raise ValueError("ExactLineSearch needs a quadratic objective (one with curvature())")
        c = line.curvature()
        if c > 0:
            return _clip(-line.slope / c, line.gamma_max)
        g = line.gamma_max
        if not math.isfinite(g):
            raise ValueError("the quadratic is unbounded below along d: exact line search needs a finite gamma_max")
        return g if line.slope * g + 0.5 * c * g * g < 0 else 0.0

    def __repr__(self) -> str:
        return "ExactLineSearch()"


class Backtracking(StepRule):
    """Short step with an adaptive smoothness estimate (Pedregosa, Negiar, Askari and Jaggi 2020, Algorithm 2).

    Each call starts from ``L_t = decrease * L_{t-1}``, takes
    ``gamma = min(-slope / (L_t ||d||^2), gamma_max)`` and multiplies ``L_t`` by
    ``increase`` until the sufficient-decrease condition
    ``phi(gamma) <= f + gamma * slope + gamma^2 L_t ||d||^2 / 2`` holds. Never increases f.

    Args:
        L0: first estimate (finite, ``> 0``); None takes the objective's ``L`` or 1.
        increase: finite, ``> 1``; decrease: in ``(0, 1]``; max_tries: an integer ``>= 1``,
            cap on the inner loop.

    Raises:
        ValueError: on bad parameters, naming the first.
    """

    needs = ("value", "norm2")

    def __init__(self, L0: float | None = None, increase: float = 2.0, decrease: float = 0.9, max_tries: int = 60):
        self.L_est = None if L0 is None else real(L0, "Backtracking L0", above=0)
        self.increase = real(increase, "Backtracking increase", above=1)
        self.decrease = real(decrease, "Backtracking decrease", above=0, at_most=1)
        self.max_tries = integer(max_tries, "Backtracking max_tries", 1)

    def __call__(self, line: Line) -> float:
        if line.value_at is None:
            raise ValueError("Backtracking needs function values along the line")
        if line.norm2 <= 0.0 or line.slope >= 0.0:
            return 0.0
        L = self.L_est if self.L_est is not None else (line.smoothness or 1.0)
        L *= self.decrease
        for _ in range(self.max_tries):
            gamma = _clip(-line.slope / (L * line.norm2), line.gamma_max)
            if line.value_at(gamma) <= line.f + gamma * line.slope + 0.5 * gamma * gamma * L * line.norm2:
                self.L_est = L
                return gamma
            L *= self.increase
        self.L_est = L
        return 0.0

    def state_dict(self) -> dict:
        return {"L_est": self.L_est}

    def load_state_dict(self, state: dict) -> None:
        self.L_est = state["L_est"]

    def __repr__(self) -> str:
        return f"Backtracking(L={self.L_est})"


class Constant(StepRule):
    """``gamma = value`` (clipped to ``gamma_max``); COLA's knots use 1.

    Raises:
        ValueError: if ``value`` is not finite and ``> 0``.
    """

    needs = ()

    def __init__(self, value: float = 1.0) -> None:
        self.value = real(value, "constant step", above=0)

    def __call__(self, line: Line) -> float:
        return _clip(self.value, line.gamma_max)

    def __repr__(self) -> str:
        return f"Constant({self.value:g})"


def make_step_rule(spec) -> StepRule:
    """A :class:`StepRule` from itself, a number (constant), or a name.

    Names: ``"open_loop"``, ``"short"``, ``"line_search"``, ``"backtracking"``.

    Raises:
        ValueError: on anything else.
    """
    if isinstance(spec, StepRule):
        return spec
    if isinstance(spec, numbers.Real) and not isinstance(spec, bool):
        return Constant(spec)
    table = {"open_loop": OpenLoop, "short": ShortStep, "line_search": ExactLineSearch, "backtracking": Backtracking}
    if isinstance(spec, str) and spec in table:
        return table[spec]()
    raise ValueError(f"unknown step size {spec!r}; use a StepRule, a number, or one of {sorted(table)}")
