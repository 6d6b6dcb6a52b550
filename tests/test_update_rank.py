"""The rank of W - W0, measured from saved links and from model folders, against the merged weights."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cola_opt import ResidualLowRankOptimizer
from cola_opt.llm.export import LinkAdapterWriter, export_merged
from cola_opt.llm.lora import LoraSettings, inject_lora, lora_sites
from cola_opt.llm.update_rank import link_ranks, rank_summary, weight_update_ranks


def test_rank_summary_of_known_spectra():
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    V, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    s = np.array([10.0, 5.0, 1.0, 0.2, 0.15, 0.09, 0, 0, 0, 0, 0, 0])  # 0.09 < 1% of 10
    X = U[:, :12] @ np.diag(s) @ V.T
    r = rank_summary(X)
    assert r.numerical_rank == 5
    assert r.stable_rank == pytest.approx((s**2).sum() / 100, rel=1e-9)
    assert r.top == pytest.approx(10.0) and r.frobenius == pytest.approx(np.sqrt((s**2).sum()))
    assert rank_summary(X, rel_tol=0.15).numerical_rank == 2
    assert rank_summary(np.zeros((3, 4))).numerical_rank == 0
    with pytest.raises(ValueError, match="2-D"):
        rank_summary(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        rank_summary(np.full((2, 2), np.nan))


def _trained_chain(tmp_path, knots=(3, 6), ranks=(2, 2, 2), steps=9):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    base = LlamaForCausalLM(cfg)
    base.save_pretrained(tmp_path / "base")
    w0 = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = inject_lora(base, LoraSettings(r=ranks[0], lora_alpha=2 * ranks[0]))
    chain = ResidualLowRankOptimizer(lora_sites(model), lr=5e-2, knot_steps=list(knots), ranks=list(ranks))
    LinkAdapterWriter(chain, model, tmp_path / "links")
    data = torch.randint(0, 128, (steps, 4, 12))
    for batch in data:
        model(input_ids=batch, labels=batch).loss.backward()
        chain.step()
        chain.zero_grad()
    return model, chain, w0


def test_link_ranks_grow_across_links_and_match_the_merged_weights(tmp_path):
    model, chain, w0 = _trained_chain(tmp_path)
    export_merged(chain, model, tmp_path / "merged")  # saves the last link through the hook, then merges it
    ranks = link_ranks(tmp_path / "links")
    assert len(ranks) == 4  # q_proj and v_proj of 2 layers
    for name, per_link in ranks.items():
        assert [r.numerical_rank for r in per_link] == [2, 4, 6], name  # k links of rank 2: rank 2k here
    # the summed deltas are W - W0 of the merged export
    merged = weight_update_ranks(tmp_path / "base", tmp_path / "merged", ("q_proj", "v_proj"))
    assert sorted(merged) == sorted(ranks)
    for name in ranks:
        assert merged[name].numerical_rank == ranks[name][-1].numerical_rank
        assert merged[name].frobenius == pytest.approx(ranks[name][-1].frobenius, rel=1e-4)
        assert merged[name].top == pytest.approx(ranks[name][-1].top, rel=1e-4)
    untouched = weight_update_ranks(tmp_path / "base", tmp_path / "merged", ("k_proj",))
    assert all(r.numerical_rank == 0 for r in untouched.values())
    assert w0  # the base was saved before training


def test_link_ranks_refuses_a_gap_and_an_empty_folder(tmp_path):
    model, chain, _ = _trained_chain(tmp_path, knots=(3,), ranks=(2, 2), steps=4)
    with pytest.raises(FileNotFoundError, match="no link-NN"):
        link_ranks(tmp_path / "base")
    (tmp_path / "links" / "link-00").rename(tmp_path / "links" / "link-05")
    with pytest.raises(ValueError, match="not link-00"):
        link_ranks(tmp_path / "links")


def _finetune_ranks(tiny_model_dir, tmp_path, method, **kw):
    from cola_opt.llm.config import FinetuneConfig
    from cola_opt.llm.trainer import finetune

    cfg = FinetuneConfig(task="wsc", model=str(tiny_model_dir), method=method, n_train=16, n_dev=0, n_test=4,
                         epochs=1, batch_size=2, lr=5e-2, rank=2, lora_alpha=4, autocast="none", progress=False,
                         output_dir=str(tmp_path / "runs"), update_rank=True,
                         export_dir=str(tmp_path / "export"), **kw)
    return cfg, finetune(cfg)


def test_finetune_records_the_rank_of_each_link_and_it_matches_the_export(tiny_model_dir, tmp_path, super_glue_dir):
    cfg, r = _finetune_ranks(tiny_model_dir, tmp_path, "cola", knot_steps=(3, 6))
    recs = r["update_rank"]
    assert [x["link"] for x in recs] == [0, 1, 2] and [x["step"] for x in recs] == [3, 6, 8]
    grown = 0
    for name in recs[0]["sites"]:
        ranks = [x["sites"][name]["numerical_rank"] for x in recs]
        assert ranks[0] == 2 and all(r <= 2 * (k + 1) for k, r in enumerate(ranks)), ranks  # rank(X_k) <= k r
        grown += ranks[-1] > 2
    assert grown == len(recs[0]["sites"])  # every matrix went past one link's rank
    # the last record is W - W0 of the exported, merged model
    merged = weight_update_ranks(tiny_model_dir, tmp_path / "export", cfg.target_modules)
    assert sorted(merged) == sorted(recs[-1]["sites"])
    for name, s in merged.items():
        assert s.numerical_rank == recs[-1]["sites"][name]["numerical_rank"]
        assert s.frobenius == pytest.approx(recs[-1]["sites"][name]["frobenius"], rel=1e-4)


def test_full_finetuning_records_one_rank_at_the_end(tiny_model_dir, tmp_path, super_glue_dir):
    cfg, r = _finetune_ranks(tiny_model_dir, tmp_path, "full")
    (rec,) = r["update_rank"]
    merged = weight_update_ranks(tiny_model_dir, tmp_path / "export", cfg.target_modules)
    assert rec["step"] == 8 and sorted(rec["sites"]) == sorted(merged)
    for name, s in merged.items():
        assert s.numerical_rank == rec["sites"][name]["numerical_rank"] > 2  # full-rank updates, not rank 2
        assert s.frobenius == pytest.approx(rec["sites"][name]["frobenius"], rel=1e-4)


def test_update_rank_is_refused_with_checkpoints_and_without_training(tiny_model_dir, tmp_path):
    from cola_opt.llm.config import FinetuneConfig

    with pytest.raises(ValueError, match="update_rank with checkpoint_every=5"):
        FinetuneConfig(model=str(tiny_model_dir), update_rank=True, checkpoint_every=5).validate()
    with pytest.raises(ValueError, match="trains nothing"):
        FinetuneConfig(model=str(tiny_model_dir), method="zero-shot", update_rank=True).validate()
