"""Mutations of the product's own code, each of which the claim checks must catch.

Each :class:`Mutation` patches a real function or constant of ``cola_opt`` (a monkeypatch
of the module attribute the product calls; nothing here subclasses or reimplements a
solver) for the duration of a ``with`` block. The first six are the mutations of
issue 13, which passed the earlier checks; then slowdowns and a skipped reset; the last
five (block FW alone without the shrink, away steps slowed or chosen wrongly, a wrong
block model) are caught by the descent checks of the away and block steps.
``python -m proofs_check --mutations`` runs every claim (quick instances) under each
mutation and prints which checks caught it; tests/test_theory_mutations.py asserts that
every mutation is caught by the claims named in ``caught_by``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["MUTATIONS", "Mutation", "run_mutation"]


@contextmanager
def _setattr(target, name: str, value) -> Iterator[None]:
    old = target.__dict__[name] if isinstance(target, type) else getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, old)


@contextmanager
def _setitem(mapping: dict, key, value) -> Iterator[None]:
    old = mapping[key]
    mapping[key] = value
    try:
        yield
    finally:
        mapping[key] = old


@contextmanager
def _drop_shrink():
    """The FW merge forgets ``- X``: exact and block proposals merge with ``shrink = 0``."""
    from cola_opt.fw.oracles import BlockLMO, ExactLMO

    exact, block = ExactLMO.propose, BlockLMO.propose
    with _setattr(ExactLMO, "propose", lambda self, state: dataclasses.replace(exact(self, state), shrink=0.0)), \
            _setattr(BlockLMO, "propose", lambda self, state: dataclasses.replace(block(self, state), shrink=0.0)):
        yield


def _away_step_times(factor: float):
    @contextmanager
    def patch():
        from cola_opt.fw import solver
        from cola_opt.fw.away import AwayStep

        real = solver.DIRECTIONS["away"]

        def scaled(fw, state, atoms):
            p = real(fw, state, atoms)
            return dataclasses.replace(p, gamma_max=factor * p.gamma_max) if isinstance(p, AwayStep) else p

        with _setitem(solver.DIRECTIONS, "away", scaled):
            yield

    patch.__doc__ = f"The away step's largest step ``lambda / (1 - lambda)`` times {factor:g}."
    return patch


@contextmanager
def _drop_shrink_block():
    """The block FW merge alone forgets ``- X`` (``BlockLMO.propose`` answers ``shrink = 0``)."""
    from cola_opt.fw.oracles import BlockLMO

    block = BlockLMO.propose
    with _setattr(BlockLMO, "propose", lambda self, state: dataclasses.replace(block(self, state), shrink=0.0)):
        yield


@contextmanager
def _away_rule_reversed():
    """The away step taken when it is *less* steep than the FW step (and the FW step when it is steeper)."""
    import numpy as np

    from cola_opt.fw import solver
    from cola_opt.fw.away import AwayStep

    real = solver.DIRECTIONS["away"]

    def reversed_rule(fw, state, atoms):
        if isinstance(real(fw, state, atoms), AwayStep):
            return fw
        index, _ = atoms.away_atom(state.G)
        lam = atoms.weight(index)
        if lam >= 1.0 - 1e-12:
            return fw
        m, n = state.G.shape
        aB, aA = atoms.atom_factors(index) if index is not None else (np.zeros((m, 1)), np.zeros((1, n)))
        return AwayStep(-aB, aA, "away", gamma_max=lam / (1.0 - lam), shrink=-1.0, index=index)

    with _setitem(solver.DIRECTIONS, "away", reversed_rule):
        yield


@contextmanager
def _away_atom_argmin():
    """The away atom chosen by ``argmin <G, a_i>`` instead of ``argmax`` (``ActiveSet.away_atom``)."""
    import numpy as np

    from cola_opt.fw.active_set import ActiveSet

    def argmin(self, G):
        if not len(self):
            return None, 0.0
        vals = self.tau * np.sum(self.U * G.matmat(self.V), axis=0)
        i = int(np.argmin(vals))
        return (None, 0.0) if self.zero_weight > 1e-12 and vals[i] < 0.0 else (i, float(vals[i]))

    with _setattr(ActiveSet, "away_atom", argmin):
        yield


@contextmanager
def _block_curvature_x4():
    """The block oracle's model built with curvature ``4 L`` instead of ``L`` (``BlockLMO.solve``)."""
    from cola_opt.fw.oracles import BlockLMO

    real = BlockLMO.solve
    with _setattr(BlockLMO, "solve", lambda self, G, X, ball, L, seed=0: real(self, G, X, ball, 4.0 * L, seed)):
        yield


@contextmanager
def _gap_on_w():
    """The FW gap's ``<G, X>`` computed on ``W`` instead of ``X = W - W0``."""
    from cola_opt.fw.link import Residual

    with _setattr(Residual, "inner", lambda self, G: G.inner(self.site.weight)):
        yield


@contextmanager
def _link_maximises():
    """COLA's inner link (linear target) ascends ``<G, B A>`` instead of descending it."""
    from cola_opt.fw.oracles import InexactOracle

    real = InexactOracle.torch_gradient
    with _setattr(InexactOracle, "torch_gradient", staticmethod(lambda G: -real(G))):
        yield


def _step_times(factor: float):
    @contextmanager
    def patch():
        from cola_opt.fw import bounds

        real = bounds.cola_step_size
        with _setattr(bounds, "cola_step_size", lambda *a: min(1.0, factor * real(*a))):
            yield

    patch.__doc__ = f"COLA's step eta times {factor:g} (cola_opt.fw.bounds.cola_step_size)."
    return patch


@contextmanager
def _short_step_slowed():
    """The short step divided by 10 (a slowdown the rate bounds' slack hides)."""
    from cola_opt.fw.step_sizes import ShortStep

    real = ShortStep.__call__
    with _setattr(ShortStep, "__call__", lambda self, line: 0.1 * real(self, line)):
        yield


@contextmanager
def _open_loop_slowed():
    """The open-loop step ``2/(t+20)`` instead of ``2/(t+2)``."""
    from cola_opt.fw.step_sizes import OpenLoop

    real = OpenLoop.__call__
    with _setattr(OpenLoop, "__call__", lambda self, line: real(self, dataclasses.replace(line, t=line.t + 18))):
        yield


@contextmanager
def _reset_skipped():
    """The knot's full optimizer reset does nothing."""
    from cola_opt.chain.reset import FullReset

    with _setattr(FullReset, "__call__", lambda self, optimizer, params: None):
        yield


@dataclass(frozen=True)
class Mutation:
    """A patch of the product and the claims expected to catch it."""

    name: str
    what: str
    patch: Callable
    caught_by: tuple[str, ...]


MUTATIONS = (
    Mutation("drop_shrink", "FW merge without the shrink term (exact and block steps)", _drop_shrink, ("C1", "C2")),
    Mutation("away_step_x2", "away step's largest step doubled", _away_step_times(2.0), ("C2",)),
    Mutation("gap_on_W", "FW gap computed on W instead of X = W - W0", _gap_on_w, ("C1", "C2", "C3", "C4")),
    Mutation("link_maximises", "COLA's inner link maximises instead of minimises", _link_maximises, ("C4",)),
    Mutation("cola_step_x4", "COLA step eta x 4", _step_times(4.0), ("C4",)),
    Mutation("cola_step_x10", "COLA step eta x 10", _step_times(10.0), ("C4",)),
    Mutation("short_step_div10", "short step / 10 (a slowdown)", _short_step_slowed, ("C3",)),
    Mutation("open_loop_slow", "open loop 2/(t+20) (a slowdown)", _open_loop_slowed, ("C1",)),
    Mutation("reset_skipped", "knot keeps the optimizer state", _reset_skipped, ("C6",)),
    Mutation("drop_shrink_block", "block FW merge alone without the shrink term", _drop_shrink_block, ("C2",)),
    Mutation("away_step_half", "away step's largest step halved (a slowdown)", _away_step_times(0.5), ("C2",)),
    Mutation("away_rule_reversed", "away step taken when less steep than FW", _away_rule_reversed, ("C2",)),
    Mutation("away_atom_argmin", "away atom by argmin <G, a> instead of argmax", _away_atom_argmin, ("C2",)),
    Mutation("block_curv_x4", "block oracle's model with curvature 4 L", _block_curvature_x4, ("C2",)),
)


def run_mutation(mutation: Mutation, claims: dict, quick: bool = True) -> dict[str, list[str]]:
    """Run ``claims`` (name -> module) under ``mutation``; return, per claim that caught it, the failing checks."""
    caught = {}
    with mutation.patch():
        for name, module in claims.items():
            result = module.run(quick=quick)
            if not result.passed:
                caught[name] = result.caught_by()
    return caught
