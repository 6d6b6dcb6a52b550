"""Sharded (FSDP2 ``DTensor``) weights and factors: gather, scatter, and blockwise finiteness.

A ``DTensor`` can only exist once ``torch.distributed.tensor`` has been imported (every
way of making one, ``fully_shard`` included, imports it). So this module never imports it
itself: it looks the class up in ``sys.modules``, and a process that never shards pays
nothing. (Importing ``torch.distributed.tensor`` costs 0.6-2.9 s here; a lazy import
inside the first knot used to fall into timed solves, issue 13.)
"""

from __future__ import annotations

import sys

import torch

__all__ = ["full_tensor", "is_sharded", "local_part", "sum_is_finite"]


def _dtensor_type():
    """The ``DTensor`` class if ``torch.distributed.tensor`` is loaded, else None (no DTensor exists)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


def is_sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` is a ``DTensor`` (an FSDP2 parameter)."""
    dt = _dtensor_type()
    return dt is not None and isinstance(t, dt)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole logical tensor: all-gathers a sharded ``DTensor`` (FSDP2), else ``t`` itself.

    A collective for a ``DTensor``: every process of its mesh must call it, in the same
    order (the knot visits sites in one order on every process).
    """
    return t.full_tensor() if is_sharded(t) else t


def local_part(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``like``: the same ``DTensor`` mesh and placements, or ``full`` as is.

    Each process keeps the slice it owns of ``full``, which must be the same on every
    process (it is: the knot's update is computed from all-gathered factors). No
    communication.
    """
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor  # loaded already: `like` is a DTensor

    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


@torch.no_grad()
def sum_is_finite(base: torch.Tensor, update: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether ``(base.float() + update).to(dtype)`` is finite everywhere, in row blocks of ~1M entries.

    Args:
        base: an ``(m, n)`` tensor (a weight or its fp32 master); update: ``(m, n)`` float32.
        dtype: the dtype the sum is cast to (the weight's).
    """
    if base.numel() == 0:
        return True
    bound = sum(float(torch.maximum(hi, -lo)) for lo, hi in (torch.aminmax(base), torch.aminmax(update)))
    if bound < 0.5 * torch.finfo(dtype).max:
        return True
    rows = max(1, (1 << 20) // max(1, base.shape[1]))
    for i in range(0, base.shape[0], rows):
        part = (base[i:i + rows].float() + update[i:i + rows].to(base.device)).to(dtype)
        if not bool(torch.isfinite(part).all()):
            return False
    return True
