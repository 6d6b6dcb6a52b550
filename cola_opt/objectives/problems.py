"""Generated instances of the objectives, reproducible from a seed.

Each generator returns a :class:`Problem`: the objective, the nuclear-ball radius ``tau``
(constraint on the residual ``X = W - W0``), the start ``W0`` (zeros) and the ground truth.
``tau`` is set from the truth's nuclear norm by ``tau_ratio``: below 1 the constraint is
active at the optimum, above 1 it usually is not.

Every generator checks its settings first: dimensions and ranks are integers ``>= 1``,
``seed`` an integer ``>= 0``, ratios and noise levels finite; a bad one raises a
``ValueError`` that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..checks import integer, real
from .base import Objective
from .completion import CauchyCompletion, MatrixCompletion
from .network import TwoLayerMLP
from .smooth import IndefiniteLeastSquares, MatrixLeastSquares, MatrixSensing, MultiResponseLogistic

__all__ = [
    "Problem",
    "cauchy_completion",
    "indefinite_least_squares",
    "least_squares",
    "low_rank_matrix",
    "matrix_completion",
    "matrix_sensing",
    "multi_response_logistic",
    "two_layer_mlp",
]


@dataclass
class Problem:
    """An objective with its constraint radius and start.

    Attributes:
        objective: the :class:`Objective`.
        tau: nuclear-norm radius of the residual ball (``D = 2 tau`` in Frobenius norm).
        W0: the ``(m, n)`` float32 start (zeros).
        truth: the generating matrix, when there is one (float64).
        name: a label.
        info: generator settings.
    """

    objective: Objective
    tau: float
    W0: np.ndarray
    truth: np.ndarray | None = None
    name: str = ""
    info: dict = field(default_factory=dict)


def _check(seed, tau_ratio, **dims) -> None:
    """Every generator's common settings: integer dimensions and rank ``>= 1``, an integer
    seed ``>= 0`` and a finite ``tau_ratio > 0``; a ``ValueError`` names the first bad one."""
    for name, v in dims.items():
        integer(v, name, 1)
    integer(seed, "seed", 0)
    real(tau_ratio, "tau_ratio", above=0)


def low_rank_matrix(m: int, n: int, rank: int, rng: np.random.Generator):
    """``U V^T / sqrt(rank)`` with standard Gaussian ``U`` ``(m, rank)``, ``V`` ``(n, rank)``.

    Returns ``(M, nuclear_norm)``; the norm comes from the ``rank x rank`` core, so it is
    cheap even for ``n = 5000``.
    """
    U = rng.standard_normal((m, rank))
    V = rng.standard_normal((n, rank))
    _, Ru = np.linalg.qr(U)
    _, Rv = np.linalg.qr(V)
    nuc = float(np.linalg.svd(Ru @ Rv.T, compute_uv=False).sum() / np.sqrt(rank))
    return (U @ V.T) / np.sqrt(rank), nuc


def _observed(m, n, fraction, rng):
    real(fraction, "observed fraction", above=0, at_most=1)
    itype = np.int32 if m * n < 2**31 else np.int64
    if m * n <= 4_000_000:  # exactly round(fraction m n) entries, uniformly
        flat = rng.choice(m * n, size=max(1, int(round(fraction * m * n))), replace=False)
        flat.sort()
        return (flat // n).astype(itype), (flat % n).astype(itype)
    # large: each entry observed independently with probability `fraction`, row block by row block
    rows, cols = [], []
    step = max(1, (1 << 22) // n)
    for i in range(0, m, step):
        r, c = np.nonzero(rng.random((min(step, m - i), n)) < fraction)
        rows.append((r + i).astype(itype))
        cols.append(c.astype(itype))
    return np.concatenate(rows), np.concatenate(cols)


def matrix_completion(m: int, n: int | None = None, *, rank: int = 5, fraction: float = 0.2, noise: float = 0.0,
                      tau_ratio: float = 0.5, seed: int = 0) -> Problem:
    """Nuclear-ball matrix completion (the DESIGN §6 benchmark: rank 5, 20% observed).

    ``M = U V^T / sqrt(rank)`` (entries of unit variance), a uniform random ``fraction`` of
    entries observed with Gaussian ``noise``; ``tau = tau_ratio * ||M||_*``. ``L = 1``.
    Up to ``m n = 4e6`` exactly ``round(fraction m n)`` entries are drawn; above, each entry
    independently with probability ``fraction`` (no ``O(m n)`` index array).

    Raises:
        ValueError: on a bad size, rank, fraction, noise, seed or tau_ratio.
    """
    n = m if n is None else n
    _check(seed, tau_ratio, m=m, n=n, rank=rank)
    real(noise, "noise", at_least=0)
    rng = np.random.default_rng(seed)
    rows, cols = _observed(m, n, fraction, rng)
    U = rng.standard_normal((m, rank))
    V = rng.standard_normal((n, rank))
    vals = np.empty(rows.size)
    for i in range(0, rows.size, 1 << 18):  # in chunks: U[rows] would be |Omega| x rank
        sl = slice(i, i + (1 << 18))
        vals[sl] = np.einsum("ij,ij->i", U[rows[sl]], V[cols[sl]]) / np.sqrt(rank)
    vals += noise * rng.standard_normal(rows.size)
    _, Ru = np.linalg.qr(U)
    _, Rv = np.linalg.qr(V)
    nuc = float(np.linalg.svd(Ru @ Rv.T, compute_uv=False).sum() / np.sqrt(rank))
    truth = (U @ V.T) / np.sqrt(rank) if m * n <= 4_000_000 else None
    obj = MatrixCompletion(rows, cols, vals, (m, n))
    return Problem(obj, tau_ratio * nuc, np.zeros((m, n), np.float32), truth, f"completion-{m}x{n}",
                   dict(rank=rank, fraction=fraction, noise=noise, tau_ratio=tau_ratio, seed=seed, truth_nuclear=nuc))


def cauchy_completion(m: int, n: int | None = None, *, rank: int = 3, fraction: float = 0.3, outliers: float = 0.1,
                      c: float = 0.5, tau_ratio: float = 0.8, seed: int = 0) -> Problem:
    """Robust (Cauchy-loss) completion with gross outliers: a smooth nonconvex objective, ``L = 1``.

    A fraction ``outliers`` of observations get ``+-5`` added, so residuals exceed ``c`` and
    the loss is used in its nonconvex region.
    """
    n = m if n is None else n
    _check(seed, tau_ratio, m=m, n=n, rank=rank)
    real(outliers, "outliers", at_least=0, at_most=1)
    real(c, "Cauchy scale c", above=0)
    rng = np.random.default_rng(seed)
    M, nuc = low_rank_matrix(m, n, rank, rng)
    rows, cols = _observed(m, n, fraction, rng)
    vals = M[rows, cols].copy()
    bad = rng.random(vals.size) < outliers
    vals[bad] += 5.0 * rng.choice((-1.0, 1.0), size=int(bad.sum()))
    return Problem(CauchyCompletion(rows, cols, vals, (m, n), c=c), tau_ratio * nuc, np.zeros((m, n), np.float32), M,
                   f"cauchy-{m}x{n}", dict(rank=rank, fraction=fraction, outliers=outliers, c=c, seed=seed))


def least_squares(m: int, n: int, *, p: int | None = None, rank: int = 4, noise: float = 0.1, tau_ratio: float = 0.5,
                  condition: float = 1.0, seed: int = 0) -> Problem:
    """``1/2 ||A W - Y||^2`` with ``Y = A M + noise``, ``M`` of the given rank, ``A`` ``(p, m)``.

    With ``p >= m`` the unconstrained optimum ``A^+ Y`` is full rank (the noise), its
    leading part of rank ``rank``. ``condition`` spreads ``A``'s singular values
    geometrically over ``[1/condition, 1]`` (times ``sqrt(p)`` scaling removed).
    ``tau = tau_ratio * ||M||_*``.
    """
    p = 2 * m if p is None else p
    _check(seed, tau_ratio, m=m, n=n, p=p, rank=rank)
    real(noise, "noise", at_least=0)
    real(condition, "condition", above=0)
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((p, m)) / np.sqrt(p)
    if condition != 1.0:
        Ua, _, Vta = np.linalg.svd(A, full_matrices=False)
        A = Ua @ np.diag(np.geomspace(1.0, 1.0 / condition, min(p, m))) @ Vta
    M, nuc = low_rank_matrix(m, n, rank, rng)
    Y = A @ M + noise * rng.standard_normal((p, n)) / np.sqrt(p)
    return Problem(MatrixLeastSquares(A, Y), tau_ratio * nuc, np.zeros((m, n), np.float32), M, f"lstsq-{m}x{n}",
                   dict(p=p, rank=rank, noise=noise, tau_ratio=tau_ratio, condition=condition, seed=seed))


def indefinite_least_squares(m: int, n: int, *, p: int | None = None, rank: int = 3, mu: float = 0.5,
                             tau_ratio: float = 1.0, seed: int = 0) -> Problem:
    """:class:`IndefiniteLeastSquares` on a :func:`least_squares` instance: nonconvex quadratic."""
    real(mu, "mu", at_least=0)
    base = least_squares(m, n, p=p, rank=rank, noise=0.1, tau_ratio=tau_ratio, seed=seed)
    obj = IndefiniteLeastSquares(base.objective.A, base.objective.Y, mu)
    return Problem(obj, base.tau, base.W0, base.truth, f"indefinite-{m}x{n}", dict(base.info, mu=mu))


def matrix_sensing(m: int, n: int, *, p: int | None = None, rank: int = 2, noise: float = 0.05,
                   tau_ratio: float = 0.7, seed: int = 0) -> Problem:
    """Gaussian matrix sensing: ``y_i = <A_i, M> + noise``, ``A_i`` i.i.d. ``N(0, 1/p)`` entries."""
    _check(seed, tau_ratio, m=m, n=n, rank=rank)
    p = 3 * m * n // 2 if p is None else p
    _check(seed, tau_ratio, p=p)
    real(noise, "noise", at_least=0)
    rng = np.random.default_rng(seed)
    M, nuc = low_rank_matrix(m, n, rank, rng)
    ops = rng.standard_normal((p, m * n)) / np.sqrt(p)
    y = ops @ M.ravel() + noise * rng.standard_normal(p) / np.sqrt(p)
    return Problem(MatrixSensing(ops, y, (m, n)), tau_ratio * nuc, np.zeros((m, n), np.float32), M, f"sensing-{m}x{n}",
                   dict(p=p, rank=rank, noise=noise, tau_ratio=tau_ratio, seed=seed))


def multi_response_logistic(m: int, n: int, *, N: int | None = None, rank: int = 2, tau_ratio: float = 0.5,
                            seed: int = 0) -> Problem:
    """``n`` logistic regressions sharing ``m`` features, labels from a rank-``rank`` truth."""
    N = 4 * m if N is None else N
    _check(seed, tau_ratio, m=m, n=n, N=N, rank=rank)
    rng = np.random.default_rng(seed)
    M, nuc = low_rank_matrix(m, n, rank, rng)
    M *= 3.0 / np.sqrt(m)
    nuc *= 3.0 / np.sqrt(m)
    Z = rng.standard_normal((N, m))
    probs = 1.0 / (1.0 + np.exp(-(Z @ M)))
    Y = np.where(rng.random((N, n)) < probs, 1.0, -1.0)
    return Problem(MultiResponseLogistic(Z, Y), tau_ratio * nuc, np.zeros((m, n), np.float32), M, f"logistic-{m}x{n}",
                   dict(N=N, rank=rank, tau_ratio=tau_ratio, seed=seed))


def two_layer_mlp(d: int, h: int, *, o: int = 3, N: int | None = None, rank: int = 2, shift: float = 1.0,
                  noise: float = 0.0, seed: int = 0) -> Problem:
    """Fine-tuning a layer: :class:`TwoLayerMLP` with a "pretrained" start ``W0`` and a shifted teacher.

    ``W0`` ``(h, d)`` has i.i.d. ``N(0, 1/d)`` entries, ``V`` ``(o, h)`` ``N(0, 1/h)``; the targets
    are the teacher's outputs ``Y = tanh(Z W*^T) V^T (+ noise)`` with ``W* = W0 + shift * M``,
    ``M`` a rank-``rank`` matrix of unit-variance entries scaled by ``1/sqrt(d)``, on ``N``
    (default ``8 d``) standard Gaussian inputs. ``W0`` is the start (not zero); ``truth`` is
    ``W*``; ``tau`` is ``||W* - W0||_*``.

    Raises:
        ValueError: on a bad size, rank, seed, shift or noise.
    """
    N = 8 * d if N is None else N
    _check(seed, 1.0, d=d, h=h, o=o, N=N, rank=rank)
    real(shift, "shift", at_least=0)
    real(noise, "noise", at_least=0)
    rng = np.random.default_rng(seed)
    W0 = rng.standard_normal((h, d)) / np.sqrt(d)
    V = rng.standard_normal((o, h)) / np.sqrt(h)
    M, nuc = low_rank_matrix(h, d, rank, rng)
    truth = W0 + shift * M / np.sqrt(d)
    Z = rng.standard_normal((N, d))
    Y = np.tanh(Z @ truth.T) @ V.T + noise * rng.standard_normal((N, o))
    return Problem(TwoLayerMLP(Z, V, Y), shift * nuc / np.sqrt(d), W0.astype(np.float32), truth, f"mlp-{h}x{d}",
                   dict(o=o, N=N, rank=rank, shift=shift, noise=noise, seed=seed))
