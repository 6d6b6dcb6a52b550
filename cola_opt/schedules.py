"""Knot schedules and rank schedules.

A knot schedule says after which inner-optimizer steps a knot is tied. Steps are
counted in optimizer steps (after gradient accumulation), starting at 1. A knot at
step ``s`` merges the link that was trained during steps ``(previous knot, s]``.

COLA (Xia, Qin and Hazan 2024, Section 5) gives knots as iteration indices within a
fixed budget; :func:`uniform_knots` spaces them evenly, :func:`validate_knots`
checks explicit ones.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["uniform_knots", "validate_knots", "epoch_knots", "step_down_ranks"]


def validate_knots(knot_steps: Sequence[int], total_steps: int | None = None) -> tuple[int, ...]:
    """Check explicit knot steps and return them as a tuple.

    Args:
        knot_steps: strictly increasing optimizer-step indices, each ``>= 1``.
        total_steps: the run's number of optimizer steps, if known. Knots must lie in
            ``[1, total_steps - 1]``: a knot at the last step would start a link that
            is never trained.

    Raises:
        ValueError: on a non-integer, unsorted or repeated step, or a step out of range.
    """
    steps = tuple(knot_steps)
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, int):
            raise ValueError(f"knot step {s!r} is not an integer")
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
        ValueError: if ``chain_length < 1``, or there are fewer steps than links.
    """
    if isinstance(chain_length, bool) or not isinstance(chain_length, int) or chain_length < 1:
        raise ValueError(f"chain_length must be an integer >= 1, got {chain_length!r}")
    if total_steps < chain_length:
        raise ValueError(
            f"chain_length {chain_length} needs at least {chain_length} optimizer steps, "
            f"but the run has {total_steps}: {chain_length - 1} knots cannot fit"
        )
    return validate_knots([round(k * total_steps / chain_length) for k in range(1, chain_length)], total_steps)


def epoch_knots(steps_per_epoch: int, epochs: int, every: int = 1) -> tuple[int, ...]:
    """A knot at the end of every ``every``-th epoch, except the last epoch.

    Raises:
        ValueError: if ``steps_per_epoch``, ``epochs`` or ``every`` is below 1.
    """
    for name, v in (("steps_per_epoch", steps_per_epoch), ("epochs", epochs), ("every", every)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    return tuple(e * steps_per_epoch for e in range(every, epochs, every))


def step_down_ranks(first_rank: int, later_rank: int, chain_length: int) -> tuple[int, ...]:
    """Rank per link for COLA's step-down ablation: ``first_rank``, then ``later_rank``.

    The paper's ablation (Section 5.3) trains r = 8 for 3 epochs, then r in {2, 4, 6, 8}.

    Raises:
        ValueError: if a rank is below 1 or ``chain_length < 1``.
    """
    if first_rank < 1 or later_rank < 1 or chain_length < 1:
        raise ValueError(f"ranks and chain_length must be >= 1, got {first_rank}, {later_rank}, {chain_length}")
    return (first_rank,) + (later_rank,) * (chain_length - 1)
