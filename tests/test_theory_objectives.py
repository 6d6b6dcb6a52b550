"""Objectives: gradients against autograd, L against the Hessian, cvxpy forms against values."""

import numpy as np
import pytest
import torch

from cola_opt.objectives import MatrixCompletion, MatrixLeastSquares, MultiResponseLogistic, TwoLayerMLP, problems

torch.set_num_threads(1)

PROBLEMS = {
    "completion": lambda: problems.matrix_completion(9, 7, rank=2, fraction=0.5, noise=0.1, seed=1),
    "cauchy": lambda: problems.cauchy_completion(9, 8, seed=2),
    "lstsq": lambda: problems.least_squares(7, 5, seed=3),
    "indefinite": lambda: problems.indefinite_least_squares(7, 5, mu=0.7, seed=4),
    "sensing": lambda: problems.matrix_sensing(5, 4, seed=5),
    "logistic": lambda: problems.multi_response_logistic(6, 4, seed=6),
}


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_value_gradient_and_loss_agree_with_autograd(name):
    obj = PROBLEMS[name]().objective
    W = torch.randn(*obj.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    Wg = W.clone().requires_grad_(True)
    loss = obj.loss(Wg)
    loss.backward()
    assert float(loss) == pytest.approx(obj.value(W), rel=1e-12)
    np.testing.assert_allclose(obj.gradient(W).toarray(), Wg.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_smoothness_constant_bounds_the_hessian_and_is_nearly_attained(name):
    """L >= sup |<D, H(W) D>| / ||D||^2 over random W, D (autograd Hessian-vector products)."""
    obj = PROBLEMS[name]().objective
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for _ in range(5):
        W = torch.randn(*obj.shape, dtype=torch.float64, generator=g)
        D = torch.randn(*obj.shape, dtype=torch.float64, generator=g)
        for _ in range(30):  # power iteration on the Hessian at W
            _, hvp = torch.autograd.functional.hvp(obj.loss, W, D)
            D = hvp / hvp.norm()
        _, hvp = torch.autograd.functional.hvp(obj.loss, W, D)
        worst = max(worst, abs(float((D * hvp).sum())))
    assert worst <= obj.smoothness * (1 + 1e-8)
    if name in ("completion", "lstsq", "sensing", "indefinite"):  # constant Hessian: L is attained
        assert worst >= 0.99 * obj.smoothness


@pytest.mark.parametrize("name", ["completion", "lstsq", "sensing", "indefinite"])
def test_curvature_matches_finite_differences(name):
    obj = PROBLEMS[name]().objective
    rng = np.random.default_rng(2)
    W, D = rng.standard_normal(obj.shape), rng.standard_normal(obj.shape)
    h = 1e-3
    fd = (obj.value(W + h * D) - 2 * obj.value(W) + obj.value(W - h * D)) / h**2
    assert obj.curvature(D) == pytest.approx(fd, rel=1e-5)


@pytest.mark.parametrize("name", ["completion", "lstsq", "sensing", "logistic"])
def test_cvxpy_form_equals_value(name):
    cp = pytest.importorskip("cvxpy")
    obj = PROBLEMS[name]().objective
    X = np.random.default_rng(3).standard_normal(obj.shape)
    assert float(obj.cvxpy_objective(cp.Constant(X)).value) == pytest.approx(obj.value(X), rel=1e-10)


def test_lowrank_evaluation_matches_dense():
    pb = problems.matrix_completion(12, 9, rank=2, seed=4)
    rng = np.random.default_rng(4)
    W0 = rng.standard_normal((12, 9))
    P, Q = rng.standard_normal((12, 3)), rng.standard_normal((9, 3))
    model = pb.objective.lowrank(W0)
    assert model.value(P, Q) == pytest.approx(pb.objective.value(W0 + P @ Q.T), rel=1e-12)
    np.testing.assert_allclose(model.gradient(P, Q).toarray(), pb.objective.gradient(W0 + P @ Q.T).toarray())


def test_nonconvex_lower_bounds_hold():
    pb = problems.indefinite_least_squares(6, 5, mu=1.0, seed=5)
    rng = np.random.default_rng(5)
    lb = pb.objective.lower_bound(pb.tau, pb.W0)
    for _ in range(50):
        X = rng.standard_normal((6, 5))
        X *= pb.tau / np.linalg.svd(X, compute_uv=False).sum()
        assert pb.objective.value(X) >= lb
    assert not pb.objective.convex


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="outside the shape"):
        MatrixCompletion([0, 5], [0, 1], [1.0, 2.0], (3, 3))
    with pytest.raises(ValueError, match=r"\(p, m\)"):
        MatrixLeastSquares(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="-1 or \\+1"):
        MultiResponseLogistic(np.ones((3, 2)), np.zeros((3, 2)))
    obj = PROBLEMS["lstsq"]().objective
    with pytest.raises(ValueError, match="shape"):
        obj.value(np.ones((2, 2)))
    with pytest.raises(ValueError, match="fraction"):
        problems.matrix_completion(5, fraction=0.0)


def test_two_layer_mlp_gradient_matches_autograd_and_the_teacher_is_a_zero():
    pb = problems.two_layer_mlp(7, 5, o=2, rank=2, shift=1.5, seed=3)
    obj = pb.objective
    assert obj.shape == (5, 7) and not obj.convex and obj.smoothness is None
    assert float(np.abs(pb.W0).max()) > 0 and obj.value(pb.truth) == pytest.approx(0.0, abs=1e-24)
    assert obj.value(pb.W0) > 1e-3  # the start is off the teacher
    W = torch.tensor(pb.W0.astype(np.float64) + 0.3, requires_grad=True)
    loss = obj.loss(W)
    loss.backward()
    assert float(loss) == pytest.approx(obj.value(W.detach().numpy()), rel=1e-12)
    np.testing.assert_allclose(obj.gradient(W.detach().numpy()).toarray(), W.grad.numpy(), rtol=1e-10, atol=1e-14)
    out = obj.outputs(pb.truth)
    np.testing.assert_allclose(out, np.tanh(obj.Z @ pb.truth.T) @ obj.V.T)
    with pytest.raises(ValueError, match="must be"):
        TwoLayerMLP(np.ones((4, 3)), np.ones((2, 5)), np.ones((4, 3)))
