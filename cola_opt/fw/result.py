"""The per-iteration trace and the result of :func:`cola_opt.fw.solver.minimize`.

Row ``t`` of a :class:`Trace` describes the iterate ``W_t`` (after ``t`` links) and the
step taken from it: ``primal = f(W_t)``, ``fw_gap = g(W_t)``, ``rank`` of
``X_t = W_t - W0``, ``time`` (seconds since the start, measurement included, exact-rank
SVDs and callbacks excluded), then ``step_size = gamma_t``, ``oracle_error = eps_t`` and
``direction`` of the step from ``W_t`` to ``W_{t+1}`` (NaN / "" on the last row).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from scipy.optimize import OptimizeResult

from ..atomic import atomic_write

__all__ = ["Result", "Trace", "TraceRow"]


@dataclass
class TraceRow:
    """One iterate; see the module notes for each field's meaning and units."""

    iteration: int
    primal: float
    fw_gap: float
    rank: int
    rank_exact: bool
    time: float
    inner_steps: int
    grad_norm: float
    step_size: float = math.nan
    oracle_error: float = math.nan
    direction: str = ""
    refine_steps: int = 0


@dataclass
class Trace:
    """The rows of a run, in order, with column accessors."""

    rows: list[TraceRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def column(self, name: str) -> list:
        """One field over all rows, e.g. ``trace.column("fw_gap")``.

        Raises:
            ValueError: on an unknown field.
        """
        names = {f.name for f in fields(TraceRow)}
        if name not in names:
            raise ValueError(f"unknown trace field {name!r}; fields are {sorted(names)}")
        return [getattr(r, name) for r in self.rows]

    def __getattr__(self, name: str):
        if name.startswith("_") or name == "rows":
            raise AttributeError(name)
        try:
            return self.column(name)
        except ValueError as err:
            raise AttributeError(str(err)) from None

    def to_records(self) -> list[dict]:
        return [asdict(r) for r in self.rows]

    def to_csv(self, path) -> None:
        """Write one line per row with a header (floats as repr), atomically
        (:func:`cola_opt.atomic.atomic_write`: a reader sees the old file or the new one)."""
        names = [f.name for f in fields(TraceRow)]

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(names)
                for r in self.rows:
                    w.writerow([getattr(r, n) for n in names])

        atomic_write(path, write)

    def to_json(self, path, **extra) -> None:
        """Write ``{"trace": [...rows], **extra}``, atomically; NaN becomes null.

        Raises:
            TypeError: if an ``extra`` value is not JSON-serialisable, before any file is touched.
        """
        def clean(x):
            return None if isinstance(x, float) and not math.isfinite(x) else x

        rows = [{k: clean(v) for k, v in rec.items()} for rec in self.to_records()]
        text = json.dumps({"trace": rows, **extra}, indent=1)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def state_dict(self) -> list[dict]:
        return self.to_records()

    @classmethod
    def from_state(cls, rows: list[dict]) -> Trace:
        return cls([TraceRow(**r) for r in rows])


class Result(OptimizeResult):
    """A ``scipy.optimize.OptimizeResult`` (copt's convention) with the chain's trace.

    Keys: ``x`` (final ``W``, ``(m, n)`` float32 ndarray), ``fun``, ``fw_gap``, ``nit``
    (links taken), ``status`` (0: gap tolerance met, 1: iteration limit, 2: callback
    stop, 3: time limit), ``success`` (status 0 or 2), ``message``, ``trace``
    (:class:`Trace`), ``knots`` (the chain's :class:`cola_opt.chain.optimizer.KnotRecord` list),
    ``chain_length`` (links merged), ``inner_losses`` (per inner step, when recorded),
    ``solver`` (the :class:`cola_opt.fw.solver.ChainSolver`, for resuming).
    """
