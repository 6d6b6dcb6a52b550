"""What a checkpoint holds beyond files: JSON packing of nested state with tensors, the
Parameters that training changes, the frozen-weight fingerprint, RNG states, and the
run lock and the deferred Ctrl-C of the training loop. :mod:`cola_opt.llm.checkpoint` re-exports them.
"""

from __future__ import annotations

import hashlib
import random
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

CHECKPOINT_DIR = "checkpoint"  # the run folder's checkpoint folder (cola_opt.llm.checkpoint)
LOCK_FILE = "lock"  # in it: held by the process training in the run folder

__all__ = [
    "CHECKPOINT_DIR",
    "LOCK_FILE",
    "DeferredInterrupt",
    "capture_rng",
    "changing_parameters",
    "config_differences",
    "frozen_fingerprint",
    "pack_state",
    "restore_rng",
    "tensor_keys",
    "unpack_state",
]


# --------------------------------------------------------------------- JSON + tensors
def pack_state(obj: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """``obj`` as JSON-ready data; its tensors (and NumPy arrays) go to ``tensors`` under ``key``-derived names.

    Tuples, non-string dict keys, tensors and arrays are tagged so that :func:`unpack_state`
    restores them exactly.

    Raises:
        TypeError: if ``obj`` holds something neither JSON nor a tensor, naming where.
    """
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": key}
    if isinstance(obj, tuple):
        return {"__tuple__": [pack_state(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [pack_state(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: pack_state(v, tensors, f"{key}.{k}") for k, v in obj.items()}
        return {"__items__": [[k, pack_state(v, tensors, f"{key}.{k}")] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {key!r} in a checkpoint")


def unpack_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`pack_state`; ``tensors`` maps the stored names to the loaded tensors."""
    if isinstance(obj, list):
        return [unpack_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy()
    if "__tuple__" in obj:
        return tuple(unpack_state(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {k: unpack_state(v, tensors) for k, v in obj["__items__"]}
    return {k: unpack_state(v, tensors) for k, v in obj.items()}


def tensor_keys(obj: Any) -> list[str]:
    """The tensor names that packed data (from :func:`pack_state`) refers to, in order."""
    if isinstance(obj, list):
        return [k for v in obj for k in tensor_keys(v)]
    if not isinstance(obj, dict):
        return []
    for tag in ("__tensor__", "__ndarray__"):
        if tag in obj:
            return [obj[tag]]
    if "__tuple__" in obj:
        return tensor_keys(obj["__tuple__"])
    if "__items__" in obj:
        return [k for _, v in obj["__items__"] for k in tensor_keys(v)]
    return [k for v in obj.values() for k in tensor_keys(v)]


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


def config_differences(saved: dict[str, Any], current: dict[str, Any], may_differ: tuple[str, ...] = ()) -> list[str]:
    """``"name: saved -> current"`` for every config entry that differs, outside ``may_differ``."""
    names = sorted((set(saved) | set(current)) - set(may_differ))
    missing = object()
    return [f"{n}: {saved.get(n, missing)!r} -> {current.get(n, missing)!r}".replace(repr(missing), "(absent)")
            for n in names if saved.get(n, missing) != current.get(n, missing)]


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
