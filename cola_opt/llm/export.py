"""Export a chain: the merged model, each link as a PEFT adapter, and a JSON record.

- :func:`export_merged`: merges the last link through the chain (float32, finite
  check), removes the now-zero PEFT adapters with PEFT's ``unload()``, and writes an HF
  model directory (safetensors, ``config.json``, the tokenizer if given, and
  ``chain.json``) that ``AutoModelForCausalLM.from_pretrained`` loads.
- :class:`LinkAdapterWriter`: a knot hook that saves every link, just before it is
  merged, as a PEFT adapter directory ``link-00``, ``link-01``, ... . Link ``k``'s
  adapter applies to the base with links ``0 .. k-1`` merged: rebuild the chain's model
  by loading the original base, then for each link in order
  ``PeftModel.from_pretrained(model, dir).merge_and_unload()``.
- :func:`chain_record`: knot steps, ranks, learning rates and sites as a JSON-ready dict.

Every directory and file is written atomically (:mod:`cola_opt.atomic`).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_directory
from ..chain.optimizer import ResidualLowRankOptimizer

__all__ = ["CHAIN_RECORD_FILE", "LinkAdapterWriter", "chain_record", "export_merged"]

CHAIN_RECORD_FILE = "chain.json"


def chain_record(chain: ResidualLowRankOptimizer) -> dict[str, Any]:
    """The chain's history and settings as a JSON-serialisable dict.

    Keys: ``format``; ``chain_length`` and ``knot_steps`` (the schedule, in optimizer
    steps); ``steps_done``; ``links_done`` (knots tied, a final export merge included);
    ``ranks`` (per link of the schedule); ``step_size`` (per link); ``shrink``;
    ``reset``; ``seed``; ``lr`` (``initial``: each inner param group's base LR, from the
    scheduler's ``initial_lr`` if one is attached, and ``current``); ``knots`` (one
    :class:`cola_opt.chain.optimizer.KnotRecord` per knot tied: link, step, seconds, rank, LR per
    group, largest merged entry); ``sites`` (name, ``(m, n)``, dtype, scaling,
    ``fp32_master``).
    """
    groups = chain.optimizer.param_groups
    ranks = list(chain.ranks) if chain.ranks is not None else [max(s.rank for s in chain.sites)] * chain.chain_length
    return {
        "format": "cola_opt.chain/1",
        "chain_length": chain.chain_length,
        "knot_steps": list(chain.knot_steps),
        "steps_done": chain.step_count,
        "links_done": chain.link,
        "ranks": ranks,
        "step_size": [chain.step_size(k) if callable(chain.step_size) else chain.step_size
                      for k in range(chain.chain_length)],
        "shrink": chain.shrink,
        "reset": repr(chain.reset_policy),
        "seed": chain.seed,
        "lr": {
            "initial": [float(g.get("initial_lr", g["lr"])) for g in groups],
            "current": [float(g["lr"]) for g in groups],
        },
        "knots": [asdict(k) for k in chain.knots],
        "sites": [
            {"name": s.name, "shape": list(s.shape), "dtype": str(s.weight.dtype).removeprefix("torch."),
             "scaling": s.scaling, "fp32_master": s.has_fp32_master}
            for s in chain.sites
        ],
    }


def _check_same_model(chain: ResidualLowRankOptimizer, peft_model: nn.Module) -> None:
    layers = {id(m) for m in peft_model.modules()}
    foreign = [s.name for s in chain.sites if id(getattr(s, "layer", None)) not in layers]
    if foreign:
        raise ValueError(f"the chain's sites {foreign[:3]} are not layers of the given model")


def export_merged(
    chain: ResidualLowRankOptimizer,
    peft_model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    tokenizer=None,
    extra: dict[str, Any] | None = None,
) -> nn.Module:
    """Write the chain's final model as an HF model directory; return the plain model.

    The current link is merged by :meth:`ResidualLowRankOptimizer.tie_knot` (float32,
    cast once, refused if not finite; the knot hooks run, so a
    :class:`LinkAdapterWriter` saves the last link too) unless its ``B`` is already
    zero. PEFT's ``unload()`` then removes the adapters, which are zero, so nothing
    else changes a weight. ``out_dir`` appears only once complete.

    This consumes ``peft_model``: its LoRA layers are gone afterwards (train no further
    with it or with ``chain``); use the returned model.

    Args:
        chain: the chain over ``peft_model``'s LoRA layers.
        peft_model: the ``peft.PeftModel`` (not a DDP wrapper; for FSDP, gather a full
            state dict on one process instead).
        out_dir: the model directory to write (replaced if it exists).
        tokenizer: saved beside the model if given.
        extra: JSON-serialisable entries added to ``chain.json`` (the task, seed, ...).

    Returns:
        the merged ``transformers`` model (in eval mode).

    Raises:
        ValueError: if the chain's sites are not layers of ``peft_model``.
        cola_opt.chain.optimizer.NonFiniteUpdateError: if the last link is not finite; nothing is
            written and the model is unchanged.
    """
    _check_same_model(chain, peft_model)
    peft_model.eval()  # no dropout can enter anything from here on
    if any(bool(s.lora_B.detach().ne(0).any()) for s in chain.sites):
        chain.tie_knot()
    record = chain_record(chain)
    if extra:
        record["extra"] = extra
    live = [s.name for s in chain.sites if bool(s.lora_B.detach().ne(0).any())]
    if live:  # cannot happen after tie_knot; unload() would silently drop these
        raise RuntimeError(f"sites {live[:3]} still hold a nonzero link after the final merge")
    model = peft_model.unload()
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / CHAIN_RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return model


class LinkAdapterWriter:
    """A knot hook that saves each link as a PEFT adapter directory before it is merged.

    ``out_dir/link-{k:02d}`` holds ``adapter_config.json`` (with the link's own rank)
    and ``adapter_model.safetensors``: the trained ``B`` and ``A`` of link ``k``, which
    apply to the base with links ``0 .. k-1`` merged. Install it before training::

        LinkAdapterWriter(chain, peft_model, "out/links")

    Args:
        chain: the chain; the writer registers itself as a ``"before"`` knot hook.
        peft_model: the ``peft.PeftModel`` that holds the chain's layers.
        out_dir: the parent directory of the link directories.
        adapter: the PEFT adapter name.

    Raises:
        ValueError: if the chain's sites are not layers of ``peft_model``.
    """

    def __init__(self, chain: ResidualLowRankOptimizer, peft_model: nn.Module, out_dir: str | os.PathLike,
                 adapter: str = "default") -> None:
        _check_same_model(chain, peft_model)
        self.peft_model, self.out_dir, self.adapter = peft_model, Path(out_dir), adapter
        self.written: list[Path] = []
        self.remove = chain.add_knot_hook(self, when="before")

    @torch.no_grad()
    def __call__(self, chain: ResidualLowRankOptimizer, _record=None) -> None:
        ranks = {s.rank for s in chain.sites}
        config = self.peft_model.peft_config[self.adapter]
        saved = copy.copy(config)
        saved.r = max(ranks)
        if len(ranks) > 1:
            saved.rank_pattern = {s.name.removeprefix("base_model.model."): s.rank for s in chain.sites}
        path = self.out_dir / f"link-{chain.link:02d}"
        self.peft_model.peft_config[self.adapter] = saved
        try:
            with atomic_directory(path) as tmp:
                self.peft_model.save_pretrained(tmp, selected_adapters=[self.adapter])
                sub = tmp / self.adapter if self.adapter != "default" else tmp
                if sub != tmp:  # PEFT nests non-default adapters in a sub-folder
                    for f in sub.iterdir():
                        os.replace(f, tmp / f.name)
                    sub.rmdir()
        finally:
            self.peft_model.peft_config[self.adapter] = config
        self.written.append(path)
