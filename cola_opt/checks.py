"""Argument checks shared by the theory modules: one ``ValueError`` that names the bad value.

Every check runs before any work and returns the value in its plain Python form (``int``,
``float``), so that numpy scalars are accepted at the edges and never travel further.
``bool`` is refused wherever a number is wanted (``True`` is an ``int`` to Python only).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = ["choice", "finite_array", "integer", "rank_in_range", "real"]


def integer(value, name: str, minimum: int = 0) -> int:
    """``value`` as an ``int``; it must be an integer (``numbers.Integral``, not bool) ``>= minimum``.

    Raises:
        ValueError: naming ``name`` and ``value``.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} = {value!r} must be an integer >= {minimum}")
    return int(value)


def rank_in_range(value, shape, name: str = "rank", where: str = "") -> int:
    """``value`` as an ``int`` rank of an ``(m, n)`` matrix: an integer in ``[1, min(m, n)]``.

    The one rank-range check of the chain (sites, knots, rank schedules) and of the
    Frank-Wolfe side (oracles): a rank ``r`` link has factors ``(m, r)`` and ``(r, n)``.

    Args:
        shape: ``(m, n)``; name: what the rank is called in the message; where: what the
            matrix is, for the message (``"site 'W'"``, say).

    Raises:
        ValueError: naming ``name``, ``value`` and the range, if ``value`` is not an integer
            (bool refused) in ``[1, min(m, n)]``.
    """
    m, n = (int(d) for d in shape)
    ok = not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Integral)
    if not (ok and 1 <= value <= min(m, n)):
        at = f"{where} of shape {(m, n)}" if where else f"a {m}x{n} matrix"
        raise ValueError(f"{name} {value!r} must be an integer in [1, {min(m, n)}] for {at}")
    return int(value)


def real(value, name: str, *, above: float | None = None, at_least: float | None = None,
         at_most: float | None = None, finite: bool = True) -> float:
    """``value`` as a ``float``; a real number (not bool, never NaN) within the given bounds.

    Args:
        above: ``value > above``; at_least: ``value >= at_least``; at_most: ``value <= at_most``.
        finite: refuse ``+-inf`` too.

    Raises:
        ValueError: naming ``name`` and ``value``.
    """
    parts = ["a finite number" if finite else "a number (not NaN)"]
    if above is not None:
        parts.append(f"> {above:g}")
    if at_least is not None:
        parts.append(f">= {at_least:g}")
    if at_most is not None:
        parts.append(f"<= {at_most:g}")
    ok = not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Real)
    if ok:
        v = float(value)
        ok = not math.isnan(v) and (math.isfinite(v) or not finite)
        ok = ok and (above is None or v > above) and (at_least is None or v >= at_least)
        ok = ok and (at_most is None or v <= at_most)
    if not ok:
        raise ValueError(f"{name} = {value!r} must be {' '.join(parts)}")
    return v


def choice(value, name: str, options) -> str:
    """``value`` if it is one of the strings ``options``.

    Raises:
        ValueError: naming ``name`` and ``value``.
    """
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} {value!r} must be one of {', '.join(map(repr, options))}")
    return value


def finite_array(a, name: str) -> None:
    """Check that every entry of the array or tensor ``a`` is finite.

    Raises:
        ValueError: naming ``name``, with the count and the first bad position and value.
    """
    if isinstance(a, torch.Tensor):
        bad = ~torch.isfinite(a.detach())
        if not bool(bad.any()):
            return
        bad = bad.cpu().numpy()
        arr = a.detach().cpu().double().numpy()
    else:
        arr = np.asarray(a)
        bad = ~np.isfinite(arr)
        if not bad.any():
            return
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{name} has {int(bad.sum())} non-finite entries (NaN or inf): the first is "
                     f"{float(arr[where])} at index {where}")


def real_array(x, name: str) -> torch.Tensor | np.ndarray:
    """``x`` as real numbers: a detached tensor if it is one, else a float64 numpy array.

    Finiteness is not checked here (see :func:`finite_array`), since callers cast first.

    Raises:
        ValueError: naming ``name``, if ``x`` is complex or not a numeric array.
    """
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise ValueError(f"{name} must be real, got dtype {x.dtype}")
        return x.detach()
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} is not a numeric array ({err})") from None
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be an array of real numbers, got dtype {a.dtype}")
    return a.astype(np.float64)
