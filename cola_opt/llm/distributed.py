"""Knots under data-parallel and sharded training (DDP, FSDP2, FSDP1).

- **DDP** (``torchrun``, ``accelerate launch``, the HF ``Trainer``): every process holds
  the whole model and the same averaged gradients, and the knot draws the next link's
  ``A`` from a generator seeded by ``(seed, link, site)``; so every process ties the
  same knot and the replicas stay bit-identical. Nothing to do but call
  ``chain.advance()`` (or ``chain.step()``) on every process. Keep the rank constant
  (``ranks=None``): a rank change gives the factors new storage behind DDP's buckets.
- **FSDP2** (``torch.distributed.fsdp.fully_shard``): parameters are ``DTensor`` shards.
  The sites all-gather the factors, form the full fp32 update, check the whole merged
  weight for finiteness, and add each process's slice to its shard
  (:mod:`cola_opt.chain.sites`). Build the chain *after* ``fully_shard`` (it replaces the
  Parameters). Runs on CPU with gloo, so it is tested here.
- **FSDP1** (``FullyShardedDataParallel``, ``use_orig_params=True``): outside forward
  a parameter is a flat shard, so build the chain and tie every knot inside
  :func:`full_parameters` (``summon_full_params(writeback=True)``, as torchtune does;
  the trap of peft #297). FSDP1 needs an accelerator: this path is written for GPUs and
  not tested here.
"""

from __future__ import annotations

import contextlib

from torch import nn

from ..chain.optimizer import KnotRecord, ResidualLowRankOptimizer

__all__ = ["advance_chain", "full_parameters", "uses_fsdp1"]


def uses_fsdp1(model: nn.Module) -> bool:
    """Whether ``model`` is, or contains, an FSDP1 ``FullyShardedDataParallel`` module."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:
        return False
    return any(isinstance(m, FSDP) for m in model.modules())


def full_parameters(model: nn.Module) -> contextlib.AbstractContextManager:
    """A context in which every parameter of ``model`` is whole, and writes are kept.

    FSDP1: ``FullyShardedDataParallel.summon_full_params(model, writeback=True)`` (a
    collective: every process enters it). DDP, FSDP2 and single-process models: a no-op
    (FSDP2 shards are merged through ``DTensor``, see :mod:`cola_opt.chain.sites`).
    """
    if uses_fsdp1(model):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.summon_full_params(model, writeback=True, with_grads=False)
    return contextlib.nullcontext()


def advance_chain(chain: ResidualLowRankOptimizer, model: nn.Module | None = None) -> KnotRecord | None:
    """``chain.advance()``, with the parameters whole when a knot is due (FSDP1).

    Call it on every process after each optimizer step that the chain did not make
    itself. Returns the :class:`KnotRecord` if a knot was tied.
    """
    if model is not None and chain.step_count + 1 in chain.knot_steps:
        with full_parameters(model):
            return chain.advance()
    return chain.advance()
