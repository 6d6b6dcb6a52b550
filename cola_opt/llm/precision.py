"""Precision by the hardware: what ``--autocast auto`` means on this machine, and which paths are slow.

bf16 autocast is about 1.6x faster than fp32 on a CPU with native bf16 (AVX512-BF16 or
AMX; docs/benchmarks.md) and about 20x slower on one without (AVX2 only: a SmolLM2 LoRA
step took 99.9 s against 4.77 s in fp32, issue 9), where oneDNN emulates it. So
``auto`` takes bf16 only where it is native (:func:`resolve_autocast`);
:func:`cola_opt.llm.config.FinetuneConfig.validate` replaces ``"auto"`` by that choice,
so that every fingerprint (checkpoint, finished result, grid) holds the precision that
ran, never the word ``auto``; a grid or a resume on a machine that resolves it otherwise
is another run.
"""

from __future__ import annotations

import torch

__all__ = ["AUTOCAST_CHOICES", "device_type", "native_low_precision", "precision_facts", "resolve_autocast",
           "slow_precision"]

AUTOCAST_CHOICES = ("auto", "none", "bf16", "fp16")


def device_type(device: str) -> str:
    """``"cuda"`` or ``"cpu"``: where a ``--device`` value (``auto``, ``cpu``, ``cuda``, ``cuda:N``) runs."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if str(device).startswith("cuda") else "cpu"


def native_low_precision(kind: str, where: str) -> bool:
    """Whether ``where`` (``"cpu"`` or ``"cuda"``) computes ``kind`` (``"bf16"``, ``"fp16"``) natively.

    CPU: oneDNN's own test (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``, true with
    AVX512-BF16 or AMX; the fp16 twin for fp16). Without it, bf16 matmuls are emulated:
    about 20x slower than fp32 on an AVX2-only CPU (docs/benchmarks.md). CUDA:
    ``torch.cuda.is_bf16_supported()`` (Ampere and later); fp16 always.
    """
    if where == "cuda":
        return kind == "fp16" or (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    name = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[kind]
    try:
        return bool(getattr(torch.ops.mkldnn, name)())
    except (AttributeError, RuntimeError):  # a torch without the test: assume emulation
        return False


def resolve_autocast(autocast: str, device: str) -> str:
    """The autocast that ``autocast`` means on this machine: ``"auto"`` -> ``"bf16"`` where bf16 is native, else ``"none"``.

    Other values are returned as they are (checked).

    Raises:
        ValueError: on a value outside :data:`AUTOCAST_CHOICES`.
    """
    if autocast not in AUTOCAST_CHOICES:
        raise ValueError(f"autocast {autocast!r} must be one of {', '.join(AUTOCAST_CHOICES)}")
    if autocast != "auto":
        return autocast
    return "bf16" if native_low_precision("bf16", device_type(device)) else "none"


def slow_precision(autocast: str, dtype: str, device: str) -> str | None:
    """Why ``autocast`` or ``dtype`` is a slow path on this machine (one line), or ``None``.

    A bf16 or fp16 forward on a CPU that computes it only by emulation: on an AVX2-only
    CPU a SmolLM2 LoRA step took 99.9 s under bf16 autocast against 4.77 s in fp32.
    """
    where = device_type(device)
    if where == "cuda" and not torch.cuda.is_available():
        return None  # no device to be slow on: resolve_device refuses the run
    slow = [f"--{name} {kind}" for name, kind in (("autocast", autocast), ("dtype", dtype))
            if kind in ("bf16", "fp16") and not native_low_precision(kind, where)]
    if not slow:
        return None
    cap = torch.backends.cpu.get_cpu_capability() if where == "cpu" else torch.cuda.get_device_name()
    return (f"{' and '.join(slow)} on a {where.upper()} without native support for it ({cap}): it is emulated, and a "
            "step can be many times slower than in fp32 (bf16 on an AVX2 CPU: about 20x, docs/benchmarks.md); "
            "--autocast auto --dtype fp32 takes the fast path here")


def precision_facts(device: str) -> dict:
    """What ``--autocast auto`` was decided on: device type, CPU capability, native bf16 (for ``results.json``)."""
    where = device_type(device)
    return {"device_type": where, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_low_precision("bf16", where), "native_fp16": native_low_precision("fp16", where)}
