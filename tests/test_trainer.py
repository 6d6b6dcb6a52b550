"""The fine-tuning loop end to end on a tiny local model and the real WSC files."""

import json

import pytest
import torch

from cola_opt.llm.cli import main
from cola_opt.llm.compare import compare
from cola_opt.llm.config import FinetuneConfig
from cola_opt.llm.trainer import finetune


def _cfg(tiny_model_dir, super_glue_dir, tmp_path, **kw):
    base = dict(model=str(tiny_model_dir), task="wsc", data_dir=str(super_glue_dir), n_train=24, n_dev=8, n_test=16,
                epochs=2, batch_size=4, chain_length=3, lr=1e-3, autocast="none", output_dir=str(tmp_path),
                progress=False)
    base.update(kw)
    return FinetuneConfig(**base)


def test_compare_runs_all_methods_on_one_draw(tiny_model_dir, super_glue_dir, tmp_path, capsys):
    out = compare(_cfg(tiny_model_dir, super_glue_dir, tmp_path))
    table = capsys.readouterr().out
    assert "| zero-shot |" in table and "| lora | 1 |" in table and "| cola | 3 |" in table
    assert "majority class" in table
    r = out["methods"]
    assert r["lora"]["knot_steps"] == [] and r["lora"]["knots"] == []
    assert r["cola"]["total_steps"] == 12 and r["cola"]["knot_steps"] == [4, 8]
    assert [k["step"] for k in r["cola"]["knots"]] == [4, 8]
    assert all(k["seconds"] > 0 for k in r["cola"]["knots"])
    assert len(r["cola"]["train_loss"]) == 12 and all(map(lambda x: x == x, r["cola"]["train_loss"]))
    assert [h["epoch"] for h in r["cola"]["dev_history"]] == [1, 2]
    for m in ("zero-shot", "lora", "cola"):
        assert 0.0 <= r[m]["test"]["accuracy"] <= 1.0 and r[m]["test"]["n"] == 16
        saved = json.loads((tmp_path / f"wsc_{m}_s0" / "results.json").read_text())
        assert saved["test"] == r[m]["test"] and saved["config"]["method"] == m
    # before the first knot, LoRA and COLA with the same seed take identical steps
    assert r["lora"]["train_loss"][:4] == r["cola"]["train_loss"][:4]
    assert json.loads((tmp_path / "wsc_compare_s0.json").read_text())["majority"] == out["majority"]


def test_gradient_accumulation_counts_optimizer_steps(tiny_model_dir, super_glue_dir, tmp_path):
    r = finetune(_cfg(tiny_model_dir, super_glue_dir, tmp_path, batch_size=2, grad_accum=2, epochs=1,
                      chain_length=2))
    assert r["total_steps"] == 6 and r["knot_steps"] == [3]


@pytest.mark.parametrize("progress", [False, True])
def test_knot_and_epoch_lines_follow_progress(progress, tiny_model_dir, super_glue_dir, tmp_path, capsys):
    finetune(_cfg(tiny_model_dir, super_glue_dir, tmp_path, max_steps=4, knot_steps=(2,), progress=progress))
    printed = "".join(capsys.readouterr())
    assert ("knot 1 tied at step 2" in printed) == progress and ("dev accuracy" in printed) == progress


def test_explicit_knot_steps_and_max_steps(tiny_model_dir, super_glue_dir, tmp_path):
    r = finetune(_cfg(tiny_model_dir, super_glue_dir, tmp_path, max_steps=5, knot_steps=(1, 3)))
    assert r["total_steps"] == 5 and [k["step"] for k in r["knots"]] == [1, 3]
    assert len(r["train_loss"]) == 5


# ------------------------------------------------------------------ bad input: one clear error, no training
BAD = [
    ({"task": "nope"}, "unknown task 'nope'"),
    ({"data_dir": "/no/such/folder"}, "data directory '/no/such/folder'.*does not exist"),
    ({"target_modules": ("nothing_here",)}, r"target_modules \['nothing_here'\] match no module"),
    ({"rank": 0}, "rank r must be an integer >= 1, got 0"),
    ({"rank": -2}, "rank r must be an integer >= 1, got -2"),
    ({"rank": 64}, "rank r=64 is larger than layer"),
    ({"chain_length": 0}, "chain_length must be an integer >= 1, got 0"),
    ({"chain_length": 50}, "chain_length 50 needs at least 50 optimizer steps, but the run has 12"),
    ({"knot_steps": (8, 4)}, r"knot steps \[8, 4\] must be strictly increasing"),
    ({"knot_steps": (4, 12)}, "knot step 12 is out of range"),
    ({"knot_steps": (0,)}, "knot step 0 is out of range"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[m.split()[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_input_fails_before_training(change, message, tiny_model_dir, super_glue_dir, tmp_path, monkeypatch):
    cfg = _cfg(tiny_model_dir, super_glue_dir, tmp_path, **change)
    trained = []
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda *a, **k: trained.append(1))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        finetune(cfg)
    assert not trained
    assert not list(tmp_path.iterdir())  # no result written


def test_cli_reports_bad_input_in_one_line(tiny_model_dir, super_glue_dir, tmp_path, capsys):
    code = main(["compare", "--model", str(tiny_model_dir), "--data-dir", str(super_glue_dir), "--rank", "0",
                 "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["cola-opt: error: LoRA rank r must be an integer >= 1, got 0"]


def test_cli_help_lists_defaults_and_units(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    for text in ("--chain-length", "(default: 3)", "--lr", "(default: 0.0005)", "(examples)", "(optimizer steps",
                 "--target-modules", "(default: q_proj,v_proj)", "--checkpoint-every", "(optimizer steps; 0 = off)",
                 "--resume", "(default: auto)", "--nonfinite", "(default: stop)", "--export-dir", "--export-links"):
        assert text in out


# ------------------------------------------------------------------ rank per link and full fine-tuning
def test_link_ranks_step_down_the_second_link(tiny_model_dir, super_glue_dir, tmp_path):
    r = finetune(_cfg(tiny_model_dir, super_glue_dir, tmp_path, max_steps=4, knot_steps=(3,), rank=8,
                      link_ranks=(8, 2)))
    assert [(k["step"], k["rank"], k["next_rank"]) for k in r["knots"]] == [(3, 8, 2)]
    assert len(r["train_loss"]) == 4 and all(x == x for x in r["train_loss"])


@pytest.mark.parametrize("change,message", [
    ({"method": "lora", "link_ranks": (8,)}, "link_ranks \\[8\\] needs a method with knots \\(cola, relora\\), not 'lora'"),
    ({"link_ranks": (4, 2)}, r"link_ranks\[0\] = 4 must equal rank = 8"),
    ({"link_ranks": (8, 0)}, r"link_ranks \[8, 0\] must be integers >= 1"),
    ({"link_ranks": (8, 4), "chain_length": 3}, r"link_ranks \[8, 4\] must have one entry per link: 3 links"),
])
def test_bad_link_ranks_fail_before_training(change, message, tiny_model_dir, super_glue_dir, tmp_path):
    with pytest.raises(ValueError, match=message):
        finetune(_cfg(tiny_model_dir, super_glue_dir, tmp_path, **change))
    assert not list(tmp_path.iterdir())


def test_full_finetuning_trains_every_weight(tiny_model_dir, super_glue_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    n_weights = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    held = []
    real_init = torch.optim.AdamW.__init__

    def spy(self, params, *a, **k):
        params = list(params)
        held.append(sum(p.numel() for p in params))
        real_init(self, params, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", spy)
    full = finetune(_cfg(tiny_model_dir, super_glue_dir, tmp_path, method="full", max_steps=3))
    lora = finetune(_cfg(tiny_model_dir, super_glue_dir, tmp_path, method="lora", max_steps=3))
    assert held[0] == n_weights and held[1] < n_weights / 10
    assert full["knots"] == [] and full["knot_steps"] == [] and len(full["train_loss"]) == 3
    # the same function at step 1 (LoRA's B starts at zero), then different updates
    assert full["train_loss"][0] == pytest.approx(lora["train_loss"][0], abs=1e-6)
    assert full["train_loss"][1:] != lora["train_loss"][1:]
    assert len(full["test"]["predictions"]) == full["test"]["n"] == 16
