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
