"""A knot keeps the network's function and moves each base weight by exactly its delta."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from cola_opt import ResidualLowRankOptimizer
from cola_opt.llm.lora import LoraSettings, inject_lora, lora_sites


def tiny_opt():
    cfg = OPTConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                    max_position_embeddings=64, word_embed_proj_dim=32, dropout=0.0)
    return OPTForCausalLM(cfg)


def tiny_llama():
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def _nonzero_links(sites, generator):
    with torch.no_grad():
        for s in sites:
            s.lora_B.copy_(torch.randn(s.lora_B.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("build", [tiny_opt, tiny_llama], ids=["opt", "llama"])
def test_knot_preserves_function_and_merges_exact_delta(build):
    torch.manual_seed(0)
    r = 4
    model = inject_lora(build(), LoraSettings(r=r, lora_alpha=8, lora_dropout=0.1))
    sites = lora_sites(model)
    assert len(sites) == 4  # q_proj and v_proj in 2 layers
    chain = ResidualLowRankOptimizer(sites, lr=1e-2, knot_steps=[1, 2, 3])
    ids = torch.randint(0, 128, (2, 10))
    w0 = [s.weight.detach().clone() for s in sites]
    g = torch.Generator().manual_seed(1)
    for k in range(1, 4):
        _nonzero_links(sites, g)
        # one real optimizer step so that the inner optimizer has state to reset
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        chain.optimizer.step()  # stepped directly: the knot below is tied by hand
        chain.zero_grad()
        assert any(len(chain.optimizer.state[p]) > 0 for p in chain.factor_parameters())
        model.eval()
        with torch.no_grad():
            before = model(input_ids=ids).logits
        deltas = [s.delta() for s in sites]
        w_before = [s.weight.detach().clone() for s in sites]
        assert max(float(d.abs().max()) for d in deltas) > 1e-3  # the test can fail
        chain.tie_knot()
        with torch.no_grad():
            after = model(input_ids=ids).logits
        torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
        for s, wb, d in zip(sites, w_before, deltas):
            torch.testing.assert_close(s.weight, wb + d, atol=0, rtol=0)
            assert float(s.lora_B.abs().max()) == 0.0
            assert float(s.lora_A.abs().max()) > 0.0
        for p in chain.factor_parameters():
            assert len(chain.optimizer.state.get(p, {})) == 0
        assert chain.link == k
        for s, w in zip(sites, w0):
            sv = torch.linalg.svdvals((s.weight - w).double())
            assert int((sv > 1e-6 * sv[0]).sum()) <= k * r
        assert [rec.link for rec in chain.knots] == list(range(k))


def test_chain_rank_grows_past_r():
    """Three knots of rank-2 links give a residual of rank above 2 (high rank from low-rank links)."""
    torch.manual_seed(0)
    model = inject_lora(tiny_llama(), LoraSettings(r=2, lora_alpha=4))
    sites = lora_sites(model)
    chain = ResidualLowRankOptimizer(sites, lr=1e-2)
    w0 = sites[0].weight.detach().clone()
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        _nonzero_links(sites, g)
        chain.tie_knot()
    sv = torch.linalg.svdvals((sites[0].weight - w0).double())
    assert int((sv > 1e-6 * sv[0]).sum()) == 6


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64, tie_word_embeddings=False,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg)


# issue 9, item 4: every PEFT LoRA layer type the chain meets is a site, and a knot merges it exactly
@pytest.mark.parametrize("build,targets,kinds", [
    (tiny_llama, ["embed_tokens", "q_proj", "v_proj"], {"Embedding": 1, "Linear": 4}),
    (tiny_gpt2, ["wte", "c_attn", "c_fc"], {"Embedding": 1, "Conv1D": 4}),
], ids=["llama-embedding", "gpt2-conv1d-embedding"])
def test_embedding_and_conv1d_links_are_sites_and_knots_merge_them_exactly(build, targets, kinds):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(build(), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    sites = lora_sites(model)
    found = {}
    for s in sites:
        k = type(s.layer.get_base_layer()).__name__
        found[k] = found.get(k, 0) + 1
    assert found == kinds  # nothing skipped
    chain = ResidualLowRankOptimizer(sites, lr=1e-2, knot_steps=[1, 2])
    ids = torch.randint(0, 128, (2, 10))
    g = torch.Generator().manual_seed(3)
    model.eval()
    for _ in range(2):
        with torch.no_grad():
            for s in sites:  # a trained-looking link on every site (PEFT starts lora.Embedding at A = 0)
                s.lora_B.copy_(torch.randn(s.lora_B.shape, generator=g) * 0.1)
                s.lora_A.copy_(torch.randn(s.lora_A.shape, generator=g) * 0.1)
            before = model(input_ids=ids).logits
            deltas = [s.delta() for s in sites]
            w_before = [s.weight.detach().clone() for s in sites]
        assert min(float(d.abs().max()) for d in deltas) > 1e-3
        chain.tie_knot()
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids).logits, before, atol=1e-5, rtol=0)
            with model.disable_adapter():  # the base alone now carries every link
                torch.testing.assert_close(model(input_ids=ids).logits, before, atol=1e-5, rtol=0)
        for s, wb, d in zip(sites, w_before, deltas):
            torch.testing.assert_close(s.weight, wb + d, atol=0, rtol=0)
            assert float(s.delta().abs().max()) == 0.0  # a fresh link
            if s.embedding:  # PEFT's start: A = 0, B standard normal
                assert float(s.lora_A.abs().max()) == 0.0 and 0.5 < float(s.lora_B.std()) < 1.5
            else:
                assert float(s.lora_B.abs().max()) == 0.0 and float(s.lora_A.abs().max()) > 0.0
