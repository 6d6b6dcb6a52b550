"""Spectral helpers: top singular triplets, capped-simplex projection, rank, factor compression.

Everything here works in float64 numpy. The top singular triplets are the work of every
exact oracle: the nuclear-norm ball's LMO needs the top pair of the gradient
(Jaggi 2013, Section 4.2), the rank-r block oracle the top ``r`` of a shifted matrix
(Allen-Zhu, Hazan, Hu and Li 2017).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, svds

__all__ = [
    "DENSE_SVD_MAX",
    "SVD_METHODS",
    "compress_factors",
    "numerical_rank",
    "project_capped_simplex",
    "top_singular",
]

#: ``method="auto"`` uses a dense SVD when ``min(m, n)`` is at most this.
DENSE_SVD_MAX = 48

#: The SVD methods of :func:`top_singular` (and of every oracle's ``svd=`` setting).
SVD_METHODS = ("auto", "dense", "svds", "randomized")


def _as_operator(G):
    if isinstance(G, np.ndarray) or sp.issparse(G) or isinstance(G, LinearOperator):
        return G
    if hasattr(G, "aslinearoperator"):
        return G.aslinearoperator()
    raise ValueError(f"cannot take singular values of a {type(G).__name__}")


def _dense(G) -> np.ndarray:
    if isinstance(G, np.ndarray):
        return G
    if sp.issparse(G):
        return G.toarray()
    if hasattr(G, "toarray"):
        return np.asarray(G.toarray())
    n = G.shape[1]
    return G.matmat(np.eye(n))


def _randomized(op, k: int, seed: int, n_iter: int = 6, oversample: int = 8):
    """Randomized subspace iteration (Halko, Martinsson and Tropp 2011, Algorithm 4.4)."""
    m, n = op.shape
    rng = np.random.default_rng(seed)
    ell = min(k + oversample, min(m, n))
    Y = op @ rng.standard_normal((n, ell))
    Qm, _ = np.linalg.qr(Y)
    for _ in range(n_iter):
        Z, _ = np.linalg.qr(op.T @ Qm if not isinstance(op, LinearOperator) else op.rmatmat(Qm))
        Qm, _ = np.linalg.qr(op @ Z)
    Bt = (op.T @ Qm if not isinstance(op, LinearOperator) else op.rmatmat(Qm)).T  # (ell, n) = Q^T G
    Ub, s, Vt = np.linalg.svd(Bt, full_matrices=False)
    return Qm @ Ub[:, :k], s[:k], Vt[:k].T


def top_singular(G, k: int = 1, *, method: str = "auto", v0: np.ndarray | None = None, seed: int = 0):
    """The top ``k`` singular triplets of ``G``, largest first.

    Args:
        G: an ``(m, n)`` float64 ndarray, scipy sparse matrix, ``LinearOperator``, or an
            object with ``aslinearoperator()`` (a :class:`cola_opt.objectives.base.GradientOperator`).
        k: number of triplets, ``1 <= k <= min(m, n)``.
        method: ``"dense"`` (LAPACK SVD), ``"svds"`` (ARPACK Lanczos, exact to machine
            precision), ``"randomized"`` (subspace iteration; approximate), or ``"auto"``
            (dense when ``min(m, n) <= DENSE_SVD_MAX`` or ``k`` is close to ``min(m, n)``,
            else svds).
        v0: warm start for svds: a length ``min(m, n)`` vector (ARPACK's convention: a right
            singular vector when ``m >= n``, a left one otherwise).
        seed: seeds svds' start vector when ``v0`` is None, and the randomized sketch.

    Returns:
        ``(U, s, V)``: ``U`` of shape ``(m, k)``, ``s`` of shape ``(k,)`` descending,
        ``V`` of shape ``(n, k)``, so that ``G @ V[:, i] = s[i] * U[:, i]``.

    Raises:
        ValueError: on a bad ``k`` or ``method``.
    """
    if method not in SVD_METHODS:
        raise ValueError(f"svd method {method!r} must be one of {SVD_METHODS}")
    m, n = G.shape
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= min(m, n):
        raise ValueError(f"k = {k!r} singular triplets must be in [1, {min(m, n)}] for a {m}x{n} matrix")
    if method == "auto":
        method = "dense" if (min(m, n) <= DENSE_SVD_MAX or k >= min(m, n) // 2) else "svds"
    if method == "svds" and k >= min(m, n):
        method = "dense"  # ARPACK needs k < min(m, n)
    if method == "dense":
        U, s, Vt = np.linalg.svd(_dense(G), full_matrices=False)
        return U[:, :k], s[:k], Vt[:k].T
    op = _as_operator(G)
    if method == "randomized":
        return _randomized(op, k, seed)
    if v0 is None:
        v0 = np.random.default_rng(seed).standard_normal(min(m, n))
    try:
        U, s, Vt = svds(op, k=k, v0=v0, which="LM", return_singular_vectors=True, solver="arpack", tol=1e-12,
                        maxiter=max(1000, 20 * min(m, n)))
    except ArpackNoConvergence:  # near-tied top singular values: fall back, exactly when affordable
        if min(m, n) <= 3000:
            return top_singular(G, k, method="dense")
        return _randomized(op, k, seed, n_iter=40)
    order = np.argsort(s)[::-1]
    return U[:, order], s[order], Vt[order].T


def project_capped_simplex(s: np.ndarray, tau: float) -> np.ndarray:
    """Euclidean projection of ``s`` onto ``{x >= 0, sum(x) <= tau}``.

    The projection of a matrix onto the nuclear-norm ball acts on its singular values this
    way (soft thresholding at the level that makes them sum to ``tau``); with the top-``r``
    values only, it gives the projection onto ``{||X||_* <= tau, rank X <= r}``.
    Sort-based algorithm (Duchi, Shalev-Shwartz, Singer and Chandra 2008, Figure 1).

    Raises:
        ValueError: if ``tau < 0``.
    """
    if tau < 0:
        raise ValueError(f"radius tau = {tau} must be >= 0")
    x = np.maximum(np.asarray(s, dtype=np.float64), 0.0)
    if x.sum() <= tau:
        return x
    if tau == 0:
        return np.zeros_like(x)
    u = np.sort(x)[::-1]
    css = np.cumsum(u) - tau
    idx = np.arange(1, u.size + 1)
    hits = np.nonzero(u - css / idx > 0)[0]
    rho = int(hits[-1]) if hits.size else 0  # empty only when tau underflows against u[0]
    theta = css[rho] / (rho + 1.0)
    return np.maximum(x - theta, 0.0)


def numerical_rank(X, rtol: float = 1e-5) -> int:
    """Number of singular values above ``rtol * sigma_max`` of a dense ``(m, n)`` matrix.

    ``rtol = 1e-5`` suits float32 weights (unit round-off 6e-8, times the dimension).
    """
    a = X.detach().cpu().double().numpy() if hasattr(X, "detach") else np.asarray(X, dtype=np.float64)
    if a.size == 0:
        return 0
    s = np.linalg.svd(a, compute_uv=False)
    if s[0] == 0.0:
        return 0
    return int((s > rtol * s[0]).sum())


def compress_factors(P: np.ndarray, Q: np.ndarray, rtol: float = 1e-9, max_rank: int | None = None):
    """Thin SVD of ``P @ Q.T`` from its factors, dropping tiny singular values.

    Cost ``O((m + n) k^2)`` for ``k`` columns: two QR factorisations and one ``k x k`` SVD.

    Args:
        P: ``(m, k)``; Q: ``(n, k)``.
        rtol: singular values at or below ``rtol * s_max`` are dropped (at least one kept).
        max_rank: keep at most this many.

    Returns:
        ``(U, s, V)`` with orthonormal columns, ``P @ Q.T ~= U @ diag(s) @ V.T``.
    """
    Qp, Rp = np.linalg.qr(P)
    Qq, Rq = np.linalg.qr(Q)
    Uc, s, Vct = np.linalg.svd(Rp @ Rq.T)
    keep = max(1, int((s > rtol * s[0]).sum())) if s.size and s[0] > 0 else 1
    if max_rank is not None:
        keep = min(keep, max_rank)
    return Qp @ Uc[:, :keep], s[:keep], Qq @ Vct[:keep].T
