"""How many torch threads a run uses: a fixed count, or ``auto``, about a fair share of the cores.

Why a policy: on a 2-core machine a 2-thread SmolLM2 training step took 200-370 s
instead of about 2 s while five other busy processes shared the cores (issue 12). Each
parallel region of a step waits at its barrier for the one thread the scheduler has
descheduled, so the whole step runs at the pace of the unluckiest thread; one thread per
process keeps its fair share instead (about 5 x 2 s = 10 s there). Measured side by side
(``benchmarks/threads.py``, docs/benchmarks.md): with OpenMP's spinning wait a 2-thread
step beside 3 busy neighbours took 11.9x the idle 1-thread step (5.9x its fair share),
``auto`` 4.4x; under ``OMP_WAIT_POLICY=PASSIVE``, which ``import cola_opt`` sets, every
setting stayed within 1.3x of its fair share and ``auto`` within 6% of the best one.

``auto`` (:class:`ThreadPolicy`) counts the *other* runnable work: the median, over a few
samples 5 ms apart, of the kernel's count of runnable threads (``procs_running`` in
``/proc/stat``) minus this process's own running threads. It then uses
``cores - others`` threads, at least 1 and at most the ``ceiling`` (torch's thread count
when the run started: the cores, or ``OMP_NUM_THREADS``, or what the caller set). It
decides when the run starts and again after the first step that ends
:data:`RECHECK_SECONDS` or more after the last decision, so a run that started under load
goes back to every core when the load leaves, and the other way round. On a 2-core
machine: no other work, 2 threads; one busy neighbour or more, 1 thread. Where
``/proc/stat`` cannot be read (not Linux), ``auto`` keeps the ceiling.

A thread count changes no result beyond float rounding (sums split across threads add in
another order), so the field is not fingerprinted; a resume that must be bit for bit the
uninterrupted run needs a fixed ``--threads``, as ``auto`` may choose differently.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

__all__ = ["RECHECK_SECONDS", "ThreadPolicy", "check_threads", "fair_threads", "other_runnable", "thread_policy",
           "usable_cores"]

RECHECK_SECONDS = 30.0  # wall seconds between two decisions of ``auto`` (checked after each optimizer step)
SAMPLES = 7  # samples of the runnable count per decision, SAMPLE_INTERVAL apart (about 35 ms in all)
SAMPLE_INTERVAL = 0.005  # seconds


def check_threads(value) -> int | str:
    """``value`` as a thread setting: ``"auto"``, or an integer ``>= 1`` (an int, or its digits as the CLI gives them).

    Raises:
        ValueError: naming the value, for anything else (``0``, ``-1``, ``"x"``, ``True``, ``1.5``).
    """
    if value == "auto" and isinstance(value, str):
        return value
    n = int(value) if isinstance(value, str) and value.strip().isdigit() else value
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads {value!r} must be an integer >= 1 or 'auto' (about a fair share of the cores)")
    return n


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _procs_running() -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("procs_running "):
            return int(line.split()[1])
    raise OSError("/proc/stat has no procs_running line")


def _own_running() -> int:
    """This process's threads in state R (running or runnable)."""
    n = 0
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the thread ended while we looked
            continue
        n += text[text.rindex(")") + 2 :].startswith("R")
    return max(n, 1)  # the thread reading is running


def other_runnable(samples: int = SAMPLES, interval: float = SAMPLE_INTERVAL) -> int | None:
    """The runnable threads of other processes (threads): the median of ``samples`` samples, ``interval`` s apart.

    Returns ``None`` where ``/proc/stat`` cannot be read (not Linux).
    """
    counts = []
    try:
        for i in range(samples):
            if i:
                time.sleep(interval)
            counts.append(max(0, _procs_running() - _own_running()))
    except (OSError, ValueError):
        return None
    return int(statistics.median_low(counts))


def fair_threads(others: int, cores: int, ceiling: int) -> int:
    """``cores - others`` threads, clipped to ``[1, ceiling]``: the cores no other runnable thread wants.

    With ``others >= cores`` every process gets a slice of the cores anyway; one thread
    then takes its fair share without waiting for descheduled siblings.
    """
    return max(1, min(ceiling, cores - others))


class ThreadPolicy:
    """Sets torch's thread count for a run, per :data:`setting`, and records each count it set.

    Args:
        setting: an integer ``>= 1`` (that many threads throughout) or ``"auto"``
            (module docstring).
        ceiling: most threads ``auto`` uses; default: ``torch.get_num_threads()`` now.
        cores: the usable cores; default :func:`usable_cores`.
        sample: ``() -> other runnable threads or None``; default :func:`other_runnable`.
        clock: a monotonic clock in seconds (tests pass their own).
        recheck_seconds: wall seconds between two decisions of ``auto``.

    Attributes:
        history: one ``{"step", "threads", "others"}`` per decision that set a count
            (``step`` 0: at the start; ``others``: the runnable threads counted, ``None``
            for a fixed setting or where they cannot be counted).

    Raises:
        ValueError: a bad setting (:func:`check_threads`).
    """

    def __init__(self, setting: int | str, *, ceiling: int | None = None, cores: int | None = None,
                 sample: Callable[[], int | None] = other_runnable, clock: Callable[[], float] = time.monotonic,
                 recheck_seconds: float = RECHECK_SECONDS) -> None:
        self.setting = check_threads(setting)
        self.ceiling = max(1, ceiling if ceiling is not None else torch.get_num_threads())
        self.cores = cores if cores is not None else usable_cores()
        self.sample, self.clock, self.recheck_seconds = sample, clock, recheck_seconds
        self.history: list[dict] = []
        self._last = float("-inf")

    @property
    def used(self) -> list[int]:
        """The distinct thread counts set so far, in the order first set."""
        return list(dict.fromkeys(h["threads"] for h in self.history))

    def start(self) -> int:
        """Decide and set the thread count at the start of a run; return it."""
        self.decide(0)
        return torch.get_num_threads()

    def after_step(self, step: int) -> None:
        """After optimizer step ``step`` (1-based): decide again if ``auto`` and the last decision is old enough."""
        if self.setting == "auto" and self.clock() - self._last >= self.recheck_seconds:
            self.decide(step)

    def decide(self, step: int) -> None:
        """Count the other work (``auto``), set the thread count, and record it if it changed."""
        self._last = self.clock()
        others = None
        if self.setting == "auto":
            others = self.sample()
            n = self.ceiling if others is None else fair_threads(others, self.cores, self.ceiling)
        else:
            n = self.setting
        if not self.history or self.history[-1]["threads"] != n:
            torch.set_num_threads(n)
            self.history.append({"step": step, "threads": n, "others": others})

    def to_dict(self) -> dict:
        """JSON-ready: ``setting``, ``ceiling``, ``cores``, ``used`` and ``history`` (the ``results.json`` entry)."""
        return {"setting": self.setting, "ceiling": self.ceiling, "cores": self.cores, "used": self.used,
                "history": list(self.history)}


@contextlib.contextmanager
def thread_policy(setting: int | str, **kw) -> Iterator[ThreadPolicy]:
    """A started :class:`ThreadPolicy` for the block; torch's thread count is restored after it.

    Raises:
        ValueError: a bad setting (:func:`check_threads`), before any count is set.
    """
    before = torch.get_num_threads()
    policy = ThreadPolicy(setting, **kw)
    try:
        policy.start()
        yield policy
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
