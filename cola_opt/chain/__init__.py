"""The chain of residual low-rank links: the loop, its sites, knots and their schedules.

- :mod:`.optimizer`: :class:`ResidualLowRankOptimizer`, the chain loop;
- :mod:`.knot`: the knot's merge arithmetic, its checks and :class:`KnotRecord`;
- :mod:`.sites`: :class:`Site` (one matrix and its link's factors), :class:`TensorSite` and
  :func:`storage_key`;
- :mod:`.sharding`: sharded (FSDP2 ``DTensor``) weights: gather, scatter, finiteness;
- :mod:`.reset`: what a knot does to the inner optimizer's state (full, prune, keep);
- :mod:`.schedules`: knot steps and rank schedules;
- :mod:`.lr_schedules`: ReLoRA's jagged cosine learning rate.

Nothing here imports the Frank-Wolfe side (:mod:`cola_opt.fw`) or the LLM side
(:mod:`cola_opt.llm`); both build on it.
"""

from .optimizer import KnotRecord, NonFiniteUpdateError, ResidualLowRankOptimizer
from .reset import FullReset, KeepState, PruneState, ResetPolicy, make_reset_policy
from .schedules import epoch_knots, step_down_ranks, uniform_knots, validate_knots
from .sites import Site, TensorSite, reinit_factors_, storage_key

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
    "storage_key",
    "uniform_knots",
    "validate_knots",
]
