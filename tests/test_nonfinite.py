"""A NaN or inf loss, gradient or delta never reaches the base weights."""

import pytest
import torch

from cola_opt import NonFiniteUpdateError, ResidualLowRankOptimizer, TensorSite
from cola_opt.llm.guard import NonFiniteError, NonFiniteGuard


# ------------------------------------------------------------------ the guard
def _model_and_opt():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, opt


def _backward(model, scale=1.0):
    loss = model(torch.randn(5, 4)).pow(2).mean() * scale
    loss.backward()
    return loss


def test_finite_step_goes_ahead_and_keeps_gradients():
    model, _ = _model_and_opt()
    guard = NonFiniteGuard("skip")
    loss = _backward(model)
    grads = [p.grad.clone() for p in model.parameters()]
    assert guard.check(loss, model.named_parameters(), step=1)
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)
    assert guard.skipped == 0


@pytest.mark.parametrize("bad", ["loss_nan", "loss_inf", "grad_nan", "grad_inf"])
def test_skip_leaves_weights_and_optimizer_state_unchanged(bad):
    model, opt = _model_and_opt()
    guard = NonFiniteGuard("skip")
    _backward(model)
    assert guard.check(None, model.parameters())
    opt.step()  # a real step first, so there is optimizer state to protect
    opt.zero_grad()
    weights = [p.detach().clone() for p in model.parameters()]
    state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()}
    loss = _backward(model)
    if bad.startswith("loss"):
        loss = loss * (float("nan") if bad == "loss_nan" else float("inf"))
    else:
        model[1].weight.grad[0, 1] = float("nan") if bad == "grad_nan" else float("inf")
    assert guard.check(loss, model.named_parameters(), step=2) is False
    assert all(p.grad is None for p in model.parameters())
    opt.step()  # what a loop that ignores the verdict would do: still a no-op
    for p, w in zip(model.parameters(), weights):
        assert torch.equal(p, w)
        for k, v in opt.state[p].items():
            assert torch.equal(v, state[id(p)][k]), k
    assert (guard.skipped, guard.consecutive) == (1, 1)


def test_stop_raises_naming_the_gradient_and_step():
    model, _ = _model_and_opt()
    guard = NonFiniteGuard("stop")
    loss = _backward(model)
    model[0].bias.grad[1] = float("inf")
    with pytest.raises(NonFiniteError, match=r"gradient of 0\.bias at step 7") as info:
        guard.check(loss, model.named_parameters(), step=7)
    assert info.value.step == 7 and info.value.what == "gradient of 0.bias"
    assert model[0].bias.grad is not None  # left for the caller to inspect


def test_stop_on_nan_loss_names_the_loss():
    model, _ = _model_and_opt()
    loss = _backward(model) * float("nan")
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        NonFiniteGuard("stop").check(loss, model.parameters(), step=3)


def test_consecutive_skips_stop_a_diverged_run():
    model, _ = _model_and_opt()
    guard = NonFiniteGuard("skip", max_consecutive_skips=2)
    assert guard.check(float("nan"), model.parameters()) is False
    _backward(model)
    assert guard.check(1.0, model.parameters())  # a finite step resets the count
    assert guard.consecutive == 0
    assert guard.check(float("inf"), model.parameters()) is False
    with pytest.raises(NonFiniteError, match="2 steps in a row"):
        guard.check(float("nan"), model.parameters())
    assert guard.skipped == 3


@pytest.mark.parametrize("kwargs", [{"policy": "ignore"}, {"max_consecutive_skips": 0}, {"max_consecutive_skips": 1.5}])
def test_guard_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="ignore|max_consecutive_skips"):
        NonFiniteGuard(**kwargs)


# ------------------------------------------------------------------ the knot
def _chain(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    sites = [TensorSite(torch.randn(6, 5, generator=g).to(dtype), 2, name=f"W{i}", generator=g) for i in range(3)]
    chain = ResidualLowRankOptimizer(sites, lr=1e-2, knot_steps=[1])
    for s in sites:
        with torch.no_grad():
            s.lora_B.copy_(torch.randn(s.lora_B.shape, generator=g))
        s.effective_weight().sum().backward()
    chain.optimizer.step()  # optimizer state exists
    chain.zero_grad()
    return chain, sites


def _snapshot(chain, sites):
    return (
        [s.weight.clone() for s in sites],
        [p.detach().clone() for p in chain.factor_parameters()],
        [{k: v.clone() for k, v in chain.optimizer.state[p].items()} for p in chain.factor_parameters()],
    )


def _assert_unchanged(chain, sites, snap):
    weights, factors, states = snap
    for s, w in zip(sites, weights):
        assert torch.equal(s.weight, w), s.name
    for p, f in zip(chain.factor_parameters(), factors):
        torch.testing.assert_close(p.detach(), f, rtol=0, atol=0, equal_nan=True)
    for p, st in zip(chain.factor_parameters(), states):
        assert st and all(torch.equal(chain.optimizer.state[p][k], v) for k, v in st.items())
    assert chain.link == 0 and chain.knots == []


@pytest.mark.parametrize("where", ["nan_in_B_last_site", "inf_in_A_first_site"])
def test_knot_never_merges_a_nonfinite_delta(where):
    chain, sites = _chain()
    with torch.no_grad():
        if where == "nan_in_B_last_site":
            sites[2].lora_B[3, 1] = float("nan")
        else:
            sites[0].lora_A[0, 4] = float("inf")
    snap = _snapshot(chain, sites)
    bad = "W2" if where == "nan_in_B_last_site" else "W0"
    with pytest.raises(NonFiniteUpdateError, match=f"site '{bad}' is not finite"):
        chain.step()  # the step itself has no gradients; the scheduled knot at step 1 refuses
    _assert_unchanged(chain, sites, snap)


@pytest.mark.parametrize("dtype, big, delta", [
    (torch.float16, 60000.0, 10000.0),  # 70000 > fp16 max 65504
    (torch.bfloat16, 3.3895e38, 1e36),  # finite in fp32 (< 3.4028e38), inf once rounded to bf16
])
def test_knot_refuses_an_overflow_on_the_cast(dtype, big, delta):
    chain, sites = _chain(dtype)
    with torch.no_grad():
        sites[1].weight[2, 3] = big
        sites[1].lora_B.zero_()
        sites[1].lora_A.zero_()
        sites[1].lora_B[2, 0] = 1.0
        sites[1].lora_A[0, 3] = delta  # scaling 1: delta[2, 3] = delta
    assert torch.isfinite(sites[1].weight.float() + sites[1].delta()).all()  # finite in fp32
    snap = _snapshot(chain, sites)
    with pytest.raises(NonFiniteUpdateError, match=f"site 'W1' would overflow {dtype}"):
        chain.tie_knot()
    _assert_unchanged(chain, sites, snap)


# ------------------------------------------------------------------ evaluation (issue 9, item 6)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_an_evaluation_with_non_finite_scores_is_an_error_not_an_accuracy(value):
    from conftest import tiny_llama

    from cola_opt.llm.scoring import Encoded, evaluate

    model = tiny_llama(128)
    data = [Encoded((3, 4, 5, 6), ((7,), (8,)), i % 2) for i in range(6)]
    ok = evaluate(model, data, pad_id=0)
    assert ok["n"] == 6 and 0.0 <= ok["accuracy"] <= 1.0  # finite weights: an accuracy
    with torch.no_grad():
        model.lm_head.weight[7, 0] = value  # one weight: the softmax, so every score, is no longer finite
    with pytest.raises(NonFiniteError, match=r"evaluation: 12 of the 12 candidate scores of a batch are NaN or inf"):
        evaluate(model, data, pad_id=0)
    assert model.training  # left as it was (tiny_llama builds in train mode)
