"""Crash-safe checkpoints of a fine-tuning run: write, find, check, restore, remove.

A run folder ``<output_dir>/<task>_<method>_s<seed>/`` holds the last two checkpoints::

    checkpoint/
        latest.json              the pointer: {"format", "dir": "step-000006", "step": 6,
                                 "previous": "step-000003"}
        step-000006/
            tensors.safetensors  changing model tensors, optimizer state, RNG states
            state.json           chain and scheduler state, the caller's state (config,
                                 data position, results so far), tensor references
        step-000003/             the previous checkpoint: the fallback if the latest is broken
        lock                     held (flock) by the process training in this folder

**Writing.** A checkpoint switches over as one unit: the new ``step-*`` directory is
written complete under a temporary name and renamed into place
(:func:`cola_opt.atomic.atomic_directory`), then ``latest.json`` is replaced atomically to
point at it (its ``previous`` naming the checkpoint it replaces), then the checkpoint
before that one is deleted. A kill at any moment leaves ``latest.json`` pointing at a
complete directory; anything else in the folder is a leftover of a killed write, deleted
by the next write.

**Reading** (:func:`find_checkpoint`). A file can still be damaged after it was written
(a full disk, a bad copy, an edit). Each candidate, the pointed directory first, then its
``previous``, then any other ``step-*`` directory, newest first, is checked in full:
``state.json`` parses and has every entry, ``tensors.safetensors`` loads and holds every
tensor ``state.json`` names, and every float tensor is finite. The first that passes is
used. If it is not the pointed one, a warning names each broken file and its fault, the
broken directories are kept as ``broken-step-*`` and ``latest.json`` is rewritten to point
at the one used. If none passes, :class:`CheckpointError` names them all: a run never
silently starts over.

"Changing model tensors" are the Parameters that training can change: every trainable
one (the link's factors, trained biases; every weight for full fine-tuning) and the base
weight of every chain site (the knots merge into it). Frozen weights are not saved; a
fingerprint of them (:func:`frozen_fingerprint`) checks that a resume loads the same model.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_directory, atomic_save_json, atomic_save_tensors, load_json, load_tensors
from .run_state import (
    CHECKPOINT_DIR,
    LOCK_FILE,
    DeferredInterrupt,
    capture_rng,
    changing_parameters,
    config_differences,
    frozen_fingerprint,
    pack_state,
    restore_rng,
    tensor_keys,
    unpack_state,
)

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "DeferredInterrupt",
    "capture_rng",
    "changing_parameters",
    "checkpoint_bytes",
    "checkpoint_path",
    "config_differences",
    "find_checkpoint",
    "frozen_fingerprint",
    "read_state",
    "remove_checkpoints",
    "restore_checkpoint",
    "restore_rng",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "cola_opt.checkpoint/1"
_POINTER = "latest.json"
_TENSORS = "tensors.safetensors"
_STATE = "state.json"
_ENTRIES = ("step", "model", "chain", "scheduler", "rng", "state")
_STEP_DIR = re.compile(r"step-\d{6,}")
_BROKEN = "broken-"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: the message names the file and the fault."""


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint of optimizer step ``step`` of ``run_dir`` lives."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:06d}"


def _entries(n: int) -> str:
    return "entry" if n == 1 else "entries"


# --------------------------------------------------------------------- checks
def _load_json_file(path: Path) -> Any:
    try:
        return load_json(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path} is not valid JSON (truncated or damaged): {e}") from None


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON part of a checkpoint (no tensors loaded): ``format``, ``step``, the caller's ``state``, ...

    Raises:
        CheckpointError: (a ``ValueError``) if ``state.json`` is missing, is not JSON, has
            another format, or lacks one of its entries; naming the file and the fault.
    """
    file = Path(path) / _STATE
    doc = _load_json_file(file)
    if not isinstance(doc, dict):
        raise CheckpointError(f"{file} holds a JSON {type(doc).__name__}, not a checkpoint's state")
    if doc.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {doc.get('format')!r}; this version reads {CHECKPOINT_FORMAT!r}"
        )
    missing = [k for k in _ENTRIES if k not in doc]
    if missing:
        raise CheckpointError(f"{file} has no {', '.join(map(repr, missing))} {_entries(len(missing))} "
                              "(truncated or edited)")
    if not isinstance(doc["model"], list) or not isinstance(doc["state"], dict):
        raise CheckpointError(f"{file}: its 'model' is not a list or its 'state' not an object (edited?)")
    return doc


def _load_checked(path: Path, required: Sequence[str] = ()) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(state.json, tensors)`` of a checkpoint, every check of the module docstring passed.

    Raises:
        CheckpointError: naming the file and the first fault found.
    """
    doc = read_state(path)
    missing = [k for k in required if k not in doc["state"]]
    if missing:
        raise CheckpointError(f"{path / _STATE}: its 'state' has no {', '.join(map(repr, missing))} "
                              f"{_entries(len(missing))} (written by another version, or edited)")
    file = path / _TENSORS
    if not file.is_file():
        raise CheckpointError(f"{file} is missing")
    from safetensors import SafetensorError

    try:
        tensors = load_tensors(file)
    except (SafetensorError, OSError, ValueError) as e:  # a truncated or damaged file
        raise CheckpointError(f"{file} cannot be read (truncated or damaged): {type(e).__name__}: {e}") from None
    wanted = [f"model/{n}" for n in doc["model"]] + tensor_keys([doc[k] for k in ("chain", "scheduler", "rng", "state")])
    absent = [k for k in wanted if k not in tensors]
    if absent:
        raise CheckpointError(f"{file} lacks {len(absent)} of the tensors that {_STATE} names, {absent[0]!r} first")
    for key, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{file}: tensor {key!r} holds {bad} NaN or inf {_entries(bad)} (of {t.numel()})")
    return doc, tensors


# --------------------------------------------------------------------- the folder
def _read_pointer(root: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """``(pointer, faults)``: the parsed ``latest.json`` (``None`` if missing or broken) and what is wrong with it."""
    file = root / _POINTER
    if not file.exists():
        return None, []
    try:
        doc = _load_json_file(file)
    except CheckpointError as e:
        return None, [str(e)]
    if not isinstance(doc, dict) or not isinstance(doc.get("dir"), str) or not _STEP_DIR.fullmatch(doc["dir"]):
        return None, [f"{file} names no checkpoint directory ({str(doc)[:80]!r})"]
    if not (isinstance(doc.get("previous"), str) and _STEP_DIR.fullmatch(doc["previous"])):
        doc["previous"] = None
    return doc, []


def _step_dirs(root: Path) -> list[str]:
    """The ``step-*`` directories of ``root``, newest first."""
    return sorted((e.name for e in root.iterdir() if e.is_dir() and _STEP_DIR.fullmatch(e.name)), reverse=True)


def _stderr(text: str) -> None:
    print(f"cola-opt: warning: {text}", file=sys.stderr, flush=True)


def find_checkpoint(run_dir: str | os.PathLike, *, required: Sequence[str] = (),
                    warn: Callable[[str], None] | None = None) -> Path | None:
    """The newest usable checkpoint directory of ``run_dir``, or ``None`` if there is none at all.

    Checks and falls back as the module docstring says; a fallback is reported through
    ``warn`` (default: a line on stderr) and repairs the folder (``broken-*``, pointer).

    Args:
        run_dir: the run folder.
        required: entries the caller's ``state`` must hold (see :func:`write_checkpoint`).
        warn: receives one line per fallback.

    Raises:
        CheckpointError: if the folder holds a pointer or ``step-*`` directories but no
            usable checkpoint; the message names every file tried and its fault.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return None
    pointer, faults = _read_pointer(root)
    steps = _step_dirs(root)
    if pointer is None and not faults:
        if not steps:
            return None
        faults.append(f"{root / _POINTER} is missing")
    order = [pointer["dir"]] if pointer is not None else []
    order += [s for s in ([pointer["previous"]] if pointer is not None else []) + steps if s and s in steps
              and s not in order]
    broken: list[str] = []
    for i, name in enumerate(order):
        path = root / name
        try:
            if not path.is_dir():
                raise CheckpointError(f"{path}, which {root / _POINTER} points at, is missing")
            _load_checked(path, required)
        except CheckpointError as e:
            faults.append(str(e))
            broken += [name] if path.is_dir() else []
            continue
        if faults:
            kept = [_BROKEN + b for b in broken]
            for b, k in zip(broken, kept):
                shutil.rmtree(root / k, ignore_errors=True)  # an older broken copy of the same step
                os.replace(root / b, root / k)
            later = next((n for n in order[i + 1:] if (root / n).is_dir()), None)
            _write_pointer(root, name, int(name.removeprefix("step-")), previous=later)
            (warn or _stderr)(f"{'; '.join(faults)}. Resuming from the newest complete checkpoint, {path}"
                              + (f"; the broken one is kept as {', '.join(kept)}" if kept else ""))
        return path
    raise CheckpointError(f"no usable checkpoint in {root}: {'; '.join(faults)}")


def _write_pointer(root: Path, name: str, step: int, previous: str | None = None) -> None:
    atomic_save_json({"format": CHECKPOINT_FORMAT, "dir": name, "step": step, "previous": previous},
                     root / _POINTER)


def _current_and_previous(root: Path) -> tuple[str | None, str | None]:
    """The pointed checkpoint and its ``previous``; with a broken pointer, the newest ``step-*`` as current."""
    if not root.is_dir():
        return None, None
    pointer, _ = _read_pointer(root)
    if pointer is None:
        steps = [s for s in _step_dirs(root) if (root / s / _STATE).is_file()]
        return (steps[0] if steps else None), None
    current = pointer["dir"] if (root / pointer["dir"] / _STATE).is_file() else None
    return current, pointer["previous"]


def write_checkpoint(
    run_dir: str | os.PathLike,
    *,
    step: int,
    model: nn.Module,
    chain,
    scheduler,
    state: dict[str, Any],
    rng: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint of optimizer step ``step`` and switch ``latest.json`` to it.

    The checkpoint it replaces stays as ``previous``; the one before is deleted.

    Args:
        run_dir: the run folder; the checkpoint goes to ``run_dir/checkpoint/step-<step>``.
        step: optimizer steps done (the name of the directory).
        model: the model; its :func:`changing_parameters` are saved bit for bit.
        chain: the chain (its ``state_dict()``: inner optimizer state, step count, link,
            knot records), or the stand-in for full fine-tuning.
        scheduler: the LR scheduler (``state_dict()``).
        state: the caller's JSON-ready state (config, data position, results so far);
            tensors and NumPy arrays inside it are stored in the safetensors file.
        rng: RNG states from :func:`capture_rng` (taken now if ``None``).

    Returns:
        the checkpoint directory. If ``latest.json`` already points at this step, nothing
        is written (a step's state is one state) and that directory is returned.

    Raises:
        TypeError: if ``state`` holds something neither JSON nor a tensor, before any file
            is written.
    """
    path = checkpoint_path(run_dir, step)
    root, name = path.parent, path.name
    current, previous = _current_and_previous(root)
    if current == name:
        return path
    tensors: dict[str, torch.Tensor] = {}
    params = changing_parameters(model, chain)
    for n, p in params.items():
        tensors[f"model/{n}"] = p.detach()
    doc = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "model": list(params),
        "chain": pack_state(chain.state_dict(), tensors, "chain"),
        "scheduler": pack_state(scheduler.state_dict(), tensors, "scheduler"),
        "rng": pack_state(rng if rng is not None else capture_rng(), tensors, "rng"),
        "state": pack_state(state, tensors, "state"),
    }
    root.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():  # leftovers of a killed write; broken-* are kept for inspection
        if entry.name not in (_POINTER, LOCK_FILE, current, previous) and not entry.name.startswith(_BROKEN):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    with atomic_directory(path) as tmp:
        atomic_save_tensors(tensors, tmp / _TENSORS)
        atomic_save_json(doc, tmp / _STATE)
    _write_pointer(root, name, step, previous=current)
    if previous is not None and previous not in (current, name):
        shutil.rmtree(root / previous, ignore_errors=True)
    return path


@torch.no_grad()
def restore_checkpoint(path: str | os.PathLike, *, model: nn.Module, chain, scheduler) -> dict[str, Any]:
    """Load a checkpoint into a freshly built model, chain and scheduler; set the RNG states.

    The checkpoint is checked in full first (files, entries, tensors present and finite).
    Order: the chain first (it resizes factors whose rank changed and loads the inner
    optimizer's state), then the model tensors, then the scheduler, then the RNG states.

    Returns:
        the caller's ``state`` as it was given to :func:`write_checkpoint`.

    Raises:
        CheckpointError: if a file is missing, damaged, or holds a non-finite tensor, naming it.
        ValueError: if the model's changing parameters are not those the checkpoint holds
            (names or shapes), naming the first difference.
    """
    path = Path(path)
    doc, tensors = _load_checked(path)
    chain.load_state_dict(unpack_state(doc["chain"], tensors))
    params = changing_parameters(model, chain)
    if list(params) != doc["model"]:
        diff = sorted(set(params) ^ set(doc["model"]))
        raise ValueError(f"checkpoint {path} holds other parameters than this model trains: {diff[:3]}")
    for n, p in params.items():
        saved = tensors[f"model/{n}"]
        if saved.shape != p.shape or saved.dtype != p.dtype:
            raise ValueError(f"checkpoint {path}: {n} is {tuple(saved.shape)} {saved.dtype}, "
                             f"the model's is {tuple(p.shape)} {p.dtype}")
        p.copy_(saved)
    scheduler.load_state_dict(unpack_state(doc["scheduler"], tensors))
    restore_rng(unpack_state(doc["rng"], tensors))
    return unpack_state(doc["state"], tensors)


def remove_checkpoints(run_dir: str | os.PathLike, *, keep_lock: bool = False) -> None:
    """Delete ``run_dir/checkpoint`` (after a run has written its results), or all in it but the lock file.

    The pointer goes first, so a kill part-way leaves no checkpoint rather than a torn one.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return
    (root / _POINTER).unlink(missing_ok=True)
    if not keep_lock:
        shutil.rmtree(root, ignore_errors=True)
        return
    for entry in root.iterdir():
        if entry.name != LOCK_FILE:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def checkpoint_bytes(path: str | os.PathLike) -> int:
    """Size of a checkpoint directory on disk, in bytes."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
