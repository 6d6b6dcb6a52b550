"""Methods: what one run trains, and the method names of the grid.

A :class:`Method` is one of the values of ``FinetuneConfig.method`` and knows what it
implies: whether it trains, whether it trains LoRA links through PEFT, whether it ties
knots, whether it trains through GaLore, which config field holds its optimizer reset
at a knot, and its default LR schedule. Code asks the method (``cfg.method_type.lora``),
never compares its name.

==============  ======  ====  =====  ======  ==============  =============================================
method          trains  LoRA  knots  GaLore  LR (default)    what
==============  ======  ====  =====  ======  ==============  =============================================
``zero-shot``   no      no    no     no      -               no training
``lora``        yes     yes   no     no      linear          one link (LoRA)
``cola``        yes     yes   yes    no      linear          a chain of links with knots (COLA); the
                                                             optimizer state at a knot: ``optimizer_reset``
                                                             (full, the paper's)
``relora``      yes     yes   yes    no      jagged-cosine   ReLoRA's settings on the chain (Lialin et al.
                                                             2023, Section 3): at each knot the optimizer
                                                             state is pruned (``relora_reset``, 99% by
                                                             magnitude), and the LR re-warms from 0
``galore``      yes     no    no     yes     linear          GaLore (Zhao et al. 2024): ``GaLoreAdamW`` on
                                                             the 2-D weights of ``target_modules``
``full``        yes     no    no     no      linear          every weight trained by AdamW, no LoRA
==============  ======  ====  =====  ======  ==============  =============================================

A :class:`GridMethod` is one of the grid's names (``cola3``, ``lora-r64``, ``relora4-r8``,
``galore-r8``, ``stepdown-r4``, ...): a :class:`Method` plus the rank and chain settings it
fixes, and its display name (:func:`grid_method`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["GRID_METHOD_FORMS", "METHODS", "GridMethod", "Method", "get_method", "grid_method"]


@dataclass(frozen=True)
class Method:
    """One value of ``FinetuneConfig.method`` and what it implies.

    Attributes:
        name: the name on the command line (``"cola"``).
        trains: whether the run trains at all (``zero-shot`` does not).
        lora: whether it trains LoRA links through PEFT (so it has LoRA targets to
            check, a chain over the LoRA layers, and links to export).
        knots: whether it ties knots (so ``chain_length``, ``knot_steps`` and
            ``link_ranks`` apply).
        label: the display name in tables (``"LoRA"``).
        galore: whether it trains the target weights with ``galore_torch.GaLoreAdamW``
            (:mod:`cola_opt.llm.galore`) instead of LoRA.
        reset_field: the ``FinetuneConfig`` field that holds the optimizer state's fate
            at a knot (``"optimizer_reset"``, or ``"relora_reset"`` for ReLoRA).
        lr_schedule: the LR schedule when ``FinetuneConfig.lr_schedule`` is ``None``
            (:data:`cola_opt.chain.lr_schedules.LR_SCHEDULES`).
    """

    name: str
    trains: bool
    lora: bool
    knots: bool
    label: str
    galore: bool = False
    reset_field: str = "optimizer_reset"
    lr_schedule: str = "linear"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("zero-shot", trains=False, lora=False, knots=False, label="zero-shot"),
        Method("lora", trains=True, lora=True, knots=False, label="LoRA"),
        Method("cola", trains=True, lora=True, knots=True, label="COLA"),
        Method("full", trains=True, lora=False, knots=False, label="full fine-tuning"),
        Method("relora", trains=True, lora=True, knots=True, label="ReLoRA", reset_field="relora_reset",
               lr_schedule="jagged-cosine"),
        Method("galore", trains=True, lora=False, knots=False, label="GaLore", galore=True),
    )
}


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name``.

    Raises:
        ValueError: on another name, listing them all.
    """
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"method {name!r} must be one of {tuple(METHODS)}")
    return METHODS[name]


@dataclass(frozen=True)
class GridMethod:
    """A grid method name: a :class:`Method` and the rank and chain settings it fixes.

    Attributes:
        name: the grid's name (``"cola3"``, ``"lora-r64"``, ``"stepdown-r4"``).
        method: the trainer's method it runs.
        chain_length: links for ``cola<N>``, ``relora<N>`` (N) and ``stepdown-r<K>`` (2);
            ``None`` otherwise.
        later_rank: ``K`` of ``stepdown-r<K>``, the second link's rank; ``None`` otherwise.
        rank: ``R`` of a ``-r<R>`` suffix (the LoRA rank, or GaLore's projection rank);
            ``None``: the grid's ``--rank`` (or ``--galore-rank``).
    """

    name: str
    method: Method
    chain_length: int | None = None
    later_rank: int | None = None
    rank: int | None = None

    @property
    def stepdown(self) -> bool:
        """Whether the knot is placed at the grid's ``stepdown_at`` (a rank step-down)."""
        return self.later_rank is not None

    def changes(self, rank: int, lora_alpha: float | None = None) -> dict:
        """The ``FinetuneConfig`` fields this method sets, given the grid's ``rank`` and ``lora_alpha``.

        ``stepdown-r<K>`` sets ``link_ranks = (rank, K)``; its knot step depends on the
        run's length and is set per run (:func:`cola_opt.llm.grid_plan.run_config`).
        A ``-r<R>`` suffix sets ``rank = R`` and ``lora_alpha = R * lora_alpha / rank``,
        so the LoRA scaling ``lora_alpha / r`` stays the grid's across ranks (2 with the
        defaults: ``lora_alpha = 2r``, COLA's 16 at r = 8; ``lora_alpha=None`` means
        that ratio); on ``galore`` it sets ``galore_rank = R``.
        """
        if self.stepdown:
            return {"method": self.method.name, "chain_length": 2, "link_ranks": (rank, self.later_rank)}
        out = {"method": self.method.name, "link_ranks": None, "knot_steps": None}
        if self.chain_length is not None:
            out["chain_length"] = self.chain_length
        if self.rank is not None and self.method.galore:
            out["galore_rank"] = self.rank
        elif self.rank is not None:
            ratio = 2.0 if lora_alpha is None else lora_alpha / rank
            out.update(rank=self.rank, lora_alpha=ratio * self.rank)
        return out

    def label(self, rank: int = 8) -> str:
        """The display name: ``"LoRA"``, ``"COLA (3 links)"``, ``"LoRA r=64"``, ``"COLA step-down r=8→4"``, ..."""
        if self.stepdown:
            return f"COLA step-down r={rank}→{self.later_rank}"
        text = self.method.label
        if self.method.knots:
            text += f" ({self.chain_length} links)"
        return text if self.rank is None else f"{text} r={self.rank}"


GRID_METHOD_FORMS = ("zero-shot, full, lora[-r<R>], galore[-r<R>], cola<N>[-r<R>], relora<N>[-r<R>] (N >= 2, "
                     "R >= 1) or stepdown-r<K> (K >= 1)")

_RANKED = re.compile(r"(lora|galore|cola|relora)([1-9]\d*)?(?:-r([1-9]\d*))?")  # no leading zeros: one name per run


def grid_method(name: str) -> GridMethod:
    """Parse a grid method name (:data:`GRID_METHOD_FORMS`).

    - ``zero-shot``, ``full``: the trainer's methods.
    - ``lora``, ``lora-r<R>``: one link, at the grid's rank or at rank ``R``.
    - ``cola<N>``, ``cola<N>-r<R>``: COLA with ``N >= 2`` links (knots evenly spaced).
    - ``relora<N>``, ``relora<N>-r<R>``: ReLoRA's settings with ``N >= 2`` links.
    - ``galore``, ``galore-r<R>``: GaLore at the grid's ``galore_rank`` or at ``R``.
    - ``stepdown-r<K>``: COLA, 2 links, the grid's rank then ``K``.

    Raises:
        ValueError: on any other name, listing the accepted forms.
    """
    if isinstance(name, str):
        if name in ("zero-shot", "full"):
            return GridMethod(name, METHODS[name])
        m = _RANKED.fullmatch(name)
        if m:
            kind, links, rank = m.group(1), m.group(2), m.group(3)
            chained = METHODS[kind].knots
            if (links is not None) == chained and (not chained or int(links) >= 2):
                return GridMethod(name, METHODS[kind], chain_length=int(links) if chained else None,
                                  rank=None if rank is None else int(rank))
        m = re.fullmatch(r"stepdown-r(\d+)", name)
        if m and int(m.group(1)) >= 1:
            return GridMethod(name, METHODS["cola"], chain_length=2, later_rank=int(m.group(1)))
    raise ValueError(f"unknown grid method {name!r}; use {GRID_METHOD_FORMS}")
