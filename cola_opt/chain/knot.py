"""The knot's merge arithmetic: each site's update, the checks before any weight changes, the merge.

A knot with step ``gamma`` and shrink ``rho`` merges, at every site,
``W <- W + gamma * (Delta - rho * (W - W0))`` with ``Delta = scaling * B @ A``
(DESIGN §2; COLA is ``gamma = 1, rho = 0``, Frank-Wolfe ``rho = 1``). The update is
formed in float32 and cast once (peft #1388). Nothing is merged unless every site's
update and every merged weight are finite: :func:`check_updates` runs over all sites
before :func:`merge_updates` touches one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from .sites import Site

__all__ = ["KnotRecord", "NonFiniteUpdateError", "check_updates", "merge_updates", "site_update"]


class NonFiniteUpdateError(FloatingPointError):
    """A knot was asked to merge a NaN or inf; no weight was changed."""


@dataclass
class KnotRecord:
    """What one knot did.

    Attributes:
        link: 0-based index of the link that was merged.
        step: inner-optimizer steps done when the knot was tied.
        seconds: wall time of the whole knot (checks, merge, re-init, reset), in seconds,
            without the knot hooks.
        step_size: ``gamma`` used in the merge.
        shrink: coefficient of ``X = W - W0`` in the merge.
        rank: rank of the merged link (the largest over sites).
        next_rank: rank of the link that starts after the knot.
        max_abs_update: largest absolute entry merged, over all sites (float32).
        lr: learning rate of each inner param group when the knot was tied: the rate
            of the link's last step when the LR scheduler steps after ``chain.step()``
            (:class:`cola_opt.llm.hf.ColaCallback` records the same under the Trainer).
    """

    link: int
    step: int
    seconds: float
    step_size: float
    shrink: float
    rank: int
    next_rank: int
    max_abs_update: float
    lr: list[float] = field(default_factory=list)


@torch.no_grad()
def site_update(site: Site, step_size: float, shrink: float) -> torch.Tensor:
    """``step_size * (scaling B A - shrink (W - W0))`` of one site: a float32 ``(m, n)`` tensor."""
    update = site.delta()
    if shrink != 0.0:
        site.subtract_residual_(update, shrink)
    if step_size != 1.0:
        update.mul_(step_size)
    return update


def _updates(sites: Sequence[Site], step_size: float, shrink: float) -> Iterable[tuple[Site, torch.Tensor]]:
    for site in sites:
        yield site, site_update(site, step_size, shrink)


@torch.no_grad()
def check_updates(sites: Sequence[Site], step_size: float, shrink: float,
                  where: str) -> tuple[float, torch.Tensor | None]:
    """Check every site's update before any weight changes.

    Args:
        where: what is being merged, for the message (``"link 3 at step 120"``).

    Returns:
        ``(largest |entry| over all updates, the update itself if there is one site else None)``:
        one site's update is kept for :func:`merge_updates`; with several sites each is
        recomputed there (bit-identical) so that memory stays one site's worth.

    Raises:
        NonFiniteUpdateError: if an update holds a NaN or inf, or a merged weight would
            overflow its dtype; nothing has changed then.
    """
    biggest, held = 0.0, None
    for site, update in _updates(sites, step_size, shrink):
        lo, hi = torch.aminmax(update)
        peak = float(torch.maximum(hi, -lo))  # max |entry|; NaN or inf if any entry is
        if not math.isfinite(peak):
            raise NonFiniteUpdateError(f"refusing to merge {where}: the update of site {site.name!r} is not finite; "
                                       "the weights are unchanged")
        if not site.merged_is_finite(update):
            raise NonFiniteUpdateError(f"refusing to merge {where}: site {site.name!r} would overflow "
                                       f"{site.weight.dtype}; the weights are unchanged")
        biggest = max(biggest, peak)
        held = update if len(sites) == 1 else None
    return biggest, held


@torch.no_grad()
def merge_updates(sites: Sequence[Site], step_size: float, shrink: float, held: torch.Tensor | None) -> None:
    """Merge every site's update (``held``: the one site's update from :func:`check_updates`)."""
    if held is not None:
        sites[0].merge(held)
        return
    for site, update in _updates(sites, step_size, shrink):
        site.merge(update)
