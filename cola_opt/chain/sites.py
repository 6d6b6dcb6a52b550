"""Sites: one matrix ``W`` and the factors of the current link.

A *site* is where the chain acts. It holds a base weight ``W`` of logical shape
``(m, n)`` (output features x input features) and the current link's LoRA factors
``B`` of shape ``(m, r)`` and ``A`` of shape ``(r, n)``. The link's contribution to
the function is ``Delta = scaling * B @ A`` (Hu et al. 2021, LoRA, eq. 3), with
``scaling = lora_alpha / r``.

The chain loop in :mod:`cola_opt.chain.optimizer` only talks to the :class:`Site` interface;
:class:`TensorSite` serves explicit objectives (toy problems) and
:class:`cola_opt.llm.lora.LoraSite` serves PEFT LoRA layers in a transformer.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import nn

from ..checks import rank_in_range, real
from .sharding import full_tensor, is_sharded, local_part, sum_is_finite

__all__ = ["Site", "TensorSite", "full_tensor", "is_sharded", "local_part", "reinit_factors_", "storage_key"]


def storage_key(t: torch.Tensor) -> object:
    """What identifies ``t``'s memory: equal for two tensors that share it.

    Tied weights (one Parameter under two names) and views of one tensor share a storage,
    so they get one key: ``(device, storage address)``. Meta tensors (a model built without
    weights) all have address 0, and sharded ``DTensor`` s and other wrapper tensors have
    no single address: those are keyed by identity, ``id(t)``.
    """
    if t.is_meta or is_sharded(t):
        return id(t)
    try:
        return (str(t.device), t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError, AttributeError):  # wrapper tensors without a storage
        return id(t)


@torch.no_grad()
def reinit_factors_(lora_B: torch.Tensor, lora_A: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """Re-initialise a link in place: ``A`` Kaiming-uniform, ``B`` zeros.

    This is LoRA's initialisation (the same as PEFT's ``init_lora_weights=True`` and
    ``nn.Linear``'s default for ``A``), so a fresh link contributes ``B @ A = 0`` and
    the function is unchanged. ``A`` is drawn on the CPU in float32 from ``generator``
    and then copied to its device and dtype, so the draw is identical on every device
    and every process that uses the same generator seed. Sharded (FSDP2 ``DTensor``)
    factors keep their local slice of that draw.

    Args:
        lora_B: ``(m, r)`` factor, any float dtype; set to zeros.
        lora_A: ``(r, n)`` factor, any float dtype; Kaiming-uniform with ``a = sqrt(5)``.
        generator: CPU generator for ``A``; ``None`` uses torch's global RNG.
    """
    fresh = torch.empty(lora_A.shape, dtype=torch.float32)
    nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
    lora_A.copy_(local_part(fresh.to(lora_A.dtype), lora_A))
    lora_B.zero_()


class Site(ABC):
    """One matrix of the model and the factors of its current link.

    Subclasses give access to the base weight (logical ``(m, n)`` orientation), to the
    two factor Parameters, and to the LoRA scaling. The merge arithmetic lives here,
    once, for every kind of site.

    Sharded parameters (FSDP2 ``fully_shard``, whose parameters are ``DTensor`` shards)
    are merged under full values: :meth:`delta` all-gathers the factors into the full fp32
    update (the same on every process), each process checks and adds its own slice of it
    on its shard, and the finiteness verdicts are joined so that all processes merge or
    none does. FSDP1 parameters must be un-sharded around the
    knot instead (:func:`cola_opt.llm.distributed.full_parameters`).

    Args:
        name: a label used in errors and records.
        keep_initial: keep an fp32 copy of the starting weight ``W0`` so that
            ``X = W - W0`` is available. Needed by Frank-Wolfe steps with ``shrink != 0``.
        fp32_master: keep an fp32 master copy of ``W`` and merge into it; the stored
            weight is the master cast once to its dtype. For bf16/fp16 bases this keeps
            ``W`` equal to ``W0 + sum(deltas)`` within fp32 error after many knots.
    """

    def __init__(self, name: str, *, keep_initial: bool = False, fp32_master: bool = False) -> None:
        self.name = name
        w = full_tensor(self.weight.detach()) if keep_initial else self.weight.detach()
        self._initial = w.to(torch.float32, copy=True) if keep_initial else None
        self._master = w.to(torch.float32, copy=True) if fp32_master else None

    # ----------------------------------------------------------------- accessors
    @property
    def initial(self) -> torch.Tensor | None:
        """The fp32 ``(m, n)`` copy of the starting weight ``W0``, or ``None`` without ``keep_initial``.

        The chain's own tensor: read it, do not write it (:meth:`restore_initial_` does).
        """
        return self._initial

    @property
    def has_fp32_master(self) -> bool:
        """Whether merges go through an fp32 master copy of ``W`` (``fp32_master=True``)."""
        return self._master is not None

    @property
    def master(self) -> torch.Tensor | None:
        """The fp32 master copy of ``W`` (the weight's layout: ``(m, n)`` for a tensor site, sharded like
        the weight when it is sharded), or ``None`` without ``fp32_master``.

        The chain's own tensor: read it, do not write it (a knot merges into it).
        """
        return self._master

    @torch.no_grad()
    def restore_initial_(self, w0: torch.Tensor) -> None:
        """Overwrite the kept ``W0`` with ``w0`` (a resume of a saved state).

        Raises:
            RuntimeError: if the site keeps no ``W0``.
            ValueError: if ``w0`` is not of shape ``(m, n)``.
        """
        if self._initial is None:
            raise RuntimeError(f"site {self.name!r} keeps no initial weight W0; build it with keep_initial=True")
        if tuple(w0.shape) != tuple(self._initial.shape):
            raise ValueError(f"W0 of shape {tuple(w0.shape)} does not fit site {self.name!r} of shape {self.shape}")
        self._initial.copy_(w0)

    @property
    @abstractmethod
    def weight(self) -> torch.Tensor:
        """The base weight as an ``(m, n)`` tensor that shares storage with the model."""

    @property
    @abstractmethod
    def lora_B(self) -> nn.Parameter:
        """The ``(m, r)`` factor of the current link."""

    @property
    @abstractmethod
    def lora_A(self) -> nn.Parameter:
        """The ``(r, n)`` factor of the current link."""

    @property
    @abstractmethod
    def scaling(self) -> float:
        """The factor in ``Delta = scaling * B @ A``."""

    @abstractmethod
    def _resize(self, rank: int) -> None:
        """Give the factors a new rank ``r`` (same Parameter objects, new storage)."""

    # ----------------------------------------------------------------- derived
    @property
    def rank(self) -> int:
        """The rank ``r`` of the current link's factors."""
        return int(self.lora_A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """Logical shape ``(m, n)`` of the weight."""
        m, n = self.weight.shape
        return int(m), int(n)

    def factors(self) -> tuple[nn.Parameter, nn.Parameter]:
        """The Parameters ``(B, A)`` that the inner optimizer trains."""
        return self.lora_B, self.lora_A

    @torch.no_grad()
    def delta(self) -> torch.Tensor:
        """The link's update ``scaling * B @ A`` in float32, shape ``(m, n)``."""
        b, a = full_tensor(self.lora_B.detach()), full_tensor(self.lora_A.detach())
        return (b.float() @ a.float()).mul_(self.scaling)

    @torch.no_grad()
    def residual(self) -> torch.Tensor:
        """``X = W - W0`` in float32, shape ``(m, n)``.

        Raises:
            RuntimeError: if the site was built without ``keep_initial=True``.
        """
        initial = self._require_initial()
        current = full_tensor(self._master if self._master is not None else self.weight).float()
        return current - initial.to(current.device)

    def _require_initial(self) -> torch.Tensor:
        if self._initial is None:
            raise RuntimeError(f"site {self.name!r} keeps no initial weight W0; build it with keep_initial=True")
        return self._initial

    def row_blocks(self):
        """Row slices of about 1M entries each that cover ``range(m)`` in order (blockwise passes over ``W``)."""
        rows = max(1, (1 << 20) // max(1, self.shape[1]))
        return (slice(i, i + rows) for i in range(0, self.shape[0], rows))

    @torch.no_grad()
    def subtract_residual_(self, update: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """``update -= alpha * (W - W0)`` in place, in row blocks (no ``(m, n)`` temporary).

        Bit-identical to ``update.sub_(self.residual(), alpha=alpha)``; the residual is formed
        block by block in float32 so that ``W - W0`` keeps its precision.

        Raises:
            RuntimeError: if the site was built without ``keep_initial=True``.
        """
        initial = self._require_initial()
        current = full_tensor(self._master if self._master is not None else self.weight)
        for blk in self.row_blocks():
            part = current[blk].float() - initial[blk].to(current.device)
            update[blk].sub_(part.to(update.device), alpha=alpha)
        return update

    @torch.no_grad()
    def merged_is_finite(self, update: torch.Tensor) -> bool:
        """Whether :meth:`merge` of the float32 ``update`` would leave ``W`` finite (no ``(m, n)`` temporary).

        Fast path: ``max|W| + max|update| < max(dtype) / 2`` proves every merged entry finite;
        otherwise the sum is formed and checked in row blocks. A sharded (FSDP2) weight is
        checked on each process's shard and the verdicts are joined (a collective), so every
        process answers the same.
        """
        base = self._master if self._master is not None else self.weight
        if not is_sharded(base):
            return sum_is_finite(base, update, self.weight.dtype)
        mine = local_part(update.to(device=base.device, dtype=torch.float32), base).to_local()
        ok = torch.tensor([int(sum_is_finite(base.to_local(), mine, self.weight.dtype))], device=mine.device)
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN, group=base.device_mesh.get_group())
        return bool(ok.item())

    @torch.no_grad()
    def merge(self, update: torch.Tensor) -> None:
        """Add the float32 ``(m, n)`` ``update`` to the base weight.

        The sum is formed in float32 and cast once to the weight's dtype (the trap of
        peft #1388: ``W + BA`` rounded per term drifts in bf16). With an fp32 master the
        master is updated and the weight re-cast from it. No forward pass is run, so
        dropout cannot enter the merged value.
        """
        w = self.weight
        update = local_part(update.to(device=w.device, dtype=torch.float32), w)
        if self._master is not None:
            self._master.add_(update)
            w.copy_(self._master)
        elif w.dtype == torch.float32:
            w.add_(update)
        else:
            w.copy_(w.float().add_(update))

    def check_factors(self, B, A) -> int:
        """The rank ``k`` of an update ``B @ A`` that fits this site: ``B`` ``(m, k)``, ``A`` ``(k, n)``.

        Raises:
            ValueError: if the shapes do not chain to ``(m, n)`` or ``k`` is not in ``[1, min(m, n)]``.
        """
        m, n = self.shape
        if B.ndim != 2 or A.ndim != 2 or B.shape[0] != m or A.shape[1] != n or B.shape[1] != A.shape[0]:
            raise ValueError(
                f"factors of shapes {tuple(B.shape)} and {tuple(A.shape)} do not form the ({m}, {n}) update "
                f"of site {self.name!r}"
            )
        return rank_in_range(int(A.shape[0]), (m, n), "rank", f"site {self.name!r}")

    @torch.no_grad()
    def set_factors(self, B: torch.Tensor, A: torch.Tensor) -> None:
        """Write an explicit low-rank update into the current link: afterwards ``delta() == B @ A``.

        The link takes the rank ``k`` of the given factors (the same Parameter objects are
        resized when ``k`` differs), and ``B / scaling`` is stored so that
        ``scaling * lora_B @ lora_A`` equals ``B @ A`` up to float rounding. This is how an
        exact oracle (a Frank-Wolfe atom, say) hands its answer to the chain, whose knot then
        merges it like any trained link. The inner optimizer's state is not touched here;
        the knot that follows resets it.

        Args:
            B: ``(m, k)`` factor, any float dtype (copied as float32-compatible values).
            A: ``(k, n)`` factor.

        Raises:
            ValueError: if the shapes do not chain to ``(m, n)`` or ``k`` is not in
                ``[1, min(m, n)]``.
        """
        k = self.check_factors(B, A)
        if k != self.rank:
            self._resize(k)
        b = (B.detach().to(torch.float32) / self.scaling).to(self.lora_B.device)
        self.lora_B.copy_(local_part(b.to(self.lora_B.dtype), self.lora_B))
        a = A.detach().to(torch.float32).to(self.lora_A.device)
        self.lora_A.copy_(local_part(a.to(self.lora_A.dtype), self.lora_A))

    @torch.no_grad()
    def reset_factors(self, rank: int | None = None, generator: torch.Generator | None = None) -> None:
        """Start a fresh link: optionally change the rank, then ``A`` Kaiming, ``B`` zero.

        Raises:
            ValueError: if ``rank`` is not in ``[1, min(m, n)]``, or the factors are sharded
                (FSDP2 fixes a parameter's shape when it shards it).
        """
        if rank is not None and rank != self.rank:
            if is_sharded(self.lora_A) or is_sharded(self.lora_B):
                raise ValueError(f"site {self.name!r}: cannot change the rank of sharded (FSDP2) factors to {rank}")
            self._resize(rank_in_range(rank, self.shape, "rank", f"site {self.name!r}"))
        reinit_factors_(self.lora_B, self.lora_A, generator)


class TensorSite(Site):
    """A site over a plain tensor, for explicit objectives.

    Args:
        weight: the ``(m, n)`` variable ``W``; kept by reference (it is updated in place).
            Any float dtype. A writable float numpy array is accepted and shared through
            ``torch.from_numpy``, so the array itself is updated in place too.
        rank: an integer ``r`` in ``[1, min(m, n)]``, of the first link.
        lora_alpha: if given, ``scaling = lora_alpha / r`` (LoRA; finite, ``> 0``); else
            ``scaling = 1``.
        name, keep_initial, fp32_master: as in :class:`Site`. ``keep_initial`` defaults
            to True here, since toy problems use Frank-Wolfe steps.
        generator: draws the first link's ``A``.

    Raises:
        ValueError: if ``weight`` is not a 2-D floating-point tensor or writable numpy
            array, ``rank`` is not an integer in range, or ``lora_alpha`` is not a finite
            number ``> 0``.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        rank: int,
        *,
        lora_alpha: float | None = None,
        name: str = "W",
        keep_initial: bool = True,
        fp32_master: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if isinstance(weight, np.ndarray) and weight.ndim == 2 and weight.dtype.kind == "f":
            if not weight.flags.writeable:
                raise ValueError("weight is a read-only numpy array; the site updates W in place: pass a "
                                 "writable array or a tensor")
            try:
                weight = torch.from_numpy(weight)  # shares memory: in-place updates reach the array
            except (TypeError, ValueError) as err:
                raise ValueError(f"numpy weight of dtype {weight.dtype} and strides {weight.strides} cannot be "
                                 f"shared with torch ({err}); pass a tensor") from None
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or not weight.is_floating_point():
            raise ValueError(f"weight must be a 2-D float tensor (or writable float numpy array), got "
                             f"{type(weight).__name__} of shape {getattr(weight, 'shape', None)} dtype "
                             f"{getattr(weight, 'dtype', None)}")
        m, n = weight.shape
        rank = rank_in_range(rank, (m, n), "rank", "the weight")
        self._weight = weight.detach().requires_grad_(False)
        self.lora_alpha = None if lora_alpha is None else real(lora_alpha, "lora_alpha", above=0)
        kw = {"device": weight.device, "dtype": torch.float32}
        self._B = nn.Parameter(torch.zeros(m, rank, **kw))
        self._A = nn.Parameter(torch.zeros(rank, n, **kw))
        super().__init__(name, keep_initial=keep_initial, fp32_master=fp32_master)
        reinit_factors_(self._B, self._A, generator)

    @property
    def weight(self) -> torch.Tensor:
        return self._weight

    @property
    def lora_B(self) -> nn.Parameter:
        return self._B

    @property
    def lora_A(self) -> nn.Parameter:
        return self._A

    @property
    def scaling(self) -> float:
        return 1.0 if self.lora_alpha is None else self.lora_alpha / self.rank

    def _resize(self, rank: int) -> None:
        m, n = self.shape
        self._B.data = self._B.new_zeros(m, rank)
        self._A.data = self._A.new_zeros(rank, n)

    def effective_weight(self) -> torch.Tensor:
        """``W + scaling * B @ A`` in float32, differentiable in the factors; ``(m, n)``."""
        return self._weight.float() + self.scaling * (self._B @ self._A)
