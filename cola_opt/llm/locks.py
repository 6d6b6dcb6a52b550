"""One exclusive lock per folder that a process writes into (a run's checkpoints, a grid).

Built on the ``filelock`` package (``flock`` on POSIX, ``msvcrt`` on Windows), which
torch already depends on. The lock file stays where it is after release, so the next
holder locks the same file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from .run_state import CHECKPOINT_DIR, LOCK_FILE

__all__ = ["exclusive_lock", "run_lock"]


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` for the block; create its folder if needed.

    Args:
        path: the lock file.
        busy: the error message when another holder has it.

    Raises:
        RuntimeError: ``busy``, at once, if another process (or another lock in this
            one) holds ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RuntimeError(busy) from None
    try:
        yield
    finally:
        lock.release()


def run_lock(run_dir: str | os.PathLike):
    """The lock of a run folder, ``<run_dir>/checkpoint/lock``: held by the process training there.

    Raises:
        RuntimeError: another process is training in ``run_dir`` (two runs would delete
            each other's checkpoints).
    """
    path = Path(run_dir) / CHECKPOINT_DIR / LOCK_FILE
    return exclusive_lock(path, f"another process is training in {run_dir} ({path} is locked)")
