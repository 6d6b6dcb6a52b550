"""Optimizer-state reset policies at a knot, and the LR schedules of a chain."""

import math

import pytest
import torch

from cola_opt import ResidualLowRankOptimizer, TensorSite
from cola_opt.chain.lr_schedules import (
    jagged_cosine_factor,
    jagged_cosine_schedule,
)
from cola_opt.chain.reset import PruneState, make_reset_policy


def _chain(reset, m=80, n=60, r=16):
    """A chain with Adam state over its factors and over one extra (non-factor) Parameter."""
    g = torch.Generator().manual_seed(0)
    site = TensorSite(torch.randn(m, n, generator=g), r, generator=g)
    extra = torch.nn.Parameter(torch.randn(7, generator=g))
    opt = torch.optim.AdamW([*site.factors(), extra], lr=1e-2)
    chain = ResidualLowRankOptimizer([site], opt, reset=reset, knot_steps=[2])
    with torch.no_grad():
        site.lora_B.normal_(generator=g)
    returned = []
    for _ in range(2):
        (site.effective_weight().pow(3).sum() + extra.pow(2).sum()).backward()
        returned.append(chain.step())  # the second step ties the knot
        chain.zero_grad()
    assert returned[0] is None and returned[1] is chain.knots[-1]  # step() returns the knot it tied
    assert (returned[1].link, returned[1].step) == (0, 2)
    return chain, site, extra


def test_full_reset_empties_the_factor_state_looked_up_by_parameter():
    chain, site, extra = _chain("full")
    assert len(chain.knots) == 1
    for p in site.factors():
        assert len(chain.optimizer.state.get(p, {})) == 0
    # the non-factor parameter keeps its state: the reset acts on the factors only
    assert int(chain.optimizer.state[extra]["step"]) == 2
    assert float(chain.optimizer.state[extra]["exp_avg"].abs().max()) > 0
    # what state_dict() shows, as a user would check it: only the extra parameter has state
    assert list(chain.optimizer.state_dict()["state"].keys()) == [2]


@pytest.mark.parametrize("ratio", [0.25, 0.9])
def test_magnitude_prune_zeros_the_stated_fraction_of_smallest_entries(ratio):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(50, 40))
    opt = torch.optim.AdamW([p])
    exp_avg = torch.randn(50, 40)
    exp_avg_sq = torch.rand(50, 40) + 0.1
    opt.state[p] = {"step": torch.tensor(3.0), "exp_avg": exp_avg.clone(), "exp_avg_sq": exp_avg_sq.clone()}
    PruneState(ratio, "magnitude")(opt, [p])
    for key, before in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        after = opt.state[p][key]
        zeroed = after == 0
        assert int(zeroed.sum()) == int(ratio * before.numel())
        # the zeroed entries are exactly the smallest by magnitude; the others are untouched
        assert float(before.abs()[zeroed].max()) < float(before.abs()[~zeroed].min())
        assert torch.equal(after[~zeroed], before[~zeroed])
    assert float(opt.state[p]["step"]) == 3.0


def test_random_prune_zeros_the_stated_fraction_at_random():
    p = torch.nn.Parameter(torch.zeros(200, 100))
    opt = torch.optim.AdamW([p])
    before = torch.rand(200, 100) + 0.5  # no zeros, so every zero below was pruned
    opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": before.clone()}
    ratio = 0.3
    PruneState(ratio, "random", generator=torch.Generator().manual_seed(1))(opt, [p])
    zeroed = opt.state[p]["exp_avg"] == 0
    n = before.numel()
    sd = math.sqrt(n * ratio * (1 - ratio))
    assert abs(int(zeroed.sum()) - ratio * n) < 5 * sd  # Binomial(n, 0.3): 5 sigma
    # not by magnitude: the pruned entries span the whole range of values
    assert float(before[zeroed].max()) > 1.4 and float(before[zeroed].min()) < 0.6
    assert torch.equal(opt.state[p]["exp_avg"][~zeroed], before[~zeroed])


def test_prune_through_a_knot_acts_on_the_factor_state():
    chain, site, extra = _chain("prune:0.5")
    for p in site.factors():
        st = chain.optimizer.state[p]
        for key in ("exp_avg", "exp_avg_sq"):
            frac = float((st[key] == 0).float().mean())
            assert frac >= 0.5, (key, frac)
        assert int(st["step"]) == 2
    assert float((chain.optimizer.state[extra]["exp_avg"] == 0).float().mean()) == 0.0


def test_keep_keeps_the_state():
    chain, site, extra = _chain("keep")
    for p in site.factors():
        assert float(chain.optimizer.state[p]["exp_avg_sq"].abs().max()) > 0


@pytest.mark.parametrize("spec", ["prune", "prune:x", "prune:1.5", "prune:0.5:sideways", "reset"])
def test_bad_reset_specs_are_refused(spec):
    with pytest.raises(ValueError, match="prune|reset"):
        make_reset_policy(spec)


# ------------------------------------------------------------------ LR schedules
def test_linear_schedule_warms_up_then_decays_to_zero_ignoring_knots():
    """COLA's global linear LR is transformers' schedule, as the trainer uses it."""
    from transformers import get_linear_schedule_with_warmup

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = get_linear_schedule_with_warmup(opt, 2, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 1.0, 2.0, 1.75, 1.5, 1.25, 1.0, 0.75, 0.5, 0.25])
    assert opt.param_groups[0]["lr"] == 0.0
    assert sched.lr_lambdas[0](20) == 0.0


def test_jagged_cosine_rewarms_after_each_knot_and_rejoins_the_envelope():
    total, knots, w_r, w, m = 100, (30, 60), 5, 10, 0.1
    f = [jagged_cosine_factor(t, total_steps=total, knot_steps=knots, restart_warmup_steps=w_r,
                              warmup_steps=w, min_lr_ratio=m) for t in range(total)]
    env = [m + (1 - m) * 0.5 * (1 + math.cos(math.pi * max(0, t - w) / (total - w))) for t in range(total)]
    assert f[:w] == pytest.approx([t / w for t in range(w)])
    for s in knots:
        assert f[s] == 0.0  # the first step of a link
        assert f[s + 2] == pytest.approx(2 / w_r * env[s + w_r])
        assert f[s + w_r] == pytest.approx(env[s + w_r])  # the ramp ends on the envelope
        assert f[s - 1] == pytest.approx(env[s - 1])
    outside = [t for t in range(w, total) if not any(0 <= t - s < w_r for s in knots)]
    assert [f[t] for t in outside] == pytest.approx([env[t] for t in outside])
    assert min(f[w:]) == 0.0 and f[-1] == pytest.approx(m, abs=1e-3)


def test_jagged_cosine_drives_the_chain_optimizer():
    site = TensorSite(torch.randn(6, 5), 2)
    chain = ResidualLowRankOptimizer([site], lr=1.0, knot_steps=[4])
    sched = jagged_cosine_schedule(chain.optimizer, 8, chain.knot_steps, restart_warmup_steps=2, min_lr_ratio=0.0)
    lrs = []
    for _ in range(8):
        lrs.append(chain.optimizer.param_groups[0]["lr"])
        site.effective_weight().sum().backward()
        chain.step()
        sched.step()
        chain.zero_grad()
    assert lrs[4] == 0.0 and lrs[5] > 0.0 and lrs[3] > lrs[5]
    assert chain.knots[0].lr == [pytest.approx(lrs[3])]  # the LR of the link's last step


@pytest.mark.parametrize("kwargs, match", [
    ({"total_steps": 0}, "total_steps"),
    ({"warmup_steps": 10}, "warmup_steps"),
    ({"knot_steps": (5, 3)}, "increasing"),
    ({"knot_steps": (10,)}, "out of range"),
    ({"restart_warmup_steps": -1}, "restart_warmup_steps"),
    ({"restart_warmup_steps": 4, "knot_steps": (5, 8)}, "does not fit"),
    ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
])
def test_jagged_cosine_rejects_bad_settings(kwargs, match):
    args = {"total_steps": 10, "knot_steps": (5,), "restart_warmup_steps": 2, **kwargs}
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=match):
        jagged_cosine_schedule(opt, **args)
