"""Crash-safe checkpoints of a fine-tuning run: write, find, check, restore, remove.

A run folder ``<output_dir>/<task>_<method>_s<seed>/`` holds at most one live checkpoint::

    checkpoint/
        latest.json              the pointer: {"format", "dir": "step-000006", "step": 6}
        step-000006/
            tensors.safetensors  changing model tensors, optimizer state, RNG states
            state.json           chain and scheduler state, the caller's state (config,
                                 data position, results so far), tensor references
        lock                     held (flock) by the process training in this folder

A checkpoint switches over as one unit: the new ``step-*`` directory is written
complete under a temporary name and renamed into place (:func:`cola_opt.atomic.atomic_directory`),
then ``latest.json`` is replaced atomically to point at it, then the old directory is
deleted. A kill at any moment leaves ``latest.json`` pointing at a complete directory,
the old one or the new one; anything else in the folder is a leftover of a killed
write, never read, and deleted by the next write.

"Changing model tensors" are the Parameters that training can change: every trainable
one (the link's factors, trained biases; every weight for full fine-tuning) and the base
weight of every chain site (the knots merge into it). Frozen weights are not saved; a
fingerprint of them (:func:`frozen_fingerprint`) checks that a resume loads the same model.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_directory, atomic_save_json, atomic_save_tensors, load_json, load_tensors

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKPOINT_FORMAT",
    "DeferredInterrupt",
    "capture_rng",
    "changing_parameters",
    "checkpoint_bytes",
    "config_differences",
    "find_checkpoint",
    "frozen_fingerprint",
    "read_state",
    "remove_checkpoints",
    "restore_checkpoint",
    "restore_rng",
    "run_lock",
    "write_checkpoint",
]

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FORMAT = "cola_opt.checkpoint/1"
_POINTER = "latest.json"
_LOCK = "lock"
_TENSORS = "tensors.safetensors"
_STATE = "state.json"


# --------------------------------------------------------------------- JSON + tensors
def _pack(obj: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """``obj`` as JSON-ready data; its tensors go to ``tensors`` under ``key``-derived names."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": key}
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_pack(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _pack(v, tensors, f"{key}.{k}") for k, v in obj.items()}
        return {"__items__": [[k, _pack(v, tensors, f"{key}.{k}")] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {key!r} in a checkpoint")


def _unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy()
    if "__tuple__" in obj:
        return tuple(_unpack(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {k: _unpack(v, tensors) for k, v in obj["__items__"]}
    return {k: _unpack(v, tensors) for k, v in obj.items()}


# --------------------------------------------------------------------- what changes
def changing_parameters(model: nn.Module, chain) -> dict[str, nn.Parameter]:
    """The Parameters training can change, by name: trainable ones and the chain's site weights.

    Args:
        model: the trained module (a ``PeftModel`` for LoRA methods).
        chain: a :class:`cola_opt.chain.optimizer.ResidualLowRankOptimizer`, or anything without
            ``sites`` (full fine-tuning).
    """
    site_ptrs = {s.weight.data_ptr() for s in getattr(chain, "sites", ())}
    return {n: p for n, p in model.named_parameters() if p.requires_grad or p.data_ptr() in site_ptrs}


@torch.no_grad()
def frozen_fingerprint(model: nn.Module, chain) -> str:
    """SHA-1 (16 hex digits) of the names, shapes, dtypes and bytes of the frozen weights.

    The weights a checkpoint does not hold must be those of the model it was written
    with; this is the check. It hashes the exact bytes (on the CPU), so it does not
    depend on the device or the thread count; the site weights, which knots change, are
    left out. Cost: one pass over the frozen weights (SmolLM2-135M: see docs/trainer.md).
    """
    changing = set(changing_parameters(model, chain))
    h = hashlib.sha1()
    for name, p in model.named_parameters():
        if name not in changing:
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype};".encode())
            h.update(p.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()[:16]


def capture_rng() -> dict[str, Any]:
    """The global RNG states: torch (CPU and every CUDA device), NumPy and Python's ``random``."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the global RNG states from :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------- the folder
def _pointed(root: Path) -> str | None:
    pointer = root / _POINTER
    if not pointer.is_file():
        return None
    name = load_json(pointer)["dir"]
    return name if (root / name / _STATE).is_file() else None


def find_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint directory of ``run_dir`` that ``latest.json`` points at, or ``None``."""
    root = Path(run_dir) / CHECKPOINT_DIR
    name = _pointed(root)
    return root / name if name else None


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON part of a checkpoint (no tensors loaded): ``format``, ``step``, the caller's ``state``, ...

    Raises:
        ValueError: if the checkpoint has another format, naming it.
    """
    state = load_json(Path(path) / _STATE)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {path} has format {state.get('format')!r}; this version reads {CHECKPOINT_FORMAT!r}"
        )
    return state


def config_differences(saved: dict[str, Any], current: dict[str, Any], may_differ: tuple[str, ...] = ()) -> list[str]:
    """``"name: saved -> current"`` for every config entry that differs, outside ``may_differ``."""
    names = sorted((set(saved) | set(current)) - set(may_differ))
    missing = object()
    return [f"{n}: {saved.get(n, missing)!r} -> {current.get(n, missing)!r}".replace(repr(missing), "(absent)")
            for n in names if saved.get(n, missing) != current.get(n, missing)]


def _write_pointer(root: Path, name: str, step: int) -> None:
    atomic_save_json({"format": CHECKPOINT_FORMAT, "dir": name, "step": step}, root / _POINTER)


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
    root = Path(run_dir) / CHECKPOINT_DIR
    name = f"step-{step:06d}"
    current = _pointed(root)
    if current == name:
        return root / name
    tensors: dict[str, torch.Tensor] = {}
    params = changing_parameters(model, chain)
    for n, p in params.items():
        tensors[f"model/{n}"] = p.detach()
    doc = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "model": list(params),
        "chain": _pack(chain.state_dict(), tensors, "chain"),
        "scheduler": _pack(scheduler.state_dict(), tensors, "scheduler"),
        "rng": _pack(rng if rng is not None else capture_rng(), tensors, "rng"),
        "state": _pack(state, tensors, "state"),
    }
    root.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():  # leftovers of a killed write: never pointed at, never read
        if entry.name not in (_POINTER, _LOCK, current):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    with atomic_directory(root / name) as tmp:
        atomic_save_tensors(tensors, tmp / _TENSORS)
        atomic_save_json(doc, tmp / _STATE)
    _write_pointer(root, name, step)
    if current is not None:
        shutil.rmtree(root / current, ignore_errors=True)
    return root / name


@torch.no_grad()
def restore_checkpoint(path: str | os.PathLike, *, model: nn.Module, chain, scheduler) -> dict[str, Any]:
    """Load a checkpoint into a freshly built model, chain and scheduler; set the RNG states.

    Order: the chain first (it resizes factors whose rank changed and loads the inner
    optimizer's state), then the model tensors, then the scheduler, then the RNG states.

    Returns:
        the caller's ``state`` as it was given to :func:`write_checkpoint`.

    Raises:
        ValueError: if the model's changing parameters are not those the checkpoint holds
            (names or shapes), naming the first difference.
    """
    path = Path(path)
    doc = read_state(path)
    tensors = load_tensors(path / _TENSORS)
    chain.load_state_dict(_unpack(doc["chain"], tensors))
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
    scheduler.load_state_dict(_unpack(doc["scheduler"], tensors))
    restore_rng(_unpack(doc["rng"], tensors))
    return _unpack(doc["state"], tensors)


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
        if entry.name != _LOCK:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def checkpoint_bytes(path: str | os.PathLike) -> int:
    """Size of a checkpoint directory on disk, in bytes."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir/checkpoint/lock`` for the block (POSIX ``flock``).

    Raises:
        RuntimeError: if another process holds it (two runs would delete each other's
            checkpoints).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    with open(root / _LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another process is training in {run_dir} ({root / _LOCK} is locked)") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------- Ctrl-C
class DeferredInterrupt:
    """Within the block, the first SIGINT (Ctrl-C) or SIGTERM is only noted; a second one interrupts.

    The loop checks :attr:`requested` between steps, writes a checkpoint and stops, so
    an interrupt never lands in the middle of a step or a knot. A second signal raises
    ``KeyboardInterrupt`` at once (the last checkpoint stays valid). Outside the main
    thread, or with ``enabled=False``, signals are left as they are.

    Attributes:
        requested: the name of the first signal received (``"SIGINT"``), or ``None``.
    """

    def __init__(self, enabled: bool = True, notify: Callable[[str], None] | None = None) -> None:
        self.enabled = enabled
        self.requested: str | None = None
        self._notify = notify or (lambda text: print(text, file=sys.stderr, flush=True))
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        self._notify(f"{self.requested}: finishing this step, then writing a checkpoint; send it again to stop at once")

    def __enter__(self) -> DeferredInterrupt:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
