"""The order in which the training loop visits the examples.

A *batch order* is a function ``epoch -> micro-batches``: the micro-batches of one pass
over the training items, each a list of item indices. It must be a pure function of the
epoch (a resumed run re-derives its position from ``(epoch, index)`` alone), and give
``ceil(n / batch_size)`` micro-batches per epoch, as :func:`cola_opt.llm.plan.plan_steps`
plans. :func:`shuffled_batches` visits the items in a fresh random order;
:func:`bucketed_batches` groups items of similar length into a micro-batch, so that less
of each batch is padding, and shuffles the micro-batches. :func:`optimizer_steps` groups
any order's micro-batches into optimizer steps (gradient accumulation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

__all__ = ["BatchOrder", "StepBatches", "bucketed_batches", "optimizer_steps", "padding_fraction", "shuffled_batches"]

BatchOrder = Callable[[int], list[list[int]]]


def shuffled_batches(n_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The micro-batches of epoch ``epoch``: a fresh permutation of ``range(n_items)``, cut into ``batch_size``.

    The permutation is ``torch.randperm`` from a generator seeded with
    ``seed * 7919 + epoch``, so it depends on neither the global RNG nor the device.
    Bind all but ``epoch`` (``functools.partial``) to get a :data:`BatchOrder`.
    """
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return [order[i : i + batch_size].tolist() for i in range(0, n_items, batch_size)]


def bucketed_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The micro-batches of epoch ``epoch``, each of items of similar length, in a random order.

    The items are permuted at random, cut into mega-batches of
    ``max(1, min(50, n // (4 * batch_size)))`` micro-batches (so fewer than 8 batches'
    worth of items are only shuffled), sorted by length within each mega-batch and cut
    into micro-batches
    (``transformers``' ``get_length_grouped_indices``, the sampler behind the Trainer's
    ``group_by_length``); the micro-batches are then shuffled, so that the long ones do
    not come in runs. Both draws come from one generator seeded with
    ``seed * 7919 + epoch``: the order is a pure function of its arguments, the same on
    every device and after a resume. Bind all but ``epoch`` to get a :data:`BatchOrder`.

    Args:
        lengths: tokens per item (its padded forward length), one entry per item.
        batch_size: items per micro-batch; there are ``ceil(len(lengths) / batch_size)``.
        seed, epoch: the run's seed and the 0-based epoch.
    """
    from transformers.trainer_pt_utils import get_length_grouped_indices

    g = torch.Generator().manual_seed(seed * 7919 + epoch)
    order = get_length_grouped_indices(list(lengths), batch_size, generator=g)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """The share of padding tokens when each micro-batch is padded to its longest item, in ``[0, 1)``."""
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    return 1.0 - sum(lengths[i] for b in batches for i in b) / padded if padded else 0.0


@dataclass(frozen=True)
class StepBatches:
    """The micro-batches of one optimizer step, and where it lies in the run.

    Attributes:
        epoch: 0-based epoch.
        index: 0-based index of the step within its epoch.
        batches: the micro-batches (lists of item indices) whose gradients it accumulates.
        last_of_epoch: whether it is the epoch's last step.
    """

    epoch: int
    index: int
    batches: list[list[int]]
    last_of_epoch: bool

    def next_position(self) -> tuple[int, int]:
        """``(epoch, index)`` of the step after this one."""
        return (self.epoch + 1, 0) if self.last_of_epoch else (self.epoch, self.index + 1)


def optimizer_steps(order: BatchOrder, grad_accum: int, epoch: int = 0, index: int = 0) -> Iterator[StepBatches]:
    """Yield the optimizer steps from position ``(epoch, index)`` on, epoch after epoch, without end.

    Epoch ``e``'s micro-batches ``order(e)`` are grouped ``grad_accum`` at a time (the
    last group may be shorter).
    """
    while True:
        batches = order(epoch)
        groups = [batches[i : i + grad_accum] for i in range(0, len(batches), grad_accum)]
        for i in range(index, len(groups)):
            yield StepBatches(epoch, i, groups[i], i == len(groups) - 1)
        epoch, index = epoch + 1, 0
