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


# ------------------------------------------------------------------ issue 9, item 4: no LoRA layer skipped
def test_a_lora_layer_the_chain_cannot_merge_is_refused_by_name():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)
            self.head = torch.nn.Linear(8, 2)

    model = get_peft_model(Net(), LoraConfig(r=2, target_modules=["conv", "head"]))
    with pytest.raises(ValueError, match=r"LoRA layer 'base_model.model.conv' is a peft.tuners.lora.layer.Conv2d over "
                                         r"a torch.nn.modules.conv.Conv2d; COLA's chain merges LoRA on Linear, GPT-2 "
                                         r"Conv1D and Embedding layers only"):
        lora_sites(model)


def test_lora_on_a_parameter_is_refused_by_name():
    model = get_peft_model(_llama(), LoraConfig(r=2, target_modules=[], target_parameters=["mlp.up_proj.weight"]))
    with pytest.raises(ValueError, match=r"LoRA layer '.*layers.0.mlp.up_proj' is a peft.tuners.lora.layer.ParamWrapper"):
        lora_sites(model)


def test_embedding_targets_are_accepted_by_inject_lora():
    from cola_opt.llm.lora import LoraSettings, inject_lora

    model = inject_lora(_llama(), LoraSettings(r=4, target_modules=("embed_tokens", "q_proj")))
    sites = lora_sites(model)
    assert [s.name.rsplit(".", 1)[-1] for s in sites] == ["embed_tokens", "q_proj", "q_proj"]
    assert sites[0].embedding and sites[0].shape == (32, 128)  # (embedding_dim, num_embeddings)
    with pytest.raises(ValueError, match=r"LoRA rank r=64 is larger than layer 'model.embed_tokens' allows \(32x128\)"):
        inject_lora(_llama(), LoraSettings(r=64, target_modules=("embed_tokens",)))
    with pytest.raises(ValueError, match=r"target module 'model.norm' is a .*LlamaRMSNorm, which COLA cannot adapt"):
        inject_lora(_llama(), LoraSettings(r=2, target_modules=("norm",)))


# ------------------------------------------------------------------ issue 9, item 5: quantized bases
def _with_q_proj(model, make):
    """``model`` with every q_proj replaced by ``make(linear)``."""
    for layer in model.model.layers:
        layer.self_attn.q_proj = make(layer.self_attn.q_proj)
    return model


class Params4bit(torch.nn.Parameter):
    """Stands in for bitsandbytes' Params4bit: 4-bit codes packed two per uint8."""


class Linear4bit(torch.nn.Linear):
    """Stands in for bitsandbytes' Linear4bit: an nn.Linear whose weight is packed."""

    def __init__(self, linear):
        super().__init__(linear.in_features, linear.out_features, bias=False)
        self.weight = Params4bit(torch.zeros(linear.in_features * linear.out_features // 2, 1, dtype=torch.uint8),
                                 requires_grad=False)


def _int8(linear):
    linear.weight = torch.nn.Parameter(linear.weight.detach().round().to(torch.int8), requires_grad=False)
    return linear


def _float_params4bit(linear):
    """Params4bit before it is moved to a device is still float: its class gives it away."""
    cls = type("Params4bit", (torch.nn.Parameter,), {"__module__": "bitsandbytes.nn.modules"})
    linear.weight = cls(linear.weight.detach(), requires_grad=False)
    return linear


@pytest.mark.parametrize("make,what", [
    (_int8, r"weight dtype torch.int8\)"),
    (Linear4bit, r"weight dtype torch.uint8 \(test_lora_checks Params4bit\)"),
    (_float_params4bit, r"weight dtype torch.float32 \(bitsandbytes Params4bit\)"),
], ids=["int8 weight", "packed 4-bit", "float Params4bit"])
def test_a_quantized_base_is_refused_before_training_naming_the_layer_and_the_way_out(make, what):
    from cola_opt.llm.lora import LoraSettings, inject_lora

    with pytest.raises(ValueError, match=r"target module 'model.layers.0.self_attn.q_proj' is quantized \(.*" + what
                       + r".*dequantize the model first"):
        inject_lora(_with_q_proj(_llama(), make), LoraSettings(r=2))


def test_a_torch_ao_int8_model_is_called_quantized_not_a_linear_that_is_not_linear():
    from cola_opt.llm.lora import LoraSettings, inject_lora

    q = torch.ao.quantization.quantize_dynamic(_llama(), {torch.nn.Linear}, dtype=torch.qint8)
    with pytest.raises(ValueError, match=r"'model.layers.0.self_attn.q_proj' is quantized \(torch.ao.nn.quantized."
                                         r"dynamic.modules.linear.Linear, weight dtype torch.qint8\); .*dequantize"):
        inject_lora(q, LoraSettings(r=2))


def test_a_peft_model_over_a_quantized_base_is_refused_by_lora_sites():
    model = get_peft_model(_with_q_proj(_llama(), _int8), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match=r"LoRA layer '.*layers.0.self_attn.q_proj' \(peft.tuners.lora.layer.Linear\) "
                                         r"sits on a quantized base layer \(weight dtype torch.int8\); .*dequantize"):
        lora_sites(model)


def test_a_model_whose_config_declares_a_quantization_is_refused_from_its_config_alone(tmp_path):
    import json

    from cola_opt.llm.lora import LoraSettings, check_targets

    _llama().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"is quantized \(bitsandbytes 8-bit, per the quantization_config of its "
                                         r"config.json\); .*dequantize"):
        check_targets(str(tmp_path), LoraSettings(r=2))


@pytest.mark.parametrize("bits", [8, 4])
def test_real_bitsandbytes_bases_are_refused(bits, tmp_path):
    """With bitsandbytes installed (not a dependency; its CPU backend suffices)."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from cola_opt.llm.lora import LoraSettings, inject_lora

    _llama().save_pretrained(tmp_path)
    quant = BitsAndBytesConfig(load_in_8bit=bits == 8, load_in_4bit=bits == 4)
    load = lambda: AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quant, device_map="cpu")
    dtype = "int8" if bits == 8 else "uint8"
    with pytest.raises(ValueError, match=rf"q_proj' is quantized \(bitsandbytes.* weight dtype torch.{dtype}"):
        inject_lora(load(), LoraSettings(r=2))
    with pytest.raises(ValueError, match=rf"sits on a quantized base layer \(weight dtype torch.{dtype} \(bitsandbytes"):
        lora_sites(get_peft_model(load(), LoraConfig(r=2, target_modules=["q_proj"])))
