"""50 knots on a bf16 (and fp16) base against a float64 reference W0 + sum(deltas).

Without the fp32 master every knot rounds ``W + Delta`` to the base dtype, and the
rounding errors add up (and a delta below half an ulp is lost outright, peft #1388,
#2502). With ``fp32_master=True`` the sum is kept in float32 and the stored weight is
that sum rounded once. ``pytest -s`` prints the drift figures recorded in docs/trainer.md.
"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cola_opt import ResidualLowRankOptimizer, TensorSite
from cola_opt.llm.lora import LoraSettings, inject_lora, lora_sites

KNOTS = 50
EPS32 = torch.finfo(torch.float32).eps


def _run_chain(sites, links):
    """Tie one knot per entry of ``links`` (a list, per knot, of (B, A) per site)."""
    chain = ResidualLowRankOptimizer(sites, lr=1e-3)
    with torch.no_grad():
        for factors in links:
            for s, (b, a) in zip(sites, factors):
                s.lora_B.copy_(b)
                s.lora_A.copy_(a)
            chain.tie_knot()
    return chain


def _links(shapes, rank, scale, seed=0):
    """Random factors whose deltas have entries of about ``scale``: near a bf16 ulp of W."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(KNOTS):
        out.append([(torch.randn(m, rank, generator=g) * scale**0.5 / rank**0.25,
                     torch.randn(rank, n, generator=g) * scale**0.5 / rank**0.25) for m, n in shapes])
    return out


def _reference(w0, factors, scaling):
    ref = w0.double()
    for b, a in factors:
        ref = ref + scaling * (b.double() @ a.double())
    return ref


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp32_master_keeps_fifty_knots_within_fp32_error(dtype):
    m, n, r = 64, 48, 4
    w0 = (torch.randn(m, n, generator=torch.Generator().manual_seed(1)) * 0.05).to(dtype)
    links = _links([(m, n)], r, 5e-4)
    ref = _reference(w0, [f[0] for f in links], 1.0)
    drift = {}
    for master in (False, True):
        site = TensorSite(w0.clone(), r, keep_initial=False, fp32_master=master)
        _run_chain([site], links)
        drift[master] = float((site.weight.double() - ref).abs().max())
        if master:
            kept = float((site.master.double() - ref).abs().max())
            # the master is W0 + sum(deltas) within fp32 rounding of each of the 50 sums
            assert kept <= KNOTS * EPS32 * float(ref.abs().max())
            # the stored weight is the master rounded once
            assert torch.equal(site.weight, site.master.to(dtype))
    half_ulp = float(ref.abs().max()) * torch.finfo(dtype).eps / 2
    print(f"\n{dtype}: max |W - (W0 + sum deltas)| after {KNOTS} knots: without master {drift[False]:.3e}, "
          f"with master {drift[True]:.3e} (stored, one rounding), master itself {kept:.3e}; "
          f"half an ulp at max|W| = {half_ulp:.3e}")
    assert drift[True] <= half_ulp * 1.01  # one rounding to the base dtype
    assert drift[False] > 4 * drift[True]  # many roundings add up
    assert drift[False] > 1e3 * kept  # and the master is orders of magnitude closer


def test_fp32_master_through_lora_sites_on_a_bf16_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    errors = {}
    for master in (False, True):
        torch.manual_seed(0)
        model = inject_lora(LlamaForCausalLM(cfg).to(torch.bfloat16), LoraSettings(r=4, lora_alpha=8))
        sites = lora_sites(model, fp32_master=master)
        assert all((s.master is not None) == master for s in sites)
        w0 = [s.weight.detach().clone() for s in sites]
        links = _links([s.shape for s in sites], 4, 2e-4, seed=3)
        _run_chain(sites, links)
        errors[master] = max(
            float((s.weight.double() - _reference(w, [f[i] for f in links], s.scaling)).abs().max())
            for i, (s, w) in enumerate(zip(sites, w0))
        )
        if master:
            kept = max(
                float((s.master.double() - _reference(w, [f[i] for f in links], s.scaling)).abs().max())
                for i, (s, w) in enumerate(zip(sites, w0))
            )
    print(f"\ntiny bf16 Llama, {KNOTS} knots: max drift without master {errors[False]:.3e}, "
          f"with master {errors[True]:.3e} (stored), {kept:.3e} (master)")
    assert kept < 1e-6
    assert errors[False] > 4 * errors[True]
