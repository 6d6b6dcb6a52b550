"""LMOs against dense SVDs and cvxpy; the rank-r oracle against the best rank-r solution."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cola_opt.fw.oracles import BlockLMO, ExactLMO, InexactOracle
from cola_opt.fw.sets import NuclearBall, Unconstrained
from cola_opt.fw.spectral import compress_factors, numerical_rank, project_capped_simplex, top_singular
from cola_opt.objectives import GradientOperator

torch.set_num_threads(1)
FAST = settings(max_examples=25, deadline=None)


@FAST
@given(m=st.integers(1, 40), n=st.integers(1, 40), tau=st.floats(0.01, 100.0), seed=st.integers(0, 2**31 - 1),
       method=st.sampled_from(["auto", "dense", "svds"]))
def test_lmo_in_ball_and_attains_minus_tau_sigma_max(m, n, tau, seed, method):
    G = np.random.default_rng(seed).standard_normal((m, n))
    ans = NuclearBall(tau).lmo(GradientOperator(G), method=method)
    S = ans.B @ ans.A
    sv = np.linalg.svd(G, compute_uv=False)
    assert np.linalg.svd(S, compute_uv=False).sum() <= tau * (1 + 1e-9)
    np.testing.assert_allclose(np.vdot(G, S), -tau * sv[0], rtol=1e-8)
    np.testing.assert_allclose(ans.value, -tau * sv[0], rtol=1e-8)
    assert np.linalg.matrix_rank(S) == 1


def test_lmo_on_sparse_gradient_matches_dense():
    rng = np.random.default_rng(0)
    G = sp.random(60, 45, density=0.2, random_state=1, format="csr")
    for method in ("svds", "randomized", "dense"):
        ans = NuclearBall(2.0).lmo(G, method=method)
        assert ans.value == pytest.approx(-2.0 * np.linalg.svd(G.toarray(), compute_uv=False)[0], rel=1e-6)
    v0 = rng.standard_normal(45)
    U, s, V = top_singular(G, 3, method="svds", v0=v0)
    np.testing.assert_allclose(s, np.linalg.svd(G.toarray(), compute_uv=False)[:3], rtol=1e-8)


def _best_rank_r_reference(Z, r, tau):
    """Independent: dense SVD, then the capped-simplex projection by bisection on the threshold."""
    U, s, Vt = np.linalg.svd(Z)
    top = s[:r]
    if top.sum() <= tau:
        w = top
    else:
        lo, hi = 0.0, top.max()
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if np.maximum(top - mid, 0).sum() > tau else (lo, mid)
        w = np.maximum(top - hi, 0)
    return (U[:, :r] * w) @ Vt[:r]


@FAST
@given(m=st.integers(1, 30), n=st.integers(1, 30), r=st.integers(1, 6), tau=st.floats(0.1, 20.0),
       c=st.floats(0.1, 10.0), seed=st.integers(0, 2**31 - 1))
def test_rank_r_lmo_matches_best_rank_r_solution(m, n, r, tau, c, seed):
    r = min(r, m, n)
    rng = np.random.default_rng(seed)
    G, X = rng.standard_normal((m, n)), rng.standard_normal((m, n))
    X *= 0.5 * tau / np.linalg.svd(X, compute_uv=False).sum()
    ans = BlockLMO(r, curvature=c).solve(GradientOperator(G), X, NuclearBall(tau), None)
    V = ans.B @ ans.A
    ref = _best_rank_r_reference(X - G / c, r, tau)
    np.testing.assert_allclose(V, ref, atol=1e-7 * (1 + np.abs(ref).max()))
    assert numerical_rank(V) <= r
    assert np.linalg.svd(V, compute_uv=False).sum() <= tau * (1 + 1e-9)
    # no random feasible rank-r point does better on the oracle's objective
    obj = lambda Y: np.vdot(G, Y - X) + 0.5 * c * np.sum((Y - X) ** 2)
    for _ in range(5):
        Y = rng.standard_normal((m, r)) @ rng.standard_normal((r, n))
        Y *= rng.uniform(0, 1) * tau / np.linalg.svd(Y, compute_uv=False).sum()
        assert obj(V) <= obj(Y) + 1e-9 * (1 + abs(obj(Y)))


def test_full_rank_block_lmo_equals_cvxpy_projection():
    cp = pytest.importorskip("cvxpy")
    rng = np.random.default_rng(3)
    m, n, tau, c = 6, 5, 1.5, 2.0
    G, X = rng.standard_normal((m, n)), np.zeros((m, n))
    Y = cp.Variable((m, n))
    cp.Problem(cp.Minimize(cp.sum(cp.multiply(G, Y)) + c / 2 * cp.sum_squares(Y)), [cp.normNuc(Y) <= tau]).solve(
        solver="CLARABEL")
    ans = BlockLMO(min(m, n), curvature=c).solve(GradientOperator(G), X, NuclearBall(tau), None)
    np.testing.assert_allclose(ans.B @ ans.A, Y.value, atol=1e-6)


def test_block_lmo_tends_to_the_lmo_as_curvature_vanishes():
    rng = np.random.default_rng(4)
    G = rng.standard_normal((9, 7))
    ans = BlockLMO(3, curvature=1e-6).solve(GradientOperator(G), np.zeros((9, 7)), NuclearBall(2.0), None)
    assert ans.value == pytest.approx(NuclearBall(2.0).lmo(G).value, rel=1e-4)


@FAST
@given(k=st.integers(1, 12), tau=st.floats(0.0, 10.0), seed=st.integers(0, 2**31 - 1))
def test_capped_simplex_projection_is_the_closest_point(k, tau, seed):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal(k) * 3
    p = project_capped_simplex(s, tau)
    assert (p >= 0).all() and p.sum() <= tau + 1e-9
    for _ in range(20):  # the projection beats random feasible points
        q = rng.dirichlet(np.ones(k)) * rng.uniform(0, tau)
        assert np.sum((p - s) ** 2) <= np.sum((q - s) ** 2) + 1e-9


def test_compress_factors_reproduces_the_product():
    rng = np.random.default_rng(5)
    P, Q = rng.standard_normal((30, 4)), rng.standard_normal((20, 4))
    P[:, 3] = P[:, 0]
    Q[:, 3] = 0.0  # rank 3
    U, s, V = compress_factors(P, Q)
    assert s.size == 3
    np.testing.assert_allclose((U * s) @ V.T, P @ Q.T, atol=1e-10)
    np.testing.assert_allclose(U.T @ U, np.eye(3), atol=1e-12)


def test_bad_inputs_raise_value_errors_naming_the_value():
    with pytest.raises(ValueError, match="tau = -1"):
        NuclearBall(-1)
    with pytest.raises(ValueError, match="'qr'"):
        ExactLMO(svd="qr")
    with pytest.raises(ValueError, match="rank = 0"):
        BlockLMO(0)
    with pytest.raises(ValueError, match="inner_steps = 0"):
        InexactOracle(2, 0)
    with pytest.raises(ValueError, match="'adagrad'"):
        InexactOracle(2, 5, optimizer="adagrad")
    with pytest.raises(ValueError, match="k = 5"):
        top_singular(np.ones((3, 4)), 5)
    with pytest.raises(ValueError, match="no linear minimization oracle"):
        Unconstrained().lmo(np.ones((2, 2)))
