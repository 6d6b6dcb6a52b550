"""Residual solvers ("oracles"): what a link proposes before its knot.

* :class:`ExactLMO`: the set's linear minimization oracle; on the nuclear ball the rank-1
  atom ``-tau u1 v1^T`` (Jaggi 2013, Section 4.2). Classic Frank-Wolfe.
* :class:`BlockLMO`: the rank-``r`` exact oracle of block Frank-Wolfe (Allen-Zhu, Hazan,
  Hu and Li 2017, "Linear convergence of a Frank-Wolfe type algorithm over trace-norm
  balls"): ``argmin_{||V||_* <= tau, rank V <= r} <G, V - X> + c/2 ||V - X||_F^2``.
  The linear problem alone always has a rank-1 answer, so a rank-``r`` exact oracle needs
  the quadratic term; its answer is the projection of ``X - G / c`` onto the rank-``r``
  part of the ball (top-``r`` SVD, singular values projected onto the capped simplex).
* :class:`InexactOracle`: COLA's link. ``K`` steps of the chain's inner torch optimizer
  (SGD or Adam) on the link's factors ``(B, A)``, starting from ``B = 0``. With
  ``target="objective"`` the loss is ``f(W + scaling B A)`` (COLA and LoRA as used in
  fine-tuning); with ``target="linear"`` it is the linearised objective
  ``<G / ||G||, scaling B A>`` over the Burer-Monteiro ball
  ``scaling (||B||^2 + ||A||^2) / 2 <= tau``, which contains only points of nuclear norm
  ``<= tau``: an approximate LMO whose error ``eps_t`` the driver measures (COLA Section 4).

One verb: ``oracle.propose(state) -> Proposal`` (:mod:`cola_opt.fw.proposal`), where
``state`` is the link's :class:`cola_opt.fw.link.LinkState` (the gradient, ``X``, the chain).
Oracles never touch the weights: exact ones return factors, which the driver merges
through :meth:`cola_opt.chain.optimizer.ResidualLowRankOptimizer.merge_low_rank`; the inexact one
trains the link in place (a ``trained`` proposal), and the driver ties the knot.
Each oracle also checks, before any work, that it can run on a set and a shape (:meth:`Oracle.check`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from ..checks import choice, integer, rank_in_range, real
from .proposal import Proposal
from .sets import ConstraintSet, LMOAnswer, NuclearBall
from .spectral import SVD_METHODS, project_capped_simplex, top_singular

__all__ = ["BlockLMO", "ExactLMO", "FrozenFactors", "InexactOracle", "Oracle"]


class FrozenFactors:
    """The inner "optimizer" of a chain driven by an exact oracle: it holds the factors, never steps.

    Exact oracles write their answer into the link (:meth:`cola_opt.chain.sites.Site.set_factors`)
    and the knot merges it; nothing is trained. This stand-in offers what the chain uses
    (``param_groups``, ``state``, ``zero_grad``, ``state_dict``) without constructing a
    ``torch.optim`` optimizer, whose first construction imports ``torch._dynamo``
    (measured here: 2.4 s and 77 MB of RSS).
    """

    def __init__(self, params) -> None:
        self.param_groups = [{"params": list(params), "lr": 0.0}]
        self.state: dict = {}

    def step(self, closure=None):
        raise RuntimeError("an exact oracle's chain has no inner optimizer steps")

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            p.grad = None

    def state_dict(self) -> dict:
        return {"state": {}, "param_groups": [{"lr": 0.0, "params": list(range(len(self.param_groups[0]["params"])))}]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("state"):
            raise ValueError("FrozenFactors holds no optimizer state; got a non-empty one")


class Oracle:
    """Base: ``exact`` oracles return factors; inexact ones train the link. ``rank`` is per link.

    Attributes:
        exact: answers exactly (needs a bounded set; no inner optimizer).
        atomic: answers one extreme point of the set (away and pairwise steps need that).
        rank: the rank of every link; lora_alpha: LoRA's ``alpha`` (None: ``scaling = 1``).
        warm_start: the driver may warm-start the gap's SVD with the last singular vector.
    """

    exact: bool = True
    atomic: bool = False
    rank: int = 1
    lora_alpha: float | None = None
    warm_start: bool = True

    def propose(self, state) -> Proposal:
        """The link's :class:`~cola_opt.fw.proposal.Proposal` at ``state`` (a :class:`~cola_opt.fw.link.LinkState`)."""
        raise NotImplementedError

    def check(self, constraint: ConstraintSet, shape: tuple[int, int]) -> None:
        """Refuse, before any work, a set or shape this oracle cannot run on.

        Raises:
            ValueError: for an exact oracle on an unbounded set, or a rank above ``min(m, n)``.
        """
        if self.exact and not constraint.bounded:
            raise ValueError(f"{self!r} needs a bounded constraint set (NuclearBall), got {constraint!r}")
        rank_in_range(self.rank, shape, "oracle rank", "the objective")

    def make_optimizer(self, params):
        """The chain's inner optimizer; exact oracles get :class:`FrozenFactors`."""
        return FrozenFactors(params)


class ExactLMO(Oracle):
    """The exact LMO of the constraint set (rank 1 on the nuclear ball).

    Args:
        svd: ``"auto"``, ``"dense"``, ``"svds"`` or ``"randomized"``
            (:func:`cola_opt.fw.spectral.top_singular`).
        warm_start: pass the previous top singular vector to svds.

    Raises:
        ValueError: on an unknown ``svd``.
    """

    atomic = True

    def __init__(self, svd: str = "auto", warm_start: bool = True) -> None:
        self.svd, self.warm_start = choice(svd, "svd method", SVD_METHODS), bool(warm_start)
        self.rank = 1

    def __repr__(self) -> str:
        return f"ExactLMO(svd={self.svd!r})"

    def propose(self, state) -> Proposal:
        """The set's extreme point ``S = argmin <G, S>`` (``-tau u1 v1^T`` on the ball), a ``"fw"`` step."""
        S = state.lmo(self.svd)
        return Proposal(S.B, S.A, "fw", value=S.value)


class BlockLMO(Oracle):
    """Rank-``r`` exact oracle over the nuclear ball (block Frank-Wolfe).

    ``V = argmin_{||V||_* <= tau, rank V <= r} <G, V - X> + (c/2) ||V - X||_F^2``
    ``  = P_r(X - G / c)``, where ``P_r`` keeps the top ``r`` singular triplets and
    projects their values onto ``{s >= 0, sum s <= tau}`` (von Neumann's trace inequality
    makes this the exact minimizer over the nonconvex set). As ``c -> 0`` it tends to the
    rank-1 LMO.

    Args:
        rank: ``r >= 1``.
        curvature: ``c > 0``; None uses the objective's ``L``.
        svd: as in :class:`ExactLMO`.

    Raises:
        ValueError: on a bad rank, curvature or svd method.
    """

    def __init__(self, rank: int, curvature: float | None = None, svd: str = "auto") -> None:
        self.rank = integer(rank, "block LMO rank", 1)
        self.curvature = None if curvature is None else real(curvature, "block LMO curvature", above=0)
        self.svd = choice(svd, "svd method", SVD_METHODS)

    def __repr__(self) -> str:
        return f"BlockLMO(rank={self.rank}, curvature={self.curvature})"

    def propose(self, state) -> Proposal:
        """The rank-``r`` point ``P_r(X - G / c)`` of :meth:`solve`, a ``"block"`` Frank-Wolfe step."""
        S = self.solve(state.G, state.X.dense(), state.constraint, state.objective.smoothness, seed=state.svd_seed)
        return Proposal(S.B, S.A, "block", value=S.value)

    def solve(self, G, X: np.ndarray | torch.Tensor, ball: NuclearBall, L: float | None, seed: int = 0) -> LMOAnswer:
        """The rank-``r`` answer as factors ``B = U diag(s)``, ``A = V^T`` (float64).

        Args:
            G: the gradient (GradientOperator, ndarray or sparse), ``(m, n)``.
            X: the current residual ``(m, n)`` (torch or numpy).
            ball: the :class:`NuclearBall`.
            L: fallback for ``curvature``.

        Raises:
            ValueError: if neither ``curvature`` nor ``L`` is known, or ``r > min(m, n)``.
        """
        c = self.curvature if self.curvature is not None else L
        if c is None:
            raise ValueError("BlockLMO needs curvature= or an objective with a smoothness constant L")
        m, n = G.shape
        rank_in_range(self.rank, (m, n), "block LMO rank", "the gradient")
        Xn = X.detach().double().numpy() if isinstance(X, torch.Tensor) else np.asarray(X, dtype=np.float64)
        Gop = G.aslinearoperator() if hasattr(G, "aslinearoperator") else G
        Z = LinearOperator((m, n), dtype=np.float64,
                           matvec=lambda v: Xn @ v - (Gop @ v) / c,
                           matmat=lambda V: Xn @ V - (Gop @ V) / c,
                           rmatvec=lambda u: Xn.T @ u - (Gop.T @ u) / c,
                           rmatmat=lambda U: Xn.T @ U - (Gop.T @ U) / c)
        if self.svd in ("auto", "dense") and min(m, n) <= 256:
            dense = Xn - (G.toarray() if hasattr(G, "toarray") else np.asarray(G)) / c
            U, s, V = top_singular(dense, self.rank, method="dense")
        else:
            U, s, V = top_singular(Z, self.rank, method="svds" if self.svd == "auto" else self.svd, seed=seed)
        w = project_capped_simplex(s, ball.tau)
        keep = np.nonzero(w > 0)[0]
        if keep.size == 0:
            keep = np.array([0])
        B, A = U[:, keep] * w[keep], V[:, keep].T
        value = float(np.sum((G.matmat(A.T) if hasattr(G, "matmat") else np.asarray(G @ A.T)) * B))
        return LMOAnswer(B=B, A=A, value=value, sigma=s, u=U[:, 0], v=V[:, 0])


class InexactOracle(Oracle):
    """COLA's residual solver: ``inner_steps`` optimizer steps on the link's factors.

    Args:
        rank: ``r`` of every link.
        inner_steps: ``K >= 1`` optimizer steps per link.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        lr: learning rate (``> 0``).
        target: ``"objective"`` (loss ``f(W + scaling B A)``; needs an unconstrained set)
            or ``"linear"`` (approximate LMO on the nuclear ball, see the module notes).
        lora_alpha: ``scaling = lora_alpha / r`` (finite, ``> 0``); None means ``scaling = 1``.
        momentum: SGD momentum, finite, ``>= 0``.
        record_inner: keep every inner step's loss (for plots of LoRA's plateau).

    Raises:
        ValueError: on any bad setting, naming it.
    """

    exact = False

    def __init__(self, rank: int, inner_steps: int, *, optimizer: str = "adam", lr: float = 1e-2,
                 target: str = "objective", lora_alpha: float | None = None, momentum: float = 0.0,
                 record_inner: bool = False) -> None:
        self.rank = integer(rank, "inexact oracle rank", 1)
        self.inner_steps = integer(inner_steps, "inner_steps", 1)
        self.optimizer = choice(optimizer, "optimizer", ("adam", "adamw", "sgd"))
        self.lr = real(lr, "lr", above=0)
        self.target = choice(target, "target", ("objective", "linear"))
        self.lora_alpha = None if lora_alpha is None else real(lora_alpha, "lora_alpha", above=0)
        self.momentum = real(momentum, "momentum", at_least=0)
        self.record_inner = bool(record_inner)

    def __repr__(self) -> str:
        return (f"InexactOracle(rank={self.rank}, K={self.inner_steps}, {self.optimizer}, lr={self.lr:g}, "
                f"target={self.target!r})")

    def check(self, constraint: ConstraintSet, shape: tuple[int, int]) -> None:
        """As :meth:`Oracle.check`; the ``"linear"`` target needs a bounded set, ``"objective"`` an unbounded one."""
        if self.target == "objective" and constraint.bounded:
            raise ValueError("InexactOracle(target='objective') merges unconstrained steps; use "
                             "target='linear' on a NuclearBall, or constraint=Unconstrained()")
        if self.target == "linear" and not constraint.bounded:
            raise ValueError("InexactOracle(target='linear') approximates an LMO: it needs a NuclearBall")
        super().check(constraint, shape)

    def propose(self, state) -> Proposal:
        """Train the chain's current link for ``K`` inner steps; propose it as it is (``trained``).

        The factors ``(scaling B, A)`` are read after training; for the ``"linear"`` target
        the proposal carries the measured oracle error ``eps_t = <G, Delta> + tau sigma_1(G)``
        (against the gap set's LMO answer). ``shrink`` is the set's; ``gamma_max`` is 1 on the
        ball and ``inf`` unconstrained.
        """
        site = state.site
        losses = self.train_link(state.chain, site, state.objective, state.G, state.constraint.tau)
        B = site.lora_B.detach().double().numpy() * site.scaling
        A = site.lora_A.detach().double().numpy()
        shrink = state.constraint.shrink
        error = math.nan
        if self.target == "linear" and state.gap_answer is not None:
            error = state.G.inner_lowrank(B, A) - state.gap_answer.value
        return Proposal(B, A, "inexact", gamma_max=1.0 if shrink else math.inf, shrink=shrink, trained=True,
                        oracle_error=error, steps=self.inner_steps, losses=losses)

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        return torch.optim.Adam(params, lr=self.lr)

    @staticmethod
    def torch_gradient(G) -> torch.Tensor:
        """The ``(m, n)`` gradient operator ``G`` as a float32 torch tensor: dense, or sparse COO on its support.

        The linear target's loss is ``<G, scaling B A> / ||G||`` with this tensor.
        """
        if G.dense is not None:
            return torch.from_numpy(G.dense).float()
        idx = torch.from_numpy(np.stack([G.rows, G.cols]))
        return torch.sparse_coo_tensor(idx, torch.from_numpy(G.values).float(), G.shape, check_invariants=False).coalesce()

    def train_link(self, chain, site, objective, G=None, tau: float | None = None) -> list[float]:
        """Run ``K`` steps of ``chain``'s inner optimizer on ``site``'s factors; return the losses.

        ``chain.step()`` counts each step (its knot schedule is empty here: the driver ties
        knots). For ``target="linear"``, ``G`` (a GradientOperator at the link's start) and
        ``tau`` are required; after each step ``(B, A)`` is scaled back into the
        Burer-Monteiro ball.

        Raises:
            ValueError: if the linear target is used without ``G`` and ``tau``.
        """
        losses = []
        B, A = site.factors()
        if self.target == "linear":
            if G is None or tau is None:
                raise ValueError("the linear target needs the gradient G and the radius tau")
            Gt = self.torch_gradient(G)
            gnorm = max(G.frobenius_norm(), 1e-300)
            self._project(site, tau)
        for _ in range(self.inner_steps):
            chain.zero_grad()
            if self.target == "objective":
                loss = objective.loss(site.effective_weight())
            else:
                GAt = torch.sparse.mm(Gt, A.t()) if Gt.is_sparse else Gt @ A.t()
                loss = site.scaling * (B * GAt).sum() / gnorm
            loss.backward()
            chain.step()
            if self.target == "linear":
                self._project(site, tau)
            if self.record_inner:
                losses.append(float(loss.detach()))
        return losses

    @staticmethod
    @torch.no_grad()
    def _project(site, tau: float) -> None:
        B, A = site.factors()
        bm = 0.5 * site.scaling * (float(B.square().sum()) + float(A.square().sum()))
        if bm > tau:
            scale = math.sqrt(tau / bm)
            B.mul_(scale)
            A.mul_(scale)
