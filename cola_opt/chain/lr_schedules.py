"""ReLoRA's jagged cosine learning rate, for a chain.

:func:`jagged_cosine_schedule` returns a ``torch.optim.lr_scheduler.LambdaLR`` over the
inner optimizer: one cosine envelope over the whole run, and after every knot a short
linear re-warm-up from 0 back up to the envelope (ReLoRA, Lialin et al. 2023, Section 3,
"jagged cosine scheduler"). Steps are counted like the knots of
:mod:`cola_opt.chain.schedules`: the scheduler is stepped once after each optimizer step,
so after ``t`` optimizer steps the next step runs at ``base_lr * factor(t)``. A knot at
step ``s`` starts a link whose first step runs at ``factor(s)``.

COLA's global linear schedule (Xia, Qin and Hazan 2024, Section 5: AdamW with a linear
decay, ignoring the knots) is ``transformers.get_linear_schedule_with_warmup``.
:func:`make_lr_schedule` builds either by name (:data:`LR_SCHEDULES`), as the trainer's
``--lr-schedule`` asks; :func:`check_lr_schedule` checks a choice against a run's steps
and knots before anything is built.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR

from .schedules import validate_knots

__all__ = ["LR_SCHEDULES", "RELORA_MIN_LR_RATIO", "check_lr_schedule", "default_restart_warmup_steps",
           "jagged_cosine_factor", "jagged_cosine_schedule", "make_lr_schedule"]

LR_SCHEDULES = ("linear", "jagged-cosine")
RELORA_MIN_LR_RATIO = 0.1  # the envelope's floor in ReLoRA (Guitaricet/relora, --min_lr_ratio 0.1)


def _check_steps(total_steps: int, warmup_steps: int) -> None:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0 (optimizer steps), got {warmup_steps!r}")
    if warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} is not shorter than the run ({total_steps} optimizer steps): "
                         "the learning rate would never reach --lr; lower --warmup-steps")


def _cosine_envelope(t: float, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    progress = min(1.0, max(0.0, (t - warmup_steps) / (total_steps - warmup_steps)))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def jagged_cosine_factor(
    t: int,
    *,
    total_steps: int,
    knot_steps: Sequence[int],
    restart_warmup_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = RELORA_MIN_LR_RATIO,
) -> float:
    """LR factor after ``t`` optimizer steps for ReLoRA's jagged cosine.

    ``envelope(t) = m + (1 - m) * (1 + cos(pi * clip((t - w) / (T - w), 0, 1))) / 2`` with
    ``m = min_lr_ratio``, ``w = warmup_steps``, ``T = total_steps``. The factor is
    ``t / w`` during the first warm-up; ``(t - s) / w_r * envelope(s + w_r)`` during the
    ``w_r = restart_warmup_steps`` steps after the latest knot ``s`` (0 for the first
    step of a link, as in ReLoRA, so the pruned optimizer state warms up before the
    weights move; the ramp ends on the envelope); ``envelope(t)`` otherwise.
    """
    if t < warmup_steps:
        return t / warmup_steps
    i = bisect.bisect_right(knot_steps, t) - 1
    if i >= 0 and t - knot_steps[i] < restart_warmup_steps:
        s = knot_steps[i]
        target = _cosine_envelope(s + restart_warmup_steps, total_steps, warmup_steps, min_lr_ratio)
        return (t - s) / restart_warmup_steps * target
    return _cosine_envelope(t, total_steps, warmup_steps, min_lr_ratio)


def check_jagged_cosine(
    total_steps: int,
    knot_steps: Sequence[int],
    restart_warmup_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = RELORA_MIN_LR_RATIO,
) -> tuple[int, ...]:
    """Check the arguments of :func:`jagged_cosine_schedule`; return the knot steps as a tuple.

    Raises:
        ValueError: as :func:`jagged_cosine_schedule`, naming the value.
    """
    _check_steps(total_steps, warmup_steps)
    knots = validate_knots(knot_steps, total_steps)
    if isinstance(restart_warmup_steps, bool) or not isinstance(restart_warmup_steps, int) or restart_warmup_steps < 0:
        raise ValueError(f"restart_warmup_steps must be an integer >= 0, got {restart_warmup_steps!r}")
    ends = list(knots[1:]) + [total_steps]
    short = [(s, e) for s, e in zip(knots, ends) if e - s <= restart_warmup_steps]
    if short:
        raise ValueError(
            f"restart_warmup_steps={restart_warmup_steps} does not fit the link from step {short[0][0]} "
            f"to {short[0][1]}: each re-warm-up must be shorter than its link"
        )
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")
    return knots


def jagged_cosine_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    knot_steps: Sequence[int],
    restart_warmup_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = RELORA_MIN_LR_RATIO,
) -> LambdaLR:
    """ReLoRA's jagged cosine: a global cosine, re-warmed from 0 after every knot.

    Args:
        optimizer: the inner optimizer (``chain.optimizer``).
        total_steps: optimizer steps in the run, ``>= 1``.
        knot_steps: the chain's knot steps (``chain.knot_steps``), each in
            ``[1, total_steps - 1]``.
        restart_warmup_steps: length ``>= 0`` of each re-warm-up, in optimizer steps; it
            must be shorter than every link after a knot. 0 gives a plain cosine.
        warmup_steps: the first warm-up, in ``[0, total_steps)``.
        min_lr_ratio: the envelope's floor as a fraction of the base LR, in ``[0, 1]``.

    Raises:
        ValueError: on bad steps or ratio, naming the value.
    """
    knots = check_jagged_cosine(total_steps, knot_steps, restart_warmup_steps, warmup_steps, min_lr_ratio)
    factor = partial(
        jagged_cosine_factor,
        total_steps=total_steps,
        knot_steps=knots,
        restart_warmup_steps=restart_warmup_steps,
        warmup_steps=warmup_steps,
        min_lr_ratio=min_lr_ratio,
    )
    return LambdaLR(optimizer, factor)


def default_restart_warmup_steps(total_steps: int, knot_steps: Sequence[int]) -> int:
    """The re-warm-up length when none is given: 5% of the shortest link after a knot, in optimizer steps.

    ReLoRA re-warms for 100 steps in links of 2000 (its 130M run, Guitaricet/relora
    ``scripts/paper_130M.sh``; the paper, Figure 2: "50-100 steps"), i.e. 5%. Rounded,
    at least 1 and at most the link's length minus 1 (0 for a link of one step, or no knots).
    """
    knots = validate_knots(knot_steps, total_steps)
    if not knots:
        return 0
    shortest = min(e - s for s, e in zip(knots, [*knots[1:], total_steps]))
    return min(max(1, round(0.05 * shortest)), shortest - 1)


def check_lr_schedule(kind: str, total_steps: int, knot_steps: Sequence[int], warmup_steps: int,
                      restart_warmup_steps: int | None = None) -> None:
    """Check an LR schedule choice for a run of ``total_steps`` optimizer steps with knots ``knot_steps``.

    Raises:
        ValueError: an unknown ``kind``; a warm-up as long as the run or longer (the LR
            would never reach its peak); for ``"jagged-cosine"``, a re-warm-up that does
            not fit (as :func:`jagged_cosine_schedule`), naming the value.
    """
    if kind not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule {kind!r} must be one of {LR_SCHEDULES}")
    _check_steps(total_steps, warmup_steps)
    if kind == "jagged-cosine":
        if restart_warmup_steps is None:
            restart_warmup_steps = default_restart_warmup_steps(total_steps, knot_steps)
        check_jagged_cosine(total_steps, knot_steps, restart_warmup_steps, warmup_steps)


def make_lr_schedule(kind: str, optimizer: torch.optim.Optimizer, *, total_steps: int, knot_steps: Sequence[int],
                     warmup_steps: int, restart_warmup_steps: int | None = None) -> LambdaLR:
    """The LR scheduler ``kind`` over ``optimizer``, stepped once after every optimizer step.

    - ``"linear"``: ``warmup_steps`` of linear warm-up, then a linear decay to 0 at
      ``total_steps``, ignoring the knots (COLA, Section 5;
      ``transformers.get_linear_schedule_with_warmup``).
    - ``"jagged-cosine"``: :func:`jagged_cosine_schedule` with ReLoRA's floor
      (:data:`RELORA_MIN_LR_RATIO`) and ``restart_warmup_steps`` after every knot
      (``None``: :func:`default_restart_warmup_steps`). Without knots it is a plain cosine.

    Raises:
        ValueError: as :func:`check_lr_schedule`.
    """
    from transformers import get_linear_schedule_with_warmup

    check_lr_schedule(kind, total_steps, knot_steps, warmup_steps, restart_warmup_steps)
    if kind == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    if restart_warmup_steps is None:
        restart_warmup_steps = default_restart_warmup_steps(total_steps, knot_steps)
    return jagged_cosine_schedule(optimizer, total_steps, knot_steps, restart_warmup_steps, warmup_steps)
