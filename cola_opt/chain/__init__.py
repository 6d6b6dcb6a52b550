"""The chain of residual low-rank links: the loop, its sites, knots and their schedules.

- :mod:`.optimizer`: :class:`ResidualLowRankOptimizer`, the chain loop and the knot;
- :mod:`.sites`: :class:`Site` (one matrix and its link's factors) and :class:`TensorSite`;
- :mod:`.reset`: what a knot does to the inner optimizer's state (full, prune, keep);
- :mod:`.schedules`: knot steps and rank schedules;
- :mod:`.lr_schedules`: ReLoRA's jagged cosine learning rate.

Nothing here imports the Frank-Wolfe side (:mod:`cola_opt.fw`) or the LLM side
(:mod:`cola_opt.llm`); both build on it.
"""

from .optimizer import KnotRecord, NonFiniteUpdateError, ResidualLowRankOptimizer
from .reset import FullReset, KeepState, PruneState, ResetPolicy, make_reset_policy
from .schedules import epoch_knots, step_down_ranks, uniform_knots, validate_knots
from .sites import Site, TensorSite, reinit_factors_

__all__ = [
    "FullReset",
    "KeepState",
    "KnotRecord",
    "NonFiniteUpdateError",
    "PruneState",
    "ResetPolicy",
    "ResidualLowRankOptimizer",
    "Site",
    "TensorSite",
    "epoch_knots",
    "make_reset_policy",
    "reinit_factors_",
    "step_down_ranks",
    "uniform_knots",
    "validate_knots",
]
