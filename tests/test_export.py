"""Export: the merged model loads with from_pretrained, the links rebuild it as PEFT adapters,
and chain.json records the knots."""

import json
import re
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, get_linear_schedule_with_warmup

from cola_opt import ResidualLowRankOptimizer
from cola_opt.llm.export import (
    CHAIN_RECORD_FILE,
    EXPORT_MARKER,
    LinkAdapterWriter,
    check_export_target,
    export_full,
    export_merged,
    foreign_entries,
)
from cola_opt.llm.lora import LoraSettings, inject_lora, lora_sites


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
    sched = get_linear_schedule_with_warmup(chain.optimizer, 0, 6)
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
    assert record["step_size"] == [1.0, 1.0, 1.0] and record["shrink"] == 0.0  # COLA: gamma 1, no shrink, per link
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


def _train_embedding_chain(tmp_path, steps=4):
    """A bring-your-own PeftModel with LoRA on embed_tokens (lora.Embedding) and q_proj, trained through knots."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    base = LlamaForCausalLM(cfg)
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"]))
    chain = ResidualLowRankOptimizer(lora_sites(model), lr=5e-2, knot_steps=[2])
    writer = LinkAdapterWriter(chain, model, tmp_path / "links")
    data = torch.randint(0, 128, (steps, 4, 12))
    model.train()
    for batch in data:
        model(input_ids=batch, labels=batch).loss.backward()
        chain.step()
        chain.zero_grad()
    return model, chain, writer


def test_export_keeps_the_update_of_a_lora_embedding(tmp_path):
    """issue 9, item 4: unload() used to drop the embedding link (0.55 in logits); now every link is merged."""
    model, chain, writer = _train_embedding_chain(tmp_path)
    emb = [s for s in chain.sites if s.embedding]
    assert len(emb) == 1 and len(chain.sites) == 3
    assert float(emb[0].delta().abs().max()) > 1e-3  # the embedding's last link is live
    ids = torch.randint(0, 128, (2, 12))
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    merged = export_merged(chain, model, tmp_path / "out")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
    rebuilt = AutoModelForCausalLM.from_pretrained(tmp_path / "base")  # the links, merged in order by PEFT
    for path in writer.written:
        rebuilt = PeftModel.from_pretrained(rebuilt, path).merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(input_ids=ids).logits, expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ export safety (issue 9, item 1)
def _tree(root):
    """relative path -> bytes, for every file under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _small_chain(tmp_path):
    torch.manual_seed(0)
    model = inject_lora(_tiny_llama(), LoraSettings(r=2, lora_alpha=4))
    chain = ResidualLowRankOptimizer(lora_sites(model), lr=1e-2)
    with torch.no_grad():
        for s in chain.sites:
            s.lora_B.normal_()
    return model, chain


def test_export_refuses_a_folder_it_did_not_write_and_leaves_it_and_the_model_alone(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("my notes")
    (notes / "sub").mkdir()
    (notes / "sub" / "a.md").write_text("more")
    before = _tree(tmp_path)
    model, chain = _small_chain(tmp_path)
    weights = [s.weight.detach().clone() for s in chain.sites]
    with pytest.raises(ValueError, match=r"notes' already exists and is not an export of cola_opt: it holds 'sub', "
                                         r"'todo.txt', which the export would delete"):
        export_merged(chain, model, notes)
    assert _tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["notes"]
    assert chain.link == 0 and all(torch.equal(s.weight, w) for s, w in zip(chain.sites, weights))  # nothing merged


def test_an_earlier_export_is_replaced_but_not_once_a_user_added_a_file(tmp_path):
    out = tmp_path / "out"
    model, chain = _small_chain(tmp_path)
    export_merged(chain, model, out)
    first = _tree(out)
    model, chain = _small_chain(tmp_path)
    with torch.no_grad():
        chain.sites[0].lora_B.mul_(2)  # another model
    export_merged(chain, model, out)  # our own export: replaced
    assert _tree(out).keys() == first.keys() and _tree(out)["model.safetensors"] != first["model.safetensors"]
    (out / "my-eval.json").write_text("{}")
    model, chain = _small_chain(tmp_path)
    with pytest.raises(ValueError, match="it holds 'my-eval.json'"):
        export_merged(chain, model, out)
    assert (out / "my-eval.json").read_text() == "{}"


def test_export_full_writes_the_marker_and_is_replaceable(tmp_path):
    model = _tiny_llama()
    export_full(model, tmp_path / "full", extra={"method": "full"})
    marker = json.loads((tmp_path / "full" / EXPORT_MARKER).read_text())
    assert marker["kind"] == "full" and marker["extra"] == {"method": "full"}
    assert marker["entries"] == sorted(p.name for p in (tmp_path / "full").iterdir())
    assert foreign_entries(tmp_path / "full") == []
    export_full(model, tmp_path / "full")  # again: ours


def test_check_export_target_refuses_what_would_lose_data(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    run = out / "wsc_cola_s0"
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    cases = {
        "/": "is the file-system root",
        str(tmp_path / "home"): "is the home folder",
        str(out): "is the output folder",
        str(tmp_path): "is a parent of the output folder",
        str(run): "is the run folder",
        str(run / "checkpoint" / "x"): "lies in the run's checkpoint folder",
        str(tmp_path / "a-file"): "exists and is not a folder",
        str(tmp_path / "a-file" / "sub"): "cannot be created: .*a-file' is a file",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError, match=f"export_dir {re.escape(repr(path))} {message}"):
            check_export_target(path, "export_dir", output_dir=out, run_dir=run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "home"]  # nothing created
    for fine in (tmp_path / "new" / "deep", run / "export", tmp_path / "home" / "exports"):
        check_export_target(fine, "export_dir", output_dir=out, run_dir=run)


def test_check_export_target_refuses_a_place_it_cannot_write(tmp_path, monkeypatch):
    """Issue 9, item 1: the folder must be writable, checked before any work. The file modes are simulated
    (``os.access`` answers "no" for the read-only folders): root, which runs these tests here, ignores them."""
    import os

    out, ro, ro_links = tmp_path / "runs", tmp_path / "ro", tmp_path / "links"
    export_full(_tiny_llama(), ro / "export")  # an earlier export, replaceable where its parent is writable
    ro_links.mkdir()
    check_export_target(ro / "export", "export_dir", output_dir=out)
    check_export_target(ro_links, "export_links", output_dir=out, links=True)
    read_only = {ro.resolve(), ro_links.resolve()}
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p).resolve() in read_only
                        else real_access(p, mode, **kw))
    cases = [
        ((ro / "new" / "deep", "export_dir"), {}, f"cannot be created: {str(ro)!r} is not writable"),
        ((ro / "export", "export_dir"), {}, "is not writable"),  # swapped in its parent
        ((ro_links, "export_links"), {"links": True}, "is not writable"),  # written into
    ]
    for (path, option), kw, message in cases:
        with pytest.raises(ValueError, match=f"{option} {re.escape(repr(str(path)))} {re.escape(message)}"):
            check_export_target(path, option, output_dir=out, **kw)
    check_export_target(tmp_path / "elsewhere", "export_dir", output_dir=out)  # a writable place still passes
    assert not (ro / "new").exists() and not out.exists()

def test_what_counts_as_an_earlier_export(tmp_path):
    model, chain = _small_chain(tmp_path)
    LinkAdapterWriter(chain, model, tmp_path / "cmp-links" / "cola")
    chain.tie_knot()
    export_merged(chain, model, tmp_path / "cmp" / "cola")
    assert foreign_entries(tmp_path / "cmp") == []  # compare's folder: one export per method
    assert foreign_entries(tmp_path / "cmp-links") == []  # a folder of link adapters, no marker needed
    (tmp_path / "cmp" / "cola" / "x.txt").write_text("x")
    assert foreign_entries(tmp_path / "cmp") == ["cola/x.txt"]
    legacy = tmp_path / "legacy"  # an export written before the marker existed
    legacy.mkdir()
    (legacy / "chain.json").write_text(json.dumps({"format": "cola_opt.chain/1"}))
    (legacy / "model.safetensors").write_text("")
    assert foreign_entries(legacy) == []
    (tmp_path / "cmp-links" / "cola" / "link-00" / "notes.txt").write_text("mine")
    assert foreign_entries(tmp_path / "cmp-links") == ["cola/link-00"]


def test_a_failed_export_never_loses_a_finished_run(tiny_model_dir, super_glue_dir, tmp_path, monkeypatch):
    from cola_opt.llm import trainer
    from cola_opt.llm.checkpoint import find_checkpoint
    from cola_opt.llm.config import FinetuneConfig

    cfg = FinetuneConfig(model=str(tiny_model_dir), task="wsc", data_dir=str(super_glue_dir), n_train=8, n_dev=2,
                         n_test=4, max_steps=2, batch_size=4, method="lora", autocast="none", progress=False,
                         output_dir=str(tmp_path / "runs"), checkpoint_every=1, export_dir=str(tmp_path / "export"), threads=1)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer, "export_merged", disk_full)
    with pytest.raises(OSError, match="No space left"):
        trainer.finetune(cfg)
    run = tmp_path / "runs" / "wsc_lora_s0"
    saved = json.loads((run / "results.json").read_text())
    assert saved["test"]["n"] == 4 and len(saved["train_loss"]) == 2 and saved["export_dir"] is None
    assert find_checkpoint(run).name == "step-000002"  # kept: the export can still be done
    assert not (tmp_path / "export").exists()
    monkeypatch.undo()
    r = trainer.finetune(cfg)  # the same command again: resumes after the last step, trains nothing, exports
    assert r["resumed_from"] == [2] and r["train_loss"] == saved["train_loss"] and r["test"] == saved["test"]
    assert json.loads((run / "results.json").read_text())["export_dir"] == str(tmp_path / "export")
    assert (tmp_path / "export" / EXPORT_MARKER).is_file()
