"""Methods: what one run trains, and the method names of the grid.

A :class:`Method` is one of the four values of ``FinetuneConfig.method`` and knows what
it implies: whether it trains, whether it trains LoRA links through PEFT, and whether
it ties knots. Code asks the method (``cfg.method_type.lora``), never compares its name.

A :class:`GridMethod` is one of the grid's names (``cola3``, ``stepdown-r4``, ...): a
:class:`Method` plus the chain settings it fixes, and its display name.

==================  ========  ======  =====  ======================================
method              trains    LoRA    knots  what
==================  ========  ======  =====  ======================================
``zero-shot``       no        no      no     no training
``lora``            yes       yes     no     one link (LoRA)
``cola``            yes       yes     yes    a chain of links with knots (COLA)
``full``            yes       no      no     every weight trained by AdamW, no LoRA
==================  ========  ======  =====  ======================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["METHODS", "GridMethod", "Method", "get_method", "grid_method"]


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
    """

    name: str
    trains: bool
    lora: bool
    knots: bool
    label: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("zero-shot", trains=False, lora=False, knots=False, label="zero-shot"),
        Method("lora", trains=True, lora=True, knots=False, label="LoRA"),
        Method("cola", trains=True, lora=True, knots=True, label="COLA"),
        Method("full", trains=True, lora=False, knots=False, label="full fine-tuning"),
    )
}


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name``.

    Raises:
        ValueError: on another name, listing the four.
    """
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"method {name!r} must be one of {tuple(METHODS)}")
    return METHODS[name]


@dataclass(frozen=True)
class GridMethod:
    """A grid method name: a :class:`Method` and the chain settings it fixes.

    Attributes:
        name: the grid's name (``"cola3"``, ``"stepdown-r4"``).
        method: the trainer's method it runs.
        chain_length: links for ``cola<N>`` (N) and ``stepdown-r<K>`` (2); ``None`` otherwise.
        later_rank: ``K`` of ``stepdown-r<K>``, the second link's rank; ``None`` otherwise.
    """

    name: str
    method: Method
    chain_length: int | None = None
    later_rank: int | None = None

    @property
    def stepdown(self) -> bool:
        """Whether the knot is placed at the grid's ``stepdown_at`` (a rank step-down)."""
        return self.later_rank is not None

    def changes(self, rank: int) -> dict:
        """The ``FinetuneConfig`` fields this method sets; ``rank`` is the first link's rank.

        ``stepdown-r<K>`` sets ``link_ranks = (rank, K)``; its knot step depends on the
        run's length and is set per run (:func:`cola_opt.llm.grid_plan.run_config`).
        """
        if self.stepdown:
            return {"method": self.method.name, "chain_length": 2, "link_ranks": (rank, self.later_rank)}
        out = {"method": self.method.name, "link_ranks": None, "knot_steps": None}
        if self.chain_length is not None:
            out["chain_length"] = self.chain_length
        return out

    def label(self, rank: int = 8) -> str:
        """The display name: ``"LoRA"``, ``"COLA (3 links)"``, ``"COLA step-down r=8→4"``, ..."""
        if self.stepdown:
            return f"COLA step-down r={rank}→{self.later_rank}"
        if self.method.knots:
            return f"{self.method.label} ({self.chain_length} links)"
        return self.method.label


def grid_method(name: str) -> GridMethod:
    """Parse a grid method name: ``zero-shot``, ``lora``, ``full``, ``cola<N>`` (N >= 2), ``stepdown-r<K>`` (K >= 1).

    Raises:
        ValueError: on an unknown name, listing the accepted forms.
    """
    if isinstance(name, str):
        if name in METHODS and not METHODS[name].knots:
            return GridMethod(name, METHODS[name])
        m = re.fullmatch(r"cola(\d+)", name)
        if m and int(m.group(1)) >= 2:
            return GridMethod(name, METHODS["cola"], chain_length=int(m.group(1)))
        m = re.fullmatch(r"stepdown-r(\d+)", name)
        if m and int(m.group(1)) >= 1:
            return GridMethod(name, METHODS["cola"], chain_length=2, later_rank=int(m.group(1)))
    raise ValueError(
        f"unknown grid method {name!r}; use zero-shot, lora, full, cola<N> (N >= 2) or stepdown-r<K> (K >= 1)"
    )
