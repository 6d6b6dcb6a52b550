"""Crash-safe files: write to a temporary file beside the target, then ``os.replace``.

A reader (or a resumed run after ``kill -9`` or a power cut) sees either the old file
or the new one, never a torn one: ``os.replace`` is atomic on POSIX and Windows when
both paths are on one file system, which a sibling temporary file guarantees. Data and
the directory entry are ``fsync``-ed, so the rename survives a power cut too.

- :func:`atomic_save_tensors`: a ``dict[str, Tensor]`` as safetensors.
- :func:`atomic_save_json`: any JSON-serialisable object.
- :func:`atomic_directory`: a whole directory (an HF model, a PEFT adapter) written
  under a temporary name and renamed into place when complete; it replaces a non-empty
  directory only when its caller vouches for it (``may_replace``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_directory", "atomic_save_json", "atomic_save_tensors", "atomic_write", "load_json", "load_tensors"]


def _process_umask() -> int:
    mask = os.umask(0o022)  # read once, at import; os.umask can only be read by setting it
    os.umask(mask)
    return mask


_UMASK = _process_umask()


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return  # directories cannot be opened for fsync on Windows
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Run ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto ``path``.

    Args:
        path: the target file; its directory is created if missing.
        write: writes the complete content to the path it is given.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        whatever ``write`` raises; the target is then unchanged and the temporary file
        removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp's 0600 (and safetensors >= 0.8, which writes its own private file) would make the
        # file private; open() would give 0666 less the umask
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save_tensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Save named tensors as one safetensors file, atomically.

    Tensors may live on any device and share storage (tied weights); they are saved as
    contiguous CPU copies, bit for bit, in their own dtypes.

    Args:
        tensors: name -> tensor.
        path: the target ``.safetensors`` file.
        metadata: string -> string, stored in the safetensors header.

    Raises:
        ValueError: if a value is not a tensor or metadata is not ``str -> str``, before
            any file is touched.
    """
    from safetensors.torch import save_file

    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"atomic_save_tensors: entries {bad[:3]} are not tensors")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("atomic_save_tensors: metadata must map str to str")
    flat, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().to("cpu").contiguous()
        ptr = v.untyped_storage().data_ptr()
        flat[k] = v.clone() if ptr in seen else v  # safetensors refuses shared storage
        seen.add(ptr)
    return atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=dict(metadata) if metadata else None))


def atomic_save_json(obj: Any, path: str | os.PathLike, *, indent: int = 2) -> Path:
    """Save ``obj`` as JSON (UTF-8), atomically.

    Raises:
        TypeError: if ``obj`` is not JSON-serialisable, before any file is touched.
    """
    text = json.dumps(obj, indent=indent, sort_keys=False, allow_nan=True) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def load_tensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file written by :func:`atomic_save_tensors`."""
    from safetensors.torch import load_file

    return load_file(str(path), device=device)


def load_json(path: str | os.PathLike) -> Any:
    """Load a JSON file written by :func:`atomic_save_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, may_replace: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; when the block ends cleanly, it becomes ``path``.

    If the block raises, the temporary directory is removed and ``path`` is untouched.
    An existing *empty* directory is replaced. An existing non-empty one is replaced only
    if ``may_replace(path)`` returns (it raises to refuse); without ``may_replace`` it is
    refused, so this never deletes a folder its caller did not vouch for. A replaced
    directory is first renamed aside, then the new one renamed in, then the old one
    deleted; a crash between the two renames leaves the old directory complete under
    ``.<name>.old-*``. A directory that exists under its final name is always complete.

    Args:
        path: the directory to write.
        may_replace: called with ``path`` before any work and again just before the swap,
            when ``path`` is a non-empty directory; raises (``ValueError``, say) to refuse.

    Raises:
        ValueError: if ``path`` exists and is not a directory.
        FileExistsError: if ``path`` is a non-empty directory and no ``may_replace`` is
            given; whatever ``may_replace`` raises. Both before anything is written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"atomic_directory: {path} exists and is not a directory")

    def vouch() -> None:
        if path.is_dir() and any(path.iterdir()):
            if may_replace is None:
                raise FileExistsError(f"atomic_directory: {path} exists and is not empty; refusing to replace it")
            may_replace(path)

    vouch()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp's 0700 would make the directory private
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb+") as f:
                    os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # as open() would: safetensors writes 0600
                    os.fsync(f.fileno())
        vouch()  # the folder may have changed while the block ran
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
