"""Knot schedules and rank schedules.

A knot schedule says after which inner-optimizer steps a knot is tied. Steps are
counted in optimizer steps (after gradient accumulation), starting at 1. A knot at
step ``s`` merges the link that was trained during steps ``(previous knot, s]``.

COLA (Xia, Qin and Hazan 2024, Section 5) gives knots as iteration indices within a
fixed budget; :func:`uniform_knots` spaces them evenly, :func:`validate_knots`
checks explicit ones.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

from ..checks import integer

__all__ = ["epoch_knots", "step_down_ranks", "uniform_knots", "validate_knots"]


def validate_knots(knot_steps: Sequence[int], total_steps: int | None = None) -> tuple[int, ...]:
    """Check explicit knot steps and return them as a tuple.

    Args:
        knot_steps: strictly increasing optimizer-step indices, each ``>= 1``.
        total_steps: the run's number of optimizer steps, if known. Knots must lie in
            ``[1, total_steps - 1]``: a knot at the last step would start a link that
            is never trained.

    Returns:
        the steps as a tuple of Python ``int`` (numpy integers are accepted).

    Raises:
        ValueError: on a non-integer, unsorted or repeated step, a step out of range, or
            a ``total_steps`` that is not an integer ``>= 0``.
    """
    if isinstance(knot_steps, (str, bytes)) or not isinstance(knot_steps, Iterable):
        raise ValueError(f"knot_steps {knot_steps!r} must be a sequence of integers")
    if total_steps is not None:
        total_steps = integer(total_steps, "total_steps", 0)
    steps = tuple(knot_steps)
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise ValueError(f"knot step {s!r} is not an integer")
    steps = tuple(int(s) for s in steps)
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"knot steps {list(steps)} must be strictly increasing")
    if steps and steps[0] < 1:
        raise ValueError(f"knot step {steps[0]} is out of range: steps count from 1")
    if total_steps is not None and steps and steps[-1] >= total_steps:
        raise ValueError(
            f"knot step {steps[-1]} is out of range: the run has {total_steps} optimizer steps, "
            f"so knots must lie in [1, {total_steps - 1}]"
        )
    return steps


def uniform_knots(total_steps: int, chain_length: int) -> tuple[int, ...]:
    """Knots that split ``total_steps`` optimizer steps into ``chain_length`` equal links.

    Link ``k`` (0-based) covers steps ``(round(k T / L), round((k+1) T / L)]``; the
    knots are ``round(k T / L)`` for ``k = 1 .. L-1``. ``chain_length = 1`` gives no
    knots (plain LoRA).

    Raises:
        ValueError: if ``chain_length`` is not an integer ``>= 1``, ``total_steps`` not an
            integer, or there are fewer steps than links.
    """
    chain_length = integer(chain_length, "chain_length", 1)
    total_steps = integer(total_steps, "total_steps", 0)
    if total_steps < chain_length:
        raise ValueError(
            f"chain_length {chain_length} needs at least {chain_length} optimizer steps, "
            f"but the run has {total_steps}: {chain_length - 1} knots cannot fit"
        )
    return validate_knots([round(k * total_steps / chain_length) for k in range(1, chain_length)], total_steps)


def epoch_knots(steps_per_epoch: int, epochs: int, every: int = 1) -> tuple[int, ...]:
    """A knot at the end of every ``every``-th epoch, except the last epoch.

    Raises:
        ValueError: if ``steps_per_epoch``, ``epochs`` or ``every`` is not an integer ``>= 1``.
    """
    steps_per_epoch = integer(steps_per_epoch, "steps_per_epoch", 1)
    epochs, every = integer(epochs, "epochs", 1), integer(every, "every", 1)
    return tuple(e * steps_per_epoch for e in range(every, epochs, every))


def step_down_ranks(first_rank: int, later_rank: int, chain_length: int) -> tuple[int, ...]:
    """Rank per link for COLA's step-down ablation: ``first_rank``, then ``later_rank``.

    The paper's ablation (Section 5.3) trains r = 8 for 3 epochs, then r in {2, 4, 6, 8}.

    Raises:
        ValueError: if a rank or ``chain_length`` is not an integer ``>= 1``.
    """
    first_rank, later_rank = integer(first_rank, "first_rank", 1), integer(later_rank, "later_rank", 1)
    chain_length = integer(chain_length, "chain_length", 1)
    return (first_rank,) + (later_rank,) * (chain_length - 1)
