"""The one chain loop on explicit objectives: :class:`ChainSolver` and :func:`minimize`.

A :class:`ChainSolver` owns one :class:`~cola_opt.chain.sites.TensorSite` over ``W`` and one
:class:`~cola_opt.chain.optimizer.ResidualLowRankOptimizer`; every change of ``W`` is a knot of that
chain. Link ``t``:

1. *measure* ``f(W_t)``, ``grad f(W_t)`` and the FW gap ``g_t = <G, X_t> - min_S <G, S>``
   over ``gap_set`` (default: the constraint set);
2. *propose*: an exact oracle returns factors (the LMO atom, an away or pairwise
   direction, a block-LMO point); the inexact oracle trains the link's factors for ``K``
   inner steps;
3. *step*: the step rule picks ``gamma_t`` on the line ``W_t + gamma d`` with
   ``d = Delta - shrink * X_t``;
4. *knot*: ``W <- W + gamma_t (Delta - shrink X_t)`` through the chain
   (:meth:`~cola_opt.chain.optimizer.ResidualLowRankOptimizer.merge_low_rank` or
   :meth:`~cola_opt.chain.optimizer.ResidualLowRankOptimizer.tie_knot`);
5. optionally *refine* the factors of ``X`` and merge the refined ``X`` by one more knot
   (``step_size = 1, shrink = 1``).

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

import numpy as np
import torch

from ..chain.optimizer import ResidualLowRankOptimizer
from ..chain.sites import TensorSite
from ..checks import choice, finite_array, integer, real, real_array
from ..objectives.base import Objective
from .active_set import ActiveSet
from .oracles import _SVD_METHODS, BlockLMO, ExactLMO, InexactOracle, Oracle
from .refine import FactorRefinement
from .result import Result, Trace, TraceRow
from .sets import ConstraintSet, NuclearBall, Unconstrained
from .spectral import compress_factors, numerical_rank
from .step_sizes import Constant, ExactLineSearch, Line, OpenLoop, ShortStep, make_step_rule

__all__ = ["EXACT_RANK_MAX", "ChainSolver", "minimize"]

#: ``record_rank="auto"`` computes the exact numerical rank when ``min(m, n)`` is at most this.
EXACT_RANK_MAX = 64
_VARIANTS = ("vanilla", "away", "pairwise")


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).float()


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


class _Residual:
    """``X = W - W0`` of a site, materialised only when a dense consumer asks for it."""

    def __init__(self, site: TensorSite, w0_zero: bool = False) -> None:
        self.site, self._dense, self.w0_zero = site, None, w0_zero

    def dense(self) -> torch.Tensor:
        """The ``(m, n)`` float32 residual (cached until :meth:`release`)."""
        if self._dense is None:
            self._dense = self.site.residual()
        return self._dense

    def release(self) -> None:
        self._dense = None

    def inner(self, G) -> float:
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
        for blk in self.site._row_blocks():
            part = self.site.weight[blk].float()
            if not self.w0_zero:
                part = part - self.site.initial[blk]
            total += float(torch.linalg.vector_norm(part).double() ** 2)
        return total


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
        variant: ``"vanilla"``, ``"away"`` or ``"pairwise"`` (the last two need ExactLMO).
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
        if not isinstance(objective, Objective):
            raise ValueError(f"objective must be a cola_opt Objective, got {type(objective).__name__}")
        m, n = objective.shape
        oracle = ExactLMO() if oracle is None else oracle
        constraint = Unconstrained() if constraint is None else constraint
        gap_set = constraint if gap_set is None else gap_set
        if not isinstance(oracle, Oracle):
            raise ValueError(f"oracle {oracle!r} must be an Oracle (ExactLMO, BlockLMO, InexactOracle) or None")
        for name, v in (("constraint", constraint), ("gap_set", gap_set)):
            if not isinstance(v, ConstraintSet):
                raise ValueError(f"{name} {v!r} must be a ConstraintSet (NuclearBall, Unconstrained) or None")
        if refine is not None and not isinstance(refine, FactorRefinement):
            raise ValueError(f"refine {refine!r} must be a FactorRefinement or None")
        choice(variant, "variant", _VARIANTS)
        choice(record_rank, "record_rank", ("auto", "exact", "bound"))
        choice(svd, "svd method", _SVD_METHODS)
        seed = integer(seed, "seed", 0)
        bounded = isinstance(constraint, NuclearBall)
        if isinstance(oracle, (ExactLMO, BlockLMO)) and not bounded:
            raise ValueError(f"{oracle!r} needs a bounded constraint set (NuclearBall), got {constraint!r}")
        if isinstance(oracle, InexactOracle):
            if oracle.target == "objective" and bounded:
                raise ValueError("InexactOracle(target='objective') merges unconstrained steps; use "
                                 "target='linear' on a NuclearBall, or constraint=Unconstrained()")
            if oracle.target == "linear" and not bounded:
                raise ValueError("InexactOracle(target='linear') approximates an LMO: it needs a NuclearBall")
        if variant != "vanilla" and not isinstance(oracle, ExactLMO):
            raise ValueError(f"variant {variant!r} needs the exact rank-1 LMO (ExactLMO), got {oracle!r}")
        if refine is not None and not bounded:
            raise ValueError("factor refinement keeps X in the nuclear ball: it needs constraint=NuclearBall(tau)")
        if oracle.rank > min(m, n):
            raise ValueError(f"oracle rank {oracle.rank} exceeds min(m, n) = {min(m, n)} for shape {(m, n)}")
        if step_size is None:
            step_size = OpenLoop() if bounded else Constant(1.0)
        rule = make_step_rule(step_size)
        if isinstance(rule, ExactLineSearch) and not objective.quadratic:
            raise ValueError(f"exact line search needs a quadratic objective; {type(objective).__name__} is not")
        if isinstance(rule, ShortStep) and rule.L is None and objective.smoothness is None:
            raise ValueError(f"ShortStep needs L: {type(objective).__name__} has no smoothness constant")
        W = _start_weight(x0, (m, n))

        self.objective, self.oracle, self.rule, self.constraint, self.gap_set = objective, oracle, rule, constraint, gap_set
        self.variant, self.refine, self.seed, self.record_rank, self.svd = variant, refine, seed, record_rank, svd
        gen = torch.Generator().manual_seed(seed)
        self.site = TensorSite(W, oracle.rank, lora_alpha=oracle.lora_alpha, keep_initial=True, generator=gen)
        self.chain = ResidualLowRankOptimizer([self.site], oracle.make_optimizer(list(self.site.factors())),
                                              shrink=constraint.shrink, seed=seed)
        tracked = variant != "vanilla" or refine is not None
        self.atoms = ActiveSet(m, n, constraint.tau) if tracked else None
        self._w0_zero = not bool(self.site.initial.any())
        self._model = objective.lowrank(None if self._w0_zero else self.site.initial) if refine is not None else None
        self.t, self.elapsed, self.inner_steps, self.rank_bound = 0, 0.0, 0, 0
        self.trace = Trace()
        self.inner_losses: list[float] = []
        self._warm = None
        self._pending = None

    # ------------------------------------------------------------------ measuring
    @property
    def W(self) -> torch.Tensor:
        """The current ``(m, n)`` float32 weight (shares storage with the site)."""
        return self.site.weight

    def measure(self) -> TraceRow:
        """Evaluate ``W_t``: append and return its trace row."""
        t0 = time.perf_counter()
        W = self.site.weight
        f, G = self.objective.value_and_gradient(W)
        X = _Residual(self.site, self._w0_zero)
        gx = X.inner(G)
        ans, gap = None, math.nan
        if isinstance(self.gap_set, NuclearBall):
            v0 = self._warm if (getattr(self.oracle, "warm_start", True) and self._warm is not None) else None
            ans = self.gap_set.lmo(G, method=self.svd, v0=v0, seed=self.seed + self.t)
            m, n = W.shape
            self._warm = ans.v if m >= n else ans.u
            gap = gx - ans.value
        self._pending = (G, f, X, gx, ans)
        self.elapsed += time.perf_counter() - t0
        m, n = W.shape
        exact = self.record_rank == "exact" or (self.record_rank == "auto" and min(m, n) <= EXACT_RANK_MAX)
        rank = numerical_rank(X.dense()) if exact else self.rank_bound
        row = TraceRow(iteration=self.t, primal=f, fw_gap=gap, rank=rank, rank_exact=exact, time=self.elapsed,
                       inner_steps=self.inner_steps, grad_norm=G.frobenius_norm())
        self.trace.rows.append(row)
        return row

    # ------------------------------------------------------------------ stepping
    def _line(self, G, f, X: _Residual, gx, B: np.ndarray, A: np.ndarray, shrink: float, gamma_max: float) -> Line:
        Bt, At = _t(B), _t(A)
        ba2 = float(np.sum((B.T @ B) * (A @ A.T)))
        bax = float((Bt * X.times(At.t())).double().sum()) if shrink != 0.0 else 0.0
        x2 = X.norm2() if shrink != 0.0 else 0.0
        curv, value_at = self.objective.along(self.site.weight, None if self._w0_zero else self.site.initial,
                                              B, A, shrink)
        return Line(t=self.t, f=f, slope=G.inner_lowrank(B, A) - shrink * gx,
                    norm2=max(ba2 - 2 * shrink * bax + shrink * shrink * x2, 0.0), gamma_max=gamma_max,
                    smoothness=self.objective.smoothness, curvature=curv, value_at=value_at)

    def _fit(self, B: np.ndarray, A: np.ndarray):
        m, n = self.site.shape
        if B.shape[1] <= min(m, n):
            return B, A
        U, s, V = compress_factors(B, A.T, rtol=0.0, max_rank=min(m, n))
        return U * s, V.T

    def _merge(self, B, A, gamma, shrink):
        B, A = self._fit(B, A)
        self.chain.merge_low_rank([(_t(B), _t(A))], step_size=gamma, shrink=shrink, next_rank=self.oracle.rank)

    def advance(self) -> None:
        """Take the step from the last measured iterate: propose, step size, knot, refine."""
        if self._pending is None:
            raise RuntimeError("advance() needs a measure() of the current iterate first")
        t0 = time.perf_counter()
        G, f, X, gx, ans = self._pending
        row = self.trace.rows[-1]
        tau = getattr(self.constraint, "tau", None)
        if isinstance(self.oracle, InexactOracle):
            losses = self.oracle.train_link(self.chain, self.site, self.objective, G, tau)
            self.inner_losses.extend(losses)
            self.inner_steps += self.oracle.inner_steps
            B = self.site.lora_B.detach().double().numpy() * self.site.scaling
            A = self.site.lora_A.detach().double().numpy()
            shrink = self.constraint.shrink
            if self.oracle.target == "linear" and ans is not None:
                row.oracle_error = G.inner_lowrank(B, A) - ans.value
            line = self._line(G, f, X, gx, B, A, shrink, 1.0 if shrink else math.inf)
            gamma = self.rule(line)
            X.release()
            self.chain.tie_knot(step_size=gamma, shrink=shrink, next_rank=self.oracle.rank)
            kind, k = "inexact", self.oracle.rank
            if self.atoms is not None:
                self.atoms.c *= 1.0 - gamma
                self._add_atoms(B * gamma, A)
        else:
            gamma, kind, k = self._exact_step(G, f, X, gx, ans)
        if kind in ("fw", "block", "inexact"):
            self.rank_bound = k if (gamma == 1.0 and self.constraint.shrink == 1.0) else self.rank_bound + k
        else:
            self.rank_bound = len(self.atoms)
        row.step_size, row.direction = gamma, kind
        self._pending = None
        X.release()
        if self.refine is not None:
            U, s, V, info = self.refine.run(self._model, self.atoms.U, self.atoms.c, self.atoms.V, tau)
            self.atoms.set_svd(U, s, V)
            self._merge(U * s, V.T, 1.0, 1.0)
            self.rank_bound = len(self.atoms)
            row.refine_steps = info.steps
        self.t += 1
        self.elapsed += time.perf_counter() - t0

    def _add_atoms(self, B: np.ndarray, A: np.ndarray) -> None:
        for i in range(B.shape[1]):
            nb, na = float(np.linalg.norm(B[:, i])), float(np.linalg.norm(A[i]))
            if nb * na > 0:
                self.atoms._add(B[:, i] / nb, A[i] / na, nb * na)

    def _exact_step(self, G, f, X, gx, ans):
        ball = self.constraint
        if isinstance(self.oracle, BlockLMO):
            S = self.oracle.solve(G, X.dense(), ball, self.objective.smoothness, seed=self.seed + self.t)
        elif ans is not None and self.gap_set is ball:
            S = ans
        else:
            S = ball.lmo(G, method=self.oracle.svd, seed=self.seed + self.t)
        kind = "block" if isinstance(self.oracle, BlockLMO) else "fw"
        B, A, shrink, gmax, away = S.B, S.A, 1.0, 1.0, None
        if self.variant != "vanilla":
            away, away_val = self.atoms.away_atom(G)
            lam = self.atoms.weight(away)
            fw_slope = S.value - gx
            aB, aA = self.atoms.atom_factors(away) if away is not None else (np.zeros((G.shape[0], 1)),
                                                                                 np.zeros((1, G.shape[1])))
            if self.variant == "away" and gx - away_val < fw_slope and lam < 1.0 - 1e-12:
                B, A, shrink, gmax, kind = -aB, aA, -1.0, lam / (1.0 - lam), "away"
            elif self.variant == "pairwise":
                if away is not None:
                    B, A = np.hstack([S.B, -aB]), np.vstack([S.A, aA])
                shrink, gmax, kind = 0.0, lam, "pairwise"
        line = self._line(G, f, X, gx, B, A, shrink, gmax)
        gamma = float(self.rule(line))
        X.release()
        self._merge(B, A, gamma, shrink)
        if self.atoms is not None:
            if kind == "away":
                self.atoms.away_step(away, gamma)
            elif kind == "pairwise":
                self.atoms.pairwise_step(away, S.B[:, 0] / ball.tau, S.A[0], gamma)
            else:
                self.atoms.c *= 1.0 - gamma
                self._add_atoms(S.B * gamma, S.A)
                self.atoms.prune()
        return gamma, kind, S.B.shape[1]

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
