"""Non-finite guard: a NaN or inf loss or gradient never reaches the weights.

A training loop calls :meth:`NonFiniteGuard.check` between ``loss.backward()`` and the
optimizer step::

    loss.backward()
    if guard.check(loss, model.named_parameters(), step=t):
        chain.step()          # the inner step, then a knot if one is due
    else:
        chain.advance()       # a skipped step still counts towards the knot schedule
    chain.zero_grad()

The knot itself refuses a non-finite merge on its own
(:class:`cola_opt.chain.optimizer.NonFiniteUpdateError`); this guard stops the bad values one step
earlier, before they reach the factors or the optimizer's state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from ..chain.sites import is_sharded

__all__ = ["GUARD_POLICIES", "NonFiniteError", "NonFiniteGuard"]

GUARD_POLICIES = ("skip", "stop")


class NonFiniteError(FloatingPointError):
    """The loss or a gradient held a NaN or inf and the policy was to stop.

    Attributes:
        step: the step index passed to :meth:`NonFiniteGuard.check` (``None`` if none).
        what: ``"loss"``, the name of the first parameter with a non-finite gradient, or
            ``"scores"`` (an evaluation, :func:`cola_opt.llm.scoring.evaluate`).
        diverged: the ``"skip"`` policy's cap on skips in a row was reached.
    """

    def __init__(self, message: str, step: int | None, what: str, *, diverged: bool = False) -> None:
        super().__init__(message)
        self.step, self.what, self.diverged = step, what, diverged


@dataclass
class NonFiniteGuard:
    """Checks the loss and gradients of each step and applies a policy when one is not finite.

    Attributes:
        policy: ``"skip"``: drop the step (every gradient is set to ``None``, so any
            ``torch.optim`` optimizer leaves those parameters and their state alone) and
            go on; ``"stop"``: raise :class:`NonFiniteError` before the optimizer step, so
            the weights still hold the last finite step (the caller saves a checkpoint).
        max_consecutive_skips: with ``"skip"``, raise :class:`NonFiniteError` once this
            many steps in a row were skipped (a diverged run); ``None``: never.
        sync: when ``torch.distributed`` is initialised, all-reduce the verdict so every
            process skips or stops together (a loss can be non-finite on one rank only).
        skipped: total steps skipped so far.
        consecutive: steps skipped since the last finite one.

    Raises:
        ValueError: in ``__post_init__``, on an unknown policy or a bad
            ``max_consecutive_skips``, naming the value.
    """

    policy: str = "skip"
    max_consecutive_skips: int | None = None
    sync: bool = True
    skipped: int = field(default=0, init=False)
    consecutive: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.policy not in GUARD_POLICIES:
            raise ValueError(f"non-finite policy {self.policy!r} must be one of {GUARD_POLICIES}")
        m = self.max_consecutive_skips
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"max_consecutive_skips must be None or an integer >= 1, got {m!r}")

    def check(
        self,
        loss: torch.Tensor | float | None,
        parameters: Iterable[torch.nn.Parameter] | Iterable[tuple[str, torch.nn.Parameter]],
        *,
        step: int | None = None,
    ) -> bool:
        """Whether the step may go ahead.

        Args:
            loss: the step's loss (any shape, any float dtype), or ``None`` to check the
                gradients only.
            parameters: the parameters about to be stepped, plain or as
                ``named_parameters()`` pairs (names make the error clearer). Parameters
                without a gradient are ignored; a sharded (FSDP2 ``DTensor``) gradient is
                checked on the shard each process holds.
            step: the step index, for messages only.

        Returns:
            ``True`` if the loss and every gradient are finite. ``False`` if not and the
            policy is ``"skip"``; every gradient is then ``None``.

        Raises:
            NonFiniteError: if not finite and the policy is ``"stop"``, or the skips in a
                row reached ``max_consecutive_skips``. Gradients are left as they are.
        """
        named = [item if isinstance(item, tuple) else (f"parameter {i}", item) for i, item in enumerate(parameters)]
        # a sharded (FSDP2) gradient is checked shard by shard; the all-reduce below joins the verdicts
        grads = [(n, p.grad.to_local() if is_sharded(p.grad) else p.grad) for n, p in named if p.grad is not None]
        flags = [torch.isfinite(torch.as_tensor(loss)).all()] if loss is not None else []
        flags += [torch.isfinite(g).all() for _, g in grads]
        ok = bool(torch.stack([f.cpu() for f in flags]).all()) if flags else True
        ok = self._agree(ok)
        if ok:
            self.consecutive = 0
            return True
        what = self._culprit(loss, grads)
        where = f" at step {step}" if step is not None else ""
        if self.policy == "stop":
            raise NonFiniteError(
                f"non-finite {what}{where}; policy 'stop': stopped before the optimizer step, so the weights "
                "hold the last finite step",
                step,
                what,
            )
        self.skipped += 1
        self.consecutive += 1
        if self.max_consecutive_skips is not None and self.consecutive >= self.max_consecutive_skips:
            raise NonFiniteError(
                f"non-finite {what}{where}: {self.consecutive} steps in a row skipped "
                f"(max_consecutive_skips={self.max_consecutive_skips}); the run has diverged",
                step,
                what,
                diverged=True,
            )
        for _, p in named:
            p.grad = None
        return False

    def _agree(self, ok: bool) -> bool:
        """All processes agree: finite only if finite everywhere."""
        if not self.sync or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return ok
        device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())

    @staticmethod
    def _culprit(loss, grads) -> str:
        if loss is not None and not bool(torch.isfinite(torch.as_tensor(loss)).all()):
            return f"loss ({float(torch.as_tensor(loss).float().sum())})"
        for name, g in grads:
            if not bool(torch.isfinite(g).all()):
                return f"gradient of {name}"
        return "value on another process"
