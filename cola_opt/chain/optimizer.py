"""The chain loop: :class:`ResidualLowRankOptimizer`.

One chain of residual low-rank links (Xia, Qin and Hazan 2024, "Chain of LoRA",
Algorithm 1). Link ``k`` trains the factors of every site with an inner
``torch.optim`` optimizer; a *knot* then

1. merges each site's update into its base weight,
   ``W <- W + step_size * (Delta - shrink * (W - W0))`` with
   ``Delta = scaling * B @ A``, formed in float32 and cast once;
2. refuses, before touching any weight, an update that is not finite;
3. re-initialises the factors (``A`` Kaiming-uniform, ``B`` zeros), optionally at a
   new rank;
4. resets the inner optimizer's state for the factors (full, pruned, or kept);
5. records the link index, the step and the knot's wall time.

COLA is ``step_size = 1, shrink = 0`` with knots at chosen steps; Frank-Wolfe on a
constraint set is ``shrink = 1`` with ``step_size = gamma_t`` (DESIGN §2). The same
object drives an LLM fine-tuning loop (sites over PEFT layers) and the toy problems
(sites over tensors).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any

import torch

from ..checks import integer, rank_in_range, real
from .knot import KnotRecord, NonFiniteUpdateError, check_updates, merge_updates
from .reset import ResetPolicy, make_reset_policy
from .schedules import validate_knots
from .sites import Site, storage_key

__all__ = [
    "KnotRecord",
    "NonFiniteUpdateError",
    "ResidualLowRankOptimizer",
]


# --------------------------------------------------------------------- the chain
class ResidualLowRankOptimizer:
    """A chain of rank-r residual links over a set of sites.

    It wraps an inner ``torch.optim`` optimizer over the current link's factors and
    ties knots on a schedule (or when :meth:`tie_knot` is called). Use it like an
    optimizer: ``loss.backward(); chain.step(); chain.zero_grad()``. LR schedulers
    attach to :attr:`optimizer`, the inner optimizer.

    Args:
        sites: the sites of the chain (at least one); their factors must be in
            ``optimizer``.
        optimizer: the inner optimizer. It may also hold other Parameters (biases,
            say), which knots leave alone. ``None`` builds ``torch.optim.AdamW`` over
            the factors with ``lr``.
        knot_steps: strictly increasing optimizer-step indices after which a knot is
            tied (see :mod:`cola_opt.chain.schedules`). Empty means one link: plain LoRA.
        ranks: rank of each link, ``len(knot_steps) + 1`` entries; link 0 keeps the
            sites' current rank, so ``ranks[0]`` must equal it. ``None`` keeps the rank.
        step_size: ``gamma`` of the merge, a finite number; COLA uses 1. A knot may
            override it (:meth:`tie_knot`), as the Frank-Wolfe driver does per link.
        shrink: coefficient of ``X = W - W0`` in the merge; 0 for COLA, 1 for
            Frank-Wolfe on a constraint set. Nonzero needs sites with ``keep_initial``.
        reset: optimizer policy at a knot: ``"full"`` (COLA), ``"keep"``,
            ``"prune:<ratio>"`` (ReLoRA) or a :class:`ResetPolicy`.
        seed: seeds the re-initialisation of ``A``: link ``k``'s draw for site ``i`` is
            a function of ``(seed, k, i)`` only, identical on every process and after a
            resume.
        lr: learning rate of the default AdamW.

    Raises:
        ValueError: on no sites, factors missing from ``optimizer``, bad knot steps,
            a ``ranks`` list of the wrong length or with a bad rank, a bad ``reset``, a
            ``step_size`` or ``shrink`` that is not a finite number.
    """

    def __init__(
        self,
        sites: Iterable[Site],
        optimizer: torch.optim.Optimizer | None = None,
        *,
        knot_steps: Sequence[int] = (),
        ranks: Sequence[int] | None = None,
        step_size: float = 1.0,
        shrink: float = 0.0,
        reset: str | ResetPolicy = "full",
        seed: int = 0,
        lr: float = 1e-3,
    ) -> None:
        self.sites: list[Site] = list(sites)
        if not self.sites:
            raise ValueError("a chain needs at least one site")
        owners: dict[object, str] = {}
        for s in self.sites:  # a weight merged through two sites would take every update twice
            key = storage_key(s.weight)
            if key in owners:
                raise ValueError(f"sites {owners[key]!r} and {s.name!r} share one weight; give each weight one site")
            owners[key] = s.name
        self.knot_steps = validate_knots(knot_steps)
        self.ranks = None if ranks is None else self._check_ranks(ranks)
        self.step_size = real(step_size, "step_size")
        self.shrink = real(shrink, "shrink")
        if self.shrink != 0.0:
            missing = [s.name for s in self.sites if s.initial is None]
            if missing:
                raise ValueError(f"shrink={shrink} needs W0, but sites {missing[:3]} were built without keep_initial")
        self.seed = integer(seed, "seed", 0)
        self.reset_policy = make_reset_policy(reset)
        if optimizer is None:
            optimizer = torch.optim.AdamW(self.factor_parameters(), lr=lr, weight_decay=0.0)
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        absent = [s.name for s in self.sites for p in s.factors() if id(p) not in held]
        if absent:
            raise ValueError(f"the inner optimizer does not hold the factors of sites {absent[:3]}")
        self.optimizer = optimizer
        self.step_count = 0
        self.link = 0
        self.knots: list[KnotRecord] = []
        self._hooks: dict[str, list[Callable]] = {"before": [], "after": []}

    # ------------------------------------------------------------------ optimizer API
    def factor_parameters(self) -> list[torch.nn.Parameter]:
        """All sites' current factors ``[B_0, A_0, B_1, A_1, ...]``."""
        return [p for s in self.sites for p in s.factors()]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the inner optimizer's gradients."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> KnotRecord | None:
        """One inner-optimizer step; then a knot if the schedule has one here.

        Args:
            closure: passed to the inner optimizer's ``step`` (LBFGS needs one); what it
                returns (the loss) is not passed on: compute the loss yourself if you need it.

        Returns:
            the :class:`KnotRecord` if a knot was tied after this step, else ``None``.

        Raises:
            NonFiniteUpdateError: as :meth:`tie_knot`, when a due knot refuses its merge;
                the step is counted, the knot is not tied.
        """
        if closure is not None:
            self.optimizer.step(closure)
        else:
            self.optimizer.step()
        return self.advance()

    def advance(self) -> KnotRecord | None:
        """Count one optimizer step done elsewhere (an HF ``Trainer``, say, or a skipped one); knot if due.

        Returns:
            the :class:`KnotRecord` if a knot was tied, else ``None``.
        """
        self.step_count += 1
        if self.step_count in self.knot_steps:
            return self.tie_knot()
        return None

    def add_knot_hook(
        self, hook: Callable[[ResidualLowRankOptimizer, KnotRecord | None], None], *, when: str = "after"
    ) -> Callable[[], None]:
        """Call ``hook(chain, record)`` at every knot.

        Args:
            hook: called with the chain and, after a knot, its :class:`KnotRecord`
                (``None`` before).
            when: ``"before"``: after the finiteness checks, before any weight changes,
                while the factors still hold the trained link (to save it as an adapter,
                say); ``"after"``: once the next link has started.

        Returns:
            a function that removes the hook.

        Raises:
            ValueError: if ``when`` is neither ``"before"`` nor ``"after"``.
        """
        if when not in self._hooks:
            raise ValueError(f"knot hook when={when!r} must be 'before' or 'after'")
        self._hooks[when].append(hook)
        return lambda: self._hooks[when].remove(hook)

    @property
    def chain_length(self) -> int:
        """Number of links in the schedule: ``len(knot_steps) + 1``."""
        return len(self.knot_steps) + 1

    # ------------------------------------------------------------------ the knot
    def current_step_size(self) -> float:
        """``gamma`` for the current link."""
        return self.step_size

    def _generator(self, link: int, site_index: int) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + link * 10_007 + site_index) % (2**63 - 1))
        return g

    @torch.no_grad()
    def tie_knot(
        self, step_size: float | None = None, shrink: float | None = None, next_rank: int | None = None
    ) -> KnotRecord:
        """Merge the current link into every site, then start the next link.

        Args:
            step_size: overrides the chain's ``gamma`` for this knot.
            shrink: overrides the chain's shrink coefficient for this knot.
            next_rank: rank of the link that starts after the knot; overrides the
                ``ranks`` schedule. ``None`` follows the schedule (or keeps the rank).

        Returns:
            the :class:`KnotRecord` (also appended to :attr:`knots`).

        Raises:
            ValueError: if ``next_rank`` is not an integer in ``[1, min(m, n)]`` of every
                site; checked before anything changes.
            NonFiniteUpdateError: if any site's update, or its merged weight after the
                cast, holds a NaN or inf. Nothing is merged, reset or counted then.
        """
        t0 = time.perf_counter()
        if next_rank is not None:
            self._check_rank("next_rank", next_rank)
        gamma = self.current_step_size() if step_size is None else float(step_size)
        rho = self.shrink if shrink is None else float(shrink)
        if not math.isfinite(gamma) or not math.isfinite(rho):
            raise NonFiniteUpdateError(f"knot step_size={gamma} shrink={rho} must be finite")
        biggest, held = check_updates(self.sites, gamma, rho, f"link {self.link} at step {self.step_count}")
        t_hooks = self._call_hooks("before", None)
        merge_updates(self.sites, gamma, rho, held)
        del held
        merged_rank = max(s.rank for s in self.sites)
        self._start_next_link(next_rank)
        record = KnotRecord(
            link=self.link,
            step=self.step_count,
            seconds=time.perf_counter() - t0 - t_hooks,
            step_size=gamma,
            shrink=rho,
            rank=merged_rank,
            next_rank=max(s.rank for s in self.sites),
            max_abs_update=biggest,
            lr=[float(g["lr"]) for g in self.optimizer.param_groups],
        )
        self.knots.append(record)
        self.link += 1
        self._call_hooks("after", record)
        return record

    def _call_hooks(self, when: str, record: KnotRecord | None) -> float:
        """Call the knot hooks registered for ``when``; return the seconds they took."""
        t0 = time.perf_counter()
        for hook in list(self._hooks[when]):
            hook(self, record)
        return time.perf_counter() - t0

    def _start_next_link(self, next_rank: int | None) -> None:
        """Re-initialise every site's factors (at ``next_rank``, or the schedule's) and reset the optimizer."""
        if next_rank is None and self.ranks is not None and self.link + 1 < len(self.ranks):
            next_rank = self.ranks[self.link + 1]
        for i, site in enumerate(self.sites):
            site.reset_factors(next_rank, generator=self._generator(self.link + 1, i))
        self.reset_policy(self.optimizer, self.factor_parameters())

    def merge_low_rank(
        self,
        factors: Sequence[tuple[torch.Tensor, torch.Tensor]],
        *,
        step_size: float,
        shrink: float,
        next_rank: int | None = None,
    ) -> KnotRecord:
        """Merge explicit low-rank updates: ``W <- W + step_size * (B @ A - shrink * (W - W0))``.

        Writes ``(B, A)`` into each site's link with :meth:`Site.set_factors`, then ties a
        knot; all checks, re-initialisation, optimizer reset and records are the knot's.
        Exact oracles (Frank-Wolfe atoms, away and pairwise directions, refined factors)
        reach the weights only through this method.

        Args:
            factors: one ``(B, A)`` pair per site, ``B`` of shape ``(m, k)``, ``A`` ``(k, n)``.
            step_size, shrink, next_rank: as in :meth:`tie_knot`.

        Raises:
            ValueError: on a wrong number of pairs, factor shapes that do not fit a site,
                or a bad ``next_rank``.
            NonFiniteUpdateError: if a given factor holds a NaN or inf (the link is then
                left as it was), or as in :meth:`tie_knot`.
        """
        factors = list(factors)
        if len(factors) != len(self.sites):
            raise ValueError(f"{len(factors)} factor pairs given for {len(self.sites)} sites")
        for site, (B, A) in zip(self.sites, factors):  # check all before writing any
            site.check_factors(B, A)
        for site, (B, A) in zip(self.sites, factors):
            if not (bool(torch.isfinite(B).all()) and bool(torch.isfinite(A).all())):
                raise NonFiniteUpdateError(
                    f"refusing to merge link {self.link}: the factors given for site {site.name!r} are not finite; "
                    "the weights and the link are unchanged"
                )
        if next_rank is not None:
            self._check_rank("next_rank", next_rank)
        for site, (B, A) in zip(self.sites, factors):
            site.set_factors(B, A)
        return self.tie_knot(step_size=step_size, shrink=shrink, next_rank=next_rank)

    def _check_ranks(self, ranks: Sequence[int]) -> tuple[int, ...]:
        """The ``ranks`` schedule, checked: one rank per link, the first the sites' current one."""
        ranks = tuple(integer(r, "each of ranks", 1) for r in ranks)
        if len(ranks) != len(self.knot_steps) + 1:
            raise ValueError(f"ranks {list(ranks)} must have one entry per link: {len(self.knot_steps) + 1}")
        current = {s.rank for s in self.sites}
        if current != {ranks[0]}:
            raise ValueError(f"ranks[0] = {ranks[0]} must equal the sites' current rank {sorted(current)}")
        self._check_rank("each of ranks", max(ranks))
        return ranks

    def _check_rank(self, name: str, rank) -> None:
        for s in self.sites:
            rank_in_range(rank, s.shape, name, f"site {s.name!r}")

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """The chain position and the inner optimizer's state.

        Weights and factors belong to the model (or to the sites' tensors) and are
        saved with it; load this *before* the model's state, so factor shapes match.
        """
        return {
            "inner": self.optimizer.state_dict(),
            "step_count": self.step_count,
            "link": self.link,
            "knot_steps": list(self.knot_steps),
            "ranks": list(self.ranks) if self.ranks is not None else None,
            "site_ranks": [s.rank for s in self.sites],
            "seed": self.seed,
            "knots": [asdict(k) for k in self.knots],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; resizes factors whose rank differs.

        Raises:
            ValueError: if the state belongs to a chain with another number of sites or
                another knot schedule.
        """
        if len(state["site_ranks"]) != len(self.sites):
            raise ValueError(f"state has {len(state['site_ranks'])} sites, this chain has {len(self.sites)}")
        if list(state["knot_steps"]) != list(self.knot_steps):
            raise ValueError(f"state knot steps {state['knot_steps']} differ from this chain's {list(self.knot_steps)}")
        for site, r in zip(self.sites, state["site_ranks"]):
            if site.rank != r:
                site.reset_factors(r)
        self.optimizer.load_state_dict(state["inner"])
        self.step_count = int(state["step_count"])
        self.link = int(state["link"])
        self.seed = int(state["seed"])
        self.knots = [KnotRecord(**k) for k in state["knots"]]
