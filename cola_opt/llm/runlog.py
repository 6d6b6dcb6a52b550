"""The run log: what a training run records as it goes, in every checkpoint and in ``results.json``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = ["RunLog"]


@dataclass
class RunLog:
    """What a run has recorded so far.

    Attributes:
        dev_history: one evaluation per epoch (and after the last step):
            ``{"epoch", "step", <metric>, "loss", "n"}``.
        train_loss: the loss of every optimizer step (nats per example; NaN or inf for a
            step the non-finite guard skipped).
        skipped_steps: 1-based steps whose update the guard dropped.
        knots: one record per knot tied (:class:`cola_opt.chain.optimizer.KnotRecord`
            as a dict: link, step, seconds, rank, next rank, LR, ...).
        checkpoints: ``{"step", "seconds", "bytes"}`` per checkpoint written (``None``
            seconds and bytes inside the checkpoint that holds the entry).
        resumed_from: the step of each resume.
        train_seconds: training wall time, summed over the processes of a resumed run.
        step_seconds: wall time of each optimizer step this process took (forward,
            backward, update and knot; not the dev evaluations), in seconds; not in
            checkpoints.
        update_rank: with ``update_rank`` on, ``rank(W - W0)`` after each link and at
            the end (:class:`cola_opt.llm.update_rank.UpdateRankRecorder`), else empty.
    """

    dev_history: list[dict] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)
    knots: list[dict] = field(default_factory=list)
    checkpoints: list[dict] = field(default_factory=list)
    resumed_from: list[int] = field(default_factory=list)
    train_seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    update_rank: list[dict] = field(default_factory=list)

    PROGRESS: ClassVar[tuple[str, ...]] = ("train_loss", "dev_history", "skipped_steps", "checkpoints", "resumed_from")

    def progress(self) -> dict:
        """The part a checkpoint holds (:attr:`PROGRESS`); the lists themselves, not copies."""
        return {k: getattr(self, k) for k in self.PROGRESS}

    def restore_progress(self, saved: dict) -> None:
        """Set the :attr:`PROGRESS` fields from a checkpoint's :meth:`progress`."""
        for k in self.PROGRESS:
            setattr(self, k, saved[k])

    def to_dict(self) -> dict:
        """Every field, JSON-ready."""
        return dataclasses.asdict(self)
