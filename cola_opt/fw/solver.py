"""The one chain loop on explicit objectives: :class:`ChainSolver` and :func:`minimize`.

A :class:`ChainSolver` owns one :class:`~cola_opt.chain.sites.TensorSite` over ``W`` and one
:class:`~cola_opt.chain.optimizer.ResidualLowRankOptimizer`; every change of ``W`` is a knot of that
chain. Link ``t``:

1. *measure* ``f(W_t)``, ``grad f(W_t)`` and the FW gap ``g_t = <G, X_t> - min_S <G, S>``
   over ``gap_set`` (default: the constraint set) into a :class:`~cola_opt.fw.link.LinkState`;
2. *propose*: ``oracle.propose(state)`` answers one :class:`~cola_opt.fw.proposal.Proposal`
   (an exact oracle's factors: the LMO atom, a block-LMO point; the inexact oracle trains the
   link's factors for ``K`` inner steps), and the *direction* of ``variant``
   (:data:`DIRECTIONS`: as it is, :mod:`~cola_opt.fw.away`, :mod:`~cola_opt.fw.pairwise`)
   may replace it by an away or pairwise step over the active set;
3. *step*: the step rule picks ``gamma_t`` in ``[0, gamma_max]`` on the line ``W_t + gamma d``
   with ``d = Delta - shrink * X_t`` (:func:`~cola_opt.fw.link.line_of` computes what the rule ``needs``);
4. *knot*: ``W <- W + gamma_t (Delta - shrink X_t)`` through the chain
   (:meth:`~cola_opt.chain.optimizer.ResidualLowRankOptimizer.merge_low_rank`, or
   :meth:`~cola_opt.chain.optimizer.ResidualLowRankOptimizer.tie_knot` for a trained link);
   the proposal keeps its books (active set, rank bound);
5. optionally *refine*: ``refine.propose`` answers the refined ``X``, merged by one more knot
   (``step_size = 1, shrink = 1``).

The loop composes oracle, direction, step rule and set through these verbs and the
attributes they declare (``oracle.check``, ``oracle.atomic``, ``set.bounded``, ``rule.needs``);
it never asks which class one of them is.

Settings of this one loop (DESIGN §2):

=========================  ==============================================================
LoRA                       ``InexactOracle(r, K)``, ``Unconstrained()``, ``max_iter=1``
COLA                       ``InexactOracle(r, K)``, ``Unconstrained()``, ``max_iter=links``
full-rank GD               ``InexactOracle(min(m, n), 1, optimizer="sgd")``, unconstrained
classic Frank-Wolfe        ``ExactLMO()``, ``NuclearBall(tau)``, ``OpenLoop()``
COLA as approximate FW     ``InexactOracle(r, K, target="linear")``, ``NuclearBall(tau)``
away / pairwise FW         ``ExactLMO()``, ``variant="away"`` / ``"pairwise"``
FW + factor refinement     ``refine=FactorRefinement()``
=========================  ==============================================================
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from ..chain.optimizer import ResidualLowRankOptimizer
from ..chain.sites import TensorSite
from ..checks import choice, finite_array, integer, real, real_array
from ..objectives.base import Objective
from .active_set import ActiveSet
from .away import away_or_frank_wolfe
from .link import LinkState, Residual, as_tensor, line_of
from .oracles import ExactLMO, Oracle
from .pairwise import pairwise
from .proposal import Proposal, frank_wolfe
from .refine import FactorRefinement
from .result import Result, Trace, TraceRow
from .sets import ConstraintSet, Unconstrained
from .spectral import SVD_METHODS, compress_factors, numerical_rank
from .step_sizes import NEEDS, Constant, OpenLoop, StepRule, make_step_rule

__all__ = ["DIRECTIONS", "EXACT_RANK_MAX", "ChainSolver", "minimize"]

#: ``record_rank="auto"`` computes the exact numerical rank when ``min(m, n)`` is at most this.
EXACT_RANK_MAX = 64

#: ``variant`` -> the direction rule ``(proposal, state, atoms) -> proposal`` applied to the oracle's answer.
DIRECTIONS = {"vanilla": frank_wolfe, "away": away_or_frank_wolfe, "pairwise": pairwise}


def _check_run(max_iter, tol, time_limit, callback, progress):
    """The stopping settings of :meth:`ChainSolver.run`, checked; ``(max_iter, tol, time_limit)`` normalised."""
    max_iter = integer(max_iter, "max_iter", 0)
    tol = None if tol is None else real(tol, "tol", at_least=0)
    time_limit = None if time_limit is None else real(time_limit, "time_limit", above=0, finite=False)
    if callback is not None and not callable(callback):
        raise ValueError(f"callback {callback!r} must be callable or None")
    if progress is not None and not callable(getattr(progress, "update", None)):
        raise ValueError(f"progress {progress!r} must have an update(n) method, or be None")
    return max_iter, tol, time_limit


def _start_weight(x0, shape: tuple[int, int]) -> torch.Tensor:
    """``x0`` as a fresh ``(m, n)`` float32 tensor with finite entries (zeros if None)."""
    if x0 is None:
        return torch.zeros(shape, dtype=torch.float32)
    W = torch.as_tensor(real_array(x0, "x0")).to(torch.float32).clone()
    if tuple(W.shape) != shape:
        raise ValueError(f"x0 has shape {tuple(W.shape)}, the objective wants {shape}")
    finite_array(W, "x0 (as float32)")
    return W


def _check_types(objective, oracle, constraint, gap_set, refine) -> None:
    """Each argument of :class:`ChainSolver` is of its kind (one ValueError naming the first that is not)."""
    if not isinstance(objective, Objective):
        raise ValueError(f"objective must be a cola_opt Objective, got {type(objective).__name__}")
    if not isinstance(oracle, Oracle):
        raise ValueError(f"oracle {oracle!r} must be an Oracle (ExactLMO, BlockLMO, InexactOracle) or None")
    for name, v in (("constraint", constraint), ("gap_set", gap_set)):
        if not isinstance(v, ConstraintSet):
            raise ValueError(f"{name} {v!r} must be a ConstraintSet (NuclearBall, Unconstrained) or None")
    if refine is not None and not isinstance(refine, FactorRefinement):
        raise ValueError(f"refine {refine!r} must be a FactorRefinement or None")


def _check_rule(rule: StepRule, objective: Objective) -> None:
    """What the step rule ``needs`` (:data:`cola_opt.fw.step_sizes.NEEDS`), the objective must provide."""
    name = type(objective).__name__
    for need in rule.needs:
        if need not in NEEDS:
            raise ValueError(f"{rule!r} needs {need!r}, which no line provides; needs are {NEEDS}")
        if need == "curvature" and not objective.quadratic:
            raise ValueError(f"{rule!r} (exact line search) needs a quadratic objective; {name} is not")
        if need == "L" and objective.smoothness is None:
            raise ValueError(f"{rule!r} needs L: {name} has no smoothness constant")


class ChainSolver:
    """The chain loop over one matrix variable; see the module notes. Resumable.

    Args:
        objective: an :class:`~cola_opt.objectives.base.Objective`.
        x0: the start ``W0`` (``(m, n)`` tensor or array); zeros if None. ``W`` is kept in
            float32 (the chain merges in float32).
        oracle: :class:`ExactLMO` (default), :class:`BlockLMO` or :class:`InexactOracle`.
        step_size: a :class:`~cola_opt.fw.step_sizes.StepRule`, a number, or a name; default
            open loop ``2/(t+2)`` on a constraint set, ``Constant(1)`` without one.
        constraint: the set of the residual ``X = W - W0``; default ``Unconstrained()``.
        variant: ``"vanilla"``, ``"away"`` or ``"pairwise"`` (:data:`DIRECTIONS`; the last two
            need an atomic oracle: ExactLMO).
        refine: a :class:`FactorRefinement` to polish ``X``'s factors after every link.
        gap_set: the set over which the FW gap is measured; default ``constraint``.
        seed: an integer ``>= 0``; seeds the chain's re-initialisations and the SVD start vectors.
        record_rank: ``"exact"`` (SVD of ``X`` each row), ``"bound"`` (tracked), or
            ``"auto"`` (exact when ``min(m, n) <= EXACT_RANK_MAX``).
        svd: SVD method for the gap's LMO (``"auto"``, ``"dense"``, ``"svds"``, ``"randomized"``).

    Raises:
        ValueError: on any argument of the wrong kind (an ``x0`` of the wrong shape or with
            NaN or inf entries, an unknown name, ...) or any combination that cannot work,
            before any work starts.
    """

    def __init__(self, objective: Objective, x0=None, *, oracle: Oracle | None = None, step_size=None,
                 constraint: ConstraintSet | None = None, variant: str = "vanilla",
                 refine: FactorRefinement | None = None, gap_set: ConstraintSet | None = None, seed: int = 0,
                 record_rank: str = "auto", svd: str = "auto") -> None:
        oracle = ExactLMO() if oracle is None else oracle
        constraint = Unconstrained() if constraint is None else constraint
        gap_set = constraint if gap_set is None else gap_set
        _check_types(objective, oracle, constraint, gap_set, refine)
        choice(variant, "variant", tuple(DIRECTIONS))
        choice(record_rank, "record_rank", ("auto", "exact", "bound"))
        choice(svd, "svd method", SVD_METHODS)
        seed = integer(seed, "seed", 0)
        oracle.check(constraint, objective.shape)
        if variant != "vanilla" and not oracle.atomic:
            raise ValueError(f"variant {variant!r} needs the exact rank-1 LMO (ExactLMO), got {oracle!r}")
        if refine is not None and not constraint.bounded:
            raise ValueError("factor refinement keeps X in the nuclear ball: it needs constraint=NuclearBall(tau)")
        rule = make_step_rule((OpenLoop() if constraint.bounded else Constant(1.0)) if step_size is None else step_size)
        _check_rule(rule, objective)
        W = _start_weight(x0, objective.shape)

        self.objective, self.oracle, self.rule, self.constraint, self.gap_set = objective, oracle, rule, constraint, gap_set
        self.variant, self.refine, self.seed, self.record_rank, self.svd = variant, refine, seed, record_rank, svd
        self.direction = DIRECTIONS[variant]
        gen = torch.Generator().manual_seed(seed)
        self.site = TensorSite(W, oracle.rank, lora_alpha=oracle.lora_alpha, keep_initial=True, generator=gen)
        self.chain = ResidualLowRankOptimizer([self.site], oracle.make_optimizer(list(self.site.factors())),
                                              shrink=constraint.shrink, seed=seed)
        tracked = variant != "vanilla" or refine is not None
        self.atoms = ActiveSet(*objective.shape, constraint.tau) if tracked else None
        self._w0_zero = not bool(self.site.initial.any())
        self._model = objective.lowrank(None if self._w0_zero else self.site.initial) if refine is not None else None
        self.t, self.elapsed, self.inner_steps, self.rank_bound = 0, 0.0, 0, 0
        self.trace = Trace()
        self.inner_losses: list[float] = []
        self._warm = None
        self._pending: LinkState | None = None

    # ------------------------------------------------------------------ measuring
    @property
    def W(self) -> torch.Tensor:
        """The current ``(m, n)`` float32 weight (shares storage with the site)."""
        return self.site.weight

    @property
    def state(self) -> LinkState | None:
        """The measured :class:`~cola_opt.fw.link.LinkState` of ``W_t`` (None until :meth:`measure`, and after :meth:`advance`)."""
        return self._pending

    def measure(self) -> TraceRow:
        """Evaluate ``W_t``: append and return its trace row."""
        t0 = time.perf_counter()
        W = self.site.weight
        m, n = W.shape
        f, G = self.objective.value_and_gradient(W)
        X = Residual(self.site, self._w0_zero)
        gx = X.inner(G)
        ans, gap = None, math.nan
        if self.gap_set.bounded:
            v0 = self._warm if (self.oracle.warm_start and self._warm is not None) else None
            ans = self.gap_set.lmo(G, method=self.svd, v0=v0, seed=self.seed + self.t)
            self._warm = ans.v if m >= n else ans.u
            gap = gx - ans.value
        self._pending = LinkState(t=self.t, svd_seed=self.seed + self.t, f=f, G=G, X=X, gx=gx, gap_answer=ans,
                                  gap_is_constraint=self.gap_set is self.constraint, constraint=self.constraint,
                                  objective=self.objective, chain=self.chain, site=self.site)
        self.elapsed += time.perf_counter() - t0
        exact = self.record_rank == "exact" or (self.record_rank == "auto" and min(m, n) <= EXACT_RANK_MAX)
        rank = numerical_rank(X.dense()) if exact else self.rank_bound
        row = TraceRow(iteration=self.t, primal=f, fw_gap=gap, rank=rank, rank_exact=exact, time=self.elapsed,
                       inner_steps=self.inner_steps, grad_norm=G.frobenius_norm())
        self.trace.rows.append(row)
        return row

    # ------------------------------------------------------------------ stepping
    def advance(self) -> None:
        """Take the step from the last measured iterate: propose, step size, knot, refine."""
        if self._pending is None:
            raise RuntimeError("advance() needs a measure() of the current iterate first")
        t0 = time.perf_counter()
        state, row = self._pending, self.trace.rows[-1]
        proposal = self.direction(self.oracle.propose(state), state, self.atoms)
        gamma = float(self.rule(line_of(state, proposal, self.rule.needs)))
        state.X.release()
        self._take(proposal, gamma)
        self.inner_losses.extend(proposal.losses)
        self.inner_steps += proposal.steps
        row.step_size, row.direction, row.oracle_error = gamma, proposal.kind, proposal.oracle_error
        self._pending = None
        if self.refine is not None:
            refined = self.refine.propose(self._model, self.atoms)
            self._take(refined, 1.0)
            row.refine_steps = refined.steps
        self.t += 1
        self.elapsed += time.perf_counter() - t0

    def _take(self, p: Proposal, gamma: float) -> None:
        """``W <- W + gamma (Delta - rho X)`` by one knot of the chain; then the books (atoms, rank)."""
        if p.trained:
            self.chain.tie_knot(step_size=gamma, shrink=p.shrink, next_rank=self.oracle.rank)
        else:
            B, A = p.B, p.A
            m, n = self.site.shape
            if B.shape[1] > min(m, n):  # a pairwise step on a one-row matrix, say
                U, s, V = compress_factors(B, A.T, rtol=0.0, max_rank=min(m, n))
                B, A = U * s, V.T
            self.chain.merge_low_rank([(as_tensor(B), as_tensor(A))], step_size=gamma, shrink=p.shrink,
                                      next_rank=self.oracle.rank)
        if self.atoms is not None:
            p.book(self.atoms, gamma)
        self.rank_bound = p.rank_after(self.rank_bound, gamma, self.atoms)

    # ------------------------------------------------------------------ the loop
    def run(self, max_iter: int, tol: float | None = 0.0, callback: Callable | None = None,
            time_limit: float | None = None, progress=None) -> Result:
        """Run until ``t == max_iter`` links in total, the gap is ``<= tol``, ``callback``
        returns False, or ``time_limit`` seconds (of solver time) pass.

        Args:
            max_iter: total links (counted from the start of the run, across resumes).
            tol: FW-gap tolerance (``fw_gap <= tol`` stops; NaN gaps never stop); None never
                stops on the gap (the checks in proofs_check run a fixed number of links).
            callback: ``callback(row, solver)``; returning ``False`` stops.
            time_limit: seconds of solver time.
            progress: a tqdm-like object with ``update(n)``, or None.

        Raises:
            ValueError: unless ``max_iter`` is an integer ``>= 0``, ``tol`` None or a finite
                number ``>= 0``, ``time_limit`` None or a number ``> 0`` (``inf`` allowed),
                ``callback`` None or callable, ``progress`` None or with ``update``.
        """
        max_iter, tol, time_limit = _check_run(max_iter, tol, time_limit, callback, progress)
        if self.trace.rows and self.trace.rows[-1].iteration == self.t:
            self.trace.rows.pop()  # re-measure the current iterate (after a resume)
        while True:
            row = self.measure()
            if tol is not None and row.fw_gap <= tol:
                status, msg = 0, f"FW gap {row.fw_gap:.3e} <= tol {tol:g}"
            elif self.t >= max_iter:
                status, msg = 1, f"reached max_iter = {max_iter}"
            elif callback is not None and callback(row, self) is False:
                status, msg = 2, "callback returned False"
            elif time_limit is not None and self.elapsed >= time_limit:
                status, msg = 3, f"time limit {time_limit:g} s"
            else:
                self.advance()
                if progress is not None:
                    progress.update(1)
                continue
            break
        return self.result(status, msg)

    def result(self, status: int = 1, message: str = "") -> Result:
        last = self.trace.rows[-1]
        return Result(x=self.site.weight.detach().numpy().copy(), fun=last.primal, fw_gap=last.fw_gap, nit=self.t,
                      status=status, success=status in (0, 2), message=message, trace=self.trace,
                      knots=list(self.chain.knots), chain_length=len(self.chain.knots),
                      inner_losses=list(self.inner_losses), solver=self)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """Everything needed to continue the run bit for bit (tensors cloned)."""
        return {
            "t": self.t, "elapsed": self.elapsed, "inner_steps": self.inner_steps, "rank_bound": self.rank_bound,
            "W": self.site.weight.detach().clone(), "W0": self.site.initial.clone(),
            "B": self.site.lora_B.detach().clone(), "A": self.site.lora_A.detach().clone(),
            "chain": self.chain.state_dict(), "rule": self.rule.state_dict(),
            "atoms": self.atoms.state_dict() if self.atoms is not None else None,
            "refine": self.refine.state_dict() if self.refine is not None else None,
            "warm": None if self._warm is None else self._warm.copy(),
            "trace": self.trace.state_dict(), "inner_losses": list(self.inner_losses),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into a solver built with the same settings.

        Raises:
            ValueError: if the weight's shape differs.
        """
        if tuple(state["W"].shape) != self.site.shape:
            raise ValueError(f"state W has shape {tuple(state['W'].shape)}, this solver {self.site.shape}")
        self.chain.load_state_dict(state["chain"])
        self.site.weight.copy_(state["W"])
        self.site.restore_initial_(state["W0"])
        self._w0_zero = not bool(self.site.initial.any())
        if self.site.rank != state["A"].shape[0]:
            self.site.reset_factors(int(state["A"].shape[0]))
        self.site.lora_B.copy_(state["B"])
        self.site.lora_A.copy_(state["A"])
        self.rule.load_state_dict(state["rule"])
        if self.atoms is not None:
            self.atoms.load_state_dict(state["atoms"])
        if self.refine is not None:
            self.refine.load_state_dict(state["refine"])
        self.t, self.elapsed = state["t"], state["elapsed"]
        self.inner_steps, self.rank_bound = state["inner_steps"], state["rank_bound"]
        self._warm = None if state["warm"] is None else state["warm"].copy()
        self.trace = Trace.from_state(state["trace"])
        self.inner_losses = list(state["inner_losses"])
        self._pending = None


def minimize(objective: Objective, x0=None, *, oracle: Oracle | None = None, step_size=None,
             constraint: ConstraintSet | None = None, variant: str = "vanilla",
             refine: FactorRefinement | None = None, max_iter: int = 100, tol: float | None = 0.0,
             callback: Callable | None = None, time_limit: float | None = None,
             gap_set: ConstraintSet | None = None, seed: int = 0, record_rank: str = "auto", svd: str = "auto",
             progress=None) -> Result:
    """Minimize ``objective`` over ``W0 + constraint`` with the chain loop; see :class:`ChainSolver`.

    Returns:
        a :class:`~cola_opt.fw.result.Result`.

    Raises:
        ValueError: as :class:`ChainSolver` and :meth:`ChainSolver.run`, before any work.
    """
    _check_run(max_iter, tol, time_limit, callback, progress)
    solver = ChainSolver(objective, x0, oracle=oracle, step_size=step_size, constraint=constraint, variant=variant,
                         refine=refine, gap_set=gap_set, seed=seed, record_rank=record_rank, svd=svd)
    return solver.run(max_iter, tol=tol, callback=callback, time_limit=time_limit, progress=progress)
