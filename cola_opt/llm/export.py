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
- :func:`export_full`: the same directory for a fully fine-tuned model (no chain).
- :func:`chain_record`: knot steps, ranks, learning rates and sites as a JSON-ready dict.
- :func:`check_export_target`: refuses, before any work, an export folder whose
  writing would lose data (a folder this tool did not write, the output folder or a
  parent of it, the home folder, the file-system root, an unwritable place).

Every directory and file is written atomically (:mod:`cola_opt.atomic`). Each export
folder holds a marker, ``cola_opt_export.json`` (:data:`EXPORT_MARKER`), that lists the
entries the export wrote; a later export replaces an existing folder only when the
marker vouches for every entry in it, so nothing a user put there is ever deleted.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_directory, atomic_save_json, load_json
from ..chain.optimizer import ResidualLowRankOptimizer
from .checkpoint import CHECKPOINT_DIR

__all__ = [
    "CHAIN_RECORD_FILE",
    "EXPORT_FORMAT",
    "EXPORT_MARKER",
    "LinkAdapterWriter",
    "chain_record",
    "check_export_target",
    "export_full",
    "export_merged",
    "foreign_entries",
]

CHAIN_RECORD_FILE = "chain.json"
EXPORT_MARKER = "cola_opt_export.json"
EXPORT_FORMAT = "cola_opt.export/1"
_LEGACY_CHAIN_FORMAT = "cola_opt.chain/1"  # chain.json of exports written before the marker existed
_ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md"}
_LINK = re.compile(r"link-\d{2,}")
_OUR_LEFTOVER = re.compile(r"\.(link-\d{2,}|cola_opt_export\.json)\..*")  # temporaries of a killed write


# --------------------------------------------------------------------- whose folder is it
def _marker(kind: str, entries: Iterable[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("cola_opt")
    except PackageNotFoundError:
        ours = "unknown"
    doc = {"format": EXPORT_FORMAT, "tool": "cola_opt", "version": ours, "kind": kind,
           "entries": sorted(set(entries) | {EXPORT_MARKER})}
    if extra:
        doc["extra"] = extra
    return doc


def _listed_entries(folder: Path) -> set[str] | None:
    """The entries our marker in ``folder`` vouches for, or ``None`` if it has no readable marker."""
    try:
        doc = load_json(folder / EXPORT_MARKER)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT or not isinstance(doc.get("entries"), list):
        return None
    return {e for e in doc["entries"] if isinstance(e, str)}


def _unmarked_export(folder: Path) -> bool:
    """A folder of link adapters (``link-NN`` directories of PEFT files, and temporaries of a killed
    write), or a merged export written before the marker (``chain.json`` of format ``cola_opt.chain/1``)."""
    entries = [e for e in folder.iterdir() if not _OUR_LEFTOVER.fullmatch(e.name)]
    if entries and all(_LINK.fullmatch(e.name) and _is_link_adapter(e) for e in entries):
        return True
    try:
        return load_json(folder / CHAIN_RECORD_FILE).get("format") == _LEGACY_CHAIN_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _is_link_adapter(path: Path) -> bool:
    """A directory holding only what PEFT's ``save_pretrained`` writes for one adapter."""
    return path.is_dir() and not path.is_symlink() and {e.name for e in path.iterdir()} <= _ADAPTER_FILES


def foreign_entries(folder: str | os.PathLike, _depth: int = 0) -> list[str]:
    """Entries of the directory ``folder`` that no export of this tool wrote (names relative to it).

    Empty for an empty folder, for a model export whose marker lists every entry
    (temporaries of a killed write aside), for a folder of link adapters, for a merged
    export written before the marker existed, and for a folder of such exports
    (``compare`` writes one per method).
    """
    folder = Path(folder)
    entries = sorted(folder.iterdir())
    if not entries:
        return []
    listed = _listed_entries(folder)
    if listed is not None:
        return [e.name for e in entries if e.name not in listed and not _OUR_LEFTOVER.fullmatch(e.name)]
    if _unmarked_export(folder):
        return []
    if _depth == 0 and all(e.is_dir() and not e.is_symlink() for e in entries):
        return [f"{e.name}/{n}" for e in entries for n in foreign_entries(e, 1)]
    return [e.name for e in entries]


def _refuse_foreign(folder: Path, option: str = "export folder") -> None:
    foreign = foreign_entries(folder)
    if foreign:
        shown = ", ".join(repr(n) for n in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ValueError(
            f"{option} {str(folder)!r} already exists and is not an export of cola_opt: it holds {shown}, which the "
            f"export would delete; choose a new or empty folder (no {EXPORT_MARKER} vouches for those entries)"
        )


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def check_export_target(
    path: str | os.PathLike,
    option: str = "export folder",
    *,
    output_dir: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    links: bool = False,
) -> None:
    """Refuse an export folder whose writing could lose data; create nothing.

    Refused: the file-system root; the home folder; the output folder, a parent of it,
    the run folder, or a place inside the run folder's ``checkpoint`` (deleted at the end
    of a run); an existing file; an existing folder holding anything no export of
    cola_opt wrote (:func:`foreign_entries`); a folder that cannot be written (an
    existing export is swapped in its parent; link adapters are written inside it).

    Args:
        path: the export folder (``export_dir``) or link folder (``export_links``).
        option: the option's name, for the message.
        output_dir: the run's output folder, if any.
        run_dir: the run folder inside it, if any.
        links: ``path`` is a link folder (written into, not swapped as a whole).

    Raises:
        ValueError: naming ``option``, the path and the reason.
    """
    where = f"{option} {str(path)!r}"
    target = Path(path).expanduser().resolve()
    if target == Path(target.anchor):
        raise ValueError(f"{where} is the file-system root; an export needs a folder of its own")
    if target == Path.home().resolve():
        raise ValueError(f"{where} is the home folder; an export needs a folder of its own")
    for what, folder in (("output folder", output_dir), ("run folder", run_dir)):
        if folder is None:
            continue
        folder = Path(folder).expanduser().resolve()
        if target == folder or target in folder.parents:
            rel = "the" if target == folder else "a parent of the"
            raise ValueError(f"{where} is {rel} {what} {str(folder)!r}, which holds the run's results; an export "
                             "needs a folder of its own")
        if what == "run folder" and (target == folder / CHECKPOINT_DIR or folder / CHECKPOINT_DIR in target.parents):
            raise ValueError(f"{where} lies in the run's checkpoint folder, which is deleted when the run ends")
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"{where} exists and is not a folder")
        _refuse_foreign(target, option)
        if not _writable(target.parent) or (links and not _writable(target)):
            raise ValueError(f"{where} is not writable")
        return
    parent = next(q for q in target.parents if q.exists())
    if not parent.is_dir():
        raise ValueError(f"{where} cannot be created: {str(parent)!r} is a file")
    if not _writable(parent):
        raise ValueError(f"{where} cannot be created: {str(parent)!r} is not writable")


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
        "step_size": [chain.step_size] * chain.chain_length,
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
        out_dir: the model directory to write; an existing one is replaced only if it is
            empty or an earlier export (:func:`check_export_target`).
        tokenizer: saved beside the model if given.
        extra: JSON-serialisable entries added to ``chain.json`` (the task, seed, ...).

    Returns:
        the merged ``transformers`` model (in eval mode).

    Raises:
        ValueError: if the chain's sites are not layers of ``peft_model``, or ``out_dir`` is
            refused by :func:`check_export_target`; before anything is merged or written.
        cola_opt.chain.optimizer.NonFiniteUpdateError: if the last link is not finite; nothing is
            written and the model is unchanged.
    """
    _check_same_model(chain, peft_model)
    check_export_target(out_dir, "out_dir")
    peft_model.eval()  # no dropout can enter anything from here on
    if any(_live(s) for s in chain.sites):
        chain.tie_knot()
    record = chain_record(chain)
    if extra:
        record["extra"] = extra
    live = [s.name for s in chain.sites if _live(s)]
    if live:  # cannot happen after tie_knot; unload() would silently drop these
        raise RuntimeError(f"sites {live[:3]} still hold a nonzero link after the final merge")
    model = peft_model.unload()
    _write_model_dir(model, out_dir, tokenizer, "merged", record)
    return model


def export_full(model: nn.Module, out_dir: str | os.PathLike, *, tokenizer=None,
                extra: dict[str, Any] | None = None) -> nn.Module:
    """Write a fully fine-tuned (plain ``transformers``) model as an HF model directory.

    The directory holds the model, the tokenizer if given, and the marker (with
    ``extra``); no ``chain.json``. ``out_dir`` is replaced only as :func:`export_merged` says.

    Returns:
        ``model``, unchanged.

    Raises:
        ValueError: if ``out_dir`` is refused by :func:`check_export_target`, before any work.
    """
    check_export_target(out_dir, "out_dir")
    _write_model_dir(model, out_dir, tokenizer, "full", None, extra)
    return model


def _write_model_dir(model, out_dir, tokenizer, kind: str, record: dict | None, extra: dict | None = None) -> None:
    with atomic_directory(out_dir, may_replace=_refuse_foreign) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if record is not None:
            (tmp / CHAIN_RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        atomic_save_json(_marker(kind, (e.name for e in tmp.iterdir()), extra), tmp / EXPORT_MARKER)


def _live(site) -> bool:
    """Whether a site's link may be nonzero: both factors hold a nonzero entry.

    (PEFT starts ``lora.Embedding`` links at ``A = 0`` with ``B`` random, so ``B != 0``
    alone does not make a link live.)"""
    return bool(site.lora_B.detach().ne(0).any()) and bool(site.lora_A.detach().ne(0).any())


class LinkAdapterWriter:
    """A knot hook that saves each link as a PEFT adapter directory before it is merged.

    ``out_dir/link-{k:02d}`` holds ``adapter_config.json`` (with the link's own rank)
    and ``adapter_model.safetensors``: the trained ``B`` and ``A`` of link ``k``, which
    apply to the base with links ``0 .. k-1`` merged. Install it before training::

        LinkAdapterWriter(chain, peft_model, "out/links")

    A link folder needs no marker: it is recognised as ours when it holds nothing but
    ``link-NN`` directories of PEFT adapter files, and an existing ``link-NN`` is replaced
    only if it holds nothing but those files.

    Args:
        chain: the chain; the writer registers itself as a ``"before"`` knot hook.
        peft_model: the ``peft.PeftModel`` that holds the chain's layers.
        out_dir: the parent directory of the link directories.
        adapter: the PEFT adapter name.

    Raises:
        ValueError: if the chain's sites are not layers of ``peft_model``, or ``out_dir``
            is refused by :func:`check_export_target` (``links=True``).
    """

    def __init__(self, chain: ResidualLowRankOptimizer, peft_model: nn.Module, out_dir: str | os.PathLike,
                 adapter: str = "default") -> None:
        _check_same_model(chain, peft_model)
        check_export_target(out_dir, "out_dir", links=True)
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
            with atomic_directory(path, may_replace=_refuse_non_adapter) as tmp:
                self.peft_model.save_pretrained(tmp, selected_adapters=[self.adapter])
                sub = tmp / self.adapter if self.adapter != "default" else tmp
                if sub != tmp:  # PEFT nests non-default adapters in a sub-folder
                    for f in sub.iterdir():
                        os.replace(f, tmp / f.name)
                    sub.rmdir()
        finally:
            self.peft_model.peft_config[self.adapter] = config
        self.written.append(path)


def _refuse_non_adapter(path: Path) -> None:
    if not _is_link_adapter(path):
        raise ValueError(f"{str(path)!r} holds other files than a PEFT adapter; refusing to replace it")
