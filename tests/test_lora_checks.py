"""lora_sites refuses what the merge cannot carry; a rank change keeps rsLoRA's scaling."""

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from cola_opt import ResidualLowRankOptimizer
from cola_opt.llm.lora import lora_sites


def _llama(tied=False):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg)


def test_a_lora_weight_tied_to_another_parameter_is_refused():
    model = get_peft_model(_llama(tied=True), LoraConfig(r=2, target_modules=["lm_head"]))
    with pytest.raises(ValueError, match="tied to .*embed_tokens"):
        lora_sites(model)


def test_lora_bias_is_refused():
    cfg = OPTConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=4,
                    max_position_embeddings=64, word_embed_proj_dim=32)
    model = get_peft_model(OPTForCausalLM(cfg), LoraConfig(r=2, target_modules=["q_proj"], lora_bias=True))
    with pytest.raises(ValueError, match="lora_bias=True"):
        lora_sites(model)


def test_rank_change_keeps_rslora_scaling_and_the_function():
    model = get_peft_model(_llama(), LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj"]))
    sites = lora_sites(model)
    assert sites[0].scaling == pytest.approx(8 / math.sqrt(4))
    chain = ResidualLowRankOptimizer(sites, lr=1e-2, ranks=[4, 2], knot_steps=[1])
    with torch.no_grad():
        for s in sites:
            s.lora_B.normal_()
    ids = torch.randint(0, 128, (2, 8))
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
        chain.tie_knot()
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    assert [s.rank for s in sites] == [2, 2]
    assert all(s.scaling == pytest.approx(8 / math.sqrt(2)) for s in sites)  # rsLoRA: alpha / sqrt(r)
