"""Export: the merged model loads with from_pretrained, the links rebuild it as PEFT adapters,
and chain.json records the knots."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from cola_opt import ResidualLowRankOptimizer
from cola_opt.llm.export import CHAIN_RECORD_FILE, EXPORT_MARKER, LinkAdapterWriter, export_merged
from cola_opt.llm.lora import LoraSettings, inject_lora, lora_sites
from cola_opt.chain.lr_schedules import linear_schedule


def _tiny_llama():
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def test_export_merged_model_links_and_record(tmp_path):
    torch.manual_seed(0)
    base = _tiny_llama()
    base.save_pretrained(tmp_path / "base")
    model = inject_lora(base, LoraSettings(r=4, lora_alpha=8, lora_dropout=0.1))
    chain = ResidualLowRankOptimizer(lora_sites(model), lr=5e-2, knot_steps=[2, 4], ranks=[4, 4, 2])
    writer = LinkAdapterWriter(chain, model, tmp_path / "links")
    sched = linear_schedule(chain.optimizer, total_steps=6)
    data = torch.randint(0, 128, (6, 4, 12))
    model.train()
    for batch in data:
        model(input_ids=batch, labels=batch).loss.backward()
        chain.step()
        sched.step()
        chain.zero_grad()
    ids = torch.randint(0, 128, (2, 12))
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    assert float(chain.sites[0].lora_B.abs().max()) > 0  # the last link is live: export must merge it

    merged = export_merged(chain, model, tmp_path / "out", extra={"task": "toy"})
    assert not any("lora" in n for n, _ in merged.named_parameters())
    listing = ["chain.json", "cola_opt_export.json", "config.json", "generation_config.json", "model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == listing
    marker = json.loads((tmp_path / "out" / EXPORT_MARKER).read_text())
    assert marker["tool"] == "cola_opt" and marker["kind"] == "merged" and marker["entries"] == listing
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left over
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # still tied

    record = json.loads((tmp_path / "out" / CHAIN_RECORD_FILE).read_text())
    assert record["knot_steps"] == [2, 4]
    assert [k["step"] for k in record["knots"]] == [2, 4, 6]  # 6: the export's final merge
    assert [k["rank"] for k in record["knots"]] == [4, 4, 2]
    assert record["ranks"] == [4, 4, 2] and record["links_done"] == 3
    assert record["lr"]["initial"] == [5e-2]
    assert [k["lr"][0] for k in record["knots"]] == pytest.approx([5e-2 * 5 / 6, 5e-2 * 3 / 6, 0.0])  # last steps
    assert record["extra"] == {"task": "toy"} and len(record["sites"]) == 4

    # each link as a PEFT adapter: merging them in order onto the original base rebuilds the model
    assert [p.name for p in writer.written] == ["link-00", "link-01", "link-02"]
    assert json.loads((tmp_path / "links" / "link-02" / "adapter_config.json").read_text())["r"] == 2
    rebuilt = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    for path in writer.written:
        rebuilt = PeftModel.from_pretrained(rebuilt, path).merge_and_unload()
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
