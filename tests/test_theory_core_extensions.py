"""The small core extensions the theory loop uses: set_factors, merge_low_rank, next_rank, checks."""

import pytest
import torch

from cola_opt.chain.optimizer import NonFiniteUpdateError, ResidualLowRankOptimizer
from cola_opt.chain.sites import TensorSite
from cola_opt.fw.oracles import FrozenFactors

torch.set_num_threads(1)


@pytest.mark.parametrize("alpha", [None, 8.0])
def test_set_factors_and_merge_low_rank(alpha):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(7, 5, generator=g)
    W0 = W.clone()
    site = TensorSite(W, 2, lora_alpha=alpha, generator=g)
    chain = ResidualLowRankOptimizer([site], FrozenFactors(site.factors()))
    B, A = torch.randn(7, 3, generator=g), torch.randn(3, 5, generator=g)
    site.set_factors(B, A)
    assert site.rank == 3
    torch.testing.assert_close(site.delta(), B @ A, rtol=1e-6, atol=1e-6)
    before = site.weight.clone()
    rec = chain.merge_low_rank([(B, A)], step_size=0.5, shrink=1.0, next_rank=2)
    expected = before + 0.5 * ((B @ A) - (before - W0))
    torch.testing.assert_close(site.weight, expected, rtol=0, atol=1e-6)
    assert site.rank == 2 and rec.rank == 3 and rec.next_rank == 2 and float(site.lora_B.detach().abs().max()) == 0.0
    with pytest.raises(ValueError, match="do not form"):
        chain.merge_low_rank([(B, A.t())], step_size=1.0, shrink=0.0)
    with pytest.raises(ValueError, match="1 sites"):
        chain.merge_low_rank([(B, A), (B, A)], step_size=1.0, shrink=0.0)


def test_non_finite_and_overflowing_updates_are_refused_and_change_nothing():
    W = torch.ones(4, 3)
    site = TensorSite(W, 1)
    chain = ResidualLowRankOptimizer([site], FrozenFactors(site.factors()))
    before = site.weight.clone()
    for bad in (float("nan"), float("inf")):
        with pytest.raises(NonFiniteUpdateError, match="not finite"):
            chain.merge_low_rank([(torch.full((4, 1), bad), torch.ones(1, 3))], step_size=1.0, shrink=0.0)
        assert torch.equal(site.weight, before) and chain.link == 0
    with pytest.raises(NonFiniteUpdateError, match="overflow"):
        site.weight.fill_(3e38)
        chain.merge_low_rank([(torch.full((4, 1), 3e38), torch.ones(1, 3))], step_size=1.0, shrink=0.0)
    assert float(site.weight.max()) == pytest.approx(3e38) and chain.link == 0


def test_blockwise_residual_subtraction_is_bit_identical():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(3000, 700, generator=g)  # several row blocks
    site = TensorSite(W, 1)
    W.add_(torch.randn(3000, 700, generator=g))
    u = torch.randn(3000, 700, generator=g)
    assert torch.equal(site.subtract_residual_(u.clone(), 0.7), u.clone().sub_(site.residual(), alpha=0.7))
    assert site.merged_is_finite(u)
