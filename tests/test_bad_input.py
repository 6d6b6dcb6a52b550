"""Bad input found by an adversarial pass: each fails with one clear error, before any work."""

import json
from pathlib import Path

import pytest
import torch

from cola_opt import NonFiniteUpdateError, ResidualLowRankOptimizer, TensorSite
from cola_opt.llm.cli import main
from cola_opt.llm.compare import compare
from cola_opt.llm.config import FinetuneConfig
from cola_opt.llm.grid import GridConfig, run_grid
from cola_opt.llm.lora import LoraSettings
from cola_opt.llm.tasks import get_task, read_split, sample_splits
from cola_opt.llm.trainer import finetune


def _cfg(model_dir, data_dir, out, **kw):
    base = dict(model=str(model_dir), task="wsc", data_dir=str(data_dir), n_train=16, n_dev=4, n_test=8,
                max_steps=4, batch_size=4, chain_length=2, autocast="none", output_dir=str(out), progress=False)
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.mark.parametrize("change,message", [
    ({"rank": 999}, "LoRA rank r=999 is larger than layer"),
    ({"target_modules": ("q_proj", "v_prj")}, r"include \['v_prj'\], which match no module"),
    ({"link_ranks": (8, 999), "knot_steps": (2,)}, "LoRA rank r=999 is larger than layer"),
])
def test_compare_checks_every_method_before_the_first_run(change, message, tiny_model_dir, super_glue_dir,
                                                          tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        compare(_cfg(tiny_model_dir, super_glue_dir, out, **change))
    assert not out.exists()  # not even zero-shot ran


def test_grid_checks_targets_before_writing_anything(tiny_model_dir, super_glue_dir, tmp_path):
    grid = GridConfig(base=_cfg(tiny_model_dir, super_glue_dir, tmp_path, target_modules=("nope",)),
                      tasks=("wsc",), methods=("zero-shot", "lora"), seeds=1, out=str(tmp_path / "grid"))
    with pytest.raises(ValueError, match=r"target_modules \['nope'\] match no module"):
        run_grid(grid)
    assert not (tmp_path / "grid").exists()


def test_output_dir_that_is_a_file_is_refused_up_front(tiny_model_dir, super_glue_dir, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(ValueError, match="output_dir .*a-file' is a file"):
        finetune(_cfg(tiny_model_dir, super_glue_dir, f))


@pytest.mark.parametrize("change,message", [
    ({"weight_decay": float("inf")}, "weight_decay = inf must be a finite number"),
    ({"max_grad_norm": float("nan")}, "max_grad_norm = nan must be a finite number"),
    ({"lora_alpha": float("inf")}, "lora_alpha = inf must be a finite number > 0"),
    ({"lora_alpha": "16"}, "lora_alpha = '16' must be a finite number > 0"),
    ({"seed": -1}, "seed = -1 must be an integer >= 0"),
    ({"seed": 2**32}, "seed = 4294967296 must be below 2"),
    ({"warmup_steps": -1}, "warmup_steps = -1 must be an integer >= 0"),
    ({"lr": "1e-3"}, "lr = '1e-3' must be a finite number > 0"),
    ({"method": "lora", "knot_steps": (1,)}, r"knot_steps \[1\] needs a method with knots \(cola, relora\), not 'lora'"),
    ({"device": "cuda:x"}, "device 'cuda:x' must be auto, cpu, cuda or cuda:N"),
])
def test_config_values_are_checked(change, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(output_dir=str(tmp_path), **change).validate()


def test_path_objects_are_accepted(tiny_model_dir, super_glue_dir, tmp_path):
    r = finetune(_cfg(Path(tiny_model_dir), Path(super_glue_dir), tmp_path, method="lora", max_steps=1))
    assert json.loads(Path(r["results_path"]).read_text())["config"]["data_dir"] == str(super_glue_dir)


def test_empty_knot_list_on_the_command_line_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--knot-steps", ","])
    assert e.value.code == 2 and "',' is an empty list" in capsys.readouterr().err


# ------------------------------------------------------------------ data files
def _wsc_dir(tmp_path, train_lines, val_lines):
    (tmp_path / "WSC").mkdir()
    (tmp_path / "WSC" / "train.jsonl").write_text("\n".join(train_lines))
    (tmp_path / "WSC" / "val.jsonl").write_text("\n".join(val_lines))
    return tmp_path


REC = {"text": "A b.", "target": {"span1_text": "A", "span2_text": "b", "span1_index": 0, "span2_index": 1},
       "idx": 0, "label": True}


def test_empty_validation_split_is_refused(tmp_path):
    d = _wsc_dir(tmp_path, [json.dumps(REC)] * 4, [])
    with pytest.raises(ValueError, match="validation split of wsc is empty"):
        sample_splits(get_task("wsc"), seed=0, n_train=2, n_dev=1, n_test=2, data_dir=d)


def test_string_label_is_refused(tmp_path):
    d = _wsc_dir(tmp_path, [json.dumps({**REC, "label": "false"})] * 4, [json.dumps(REC)])
    with pytest.raises(ValueError, match="WSC label 'false' is not a boolean"):
        sample_splits(get_task("wsc"), seed=0, n_train=2, n_dev=1, n_test=1, data_dir=d)


def test_malformed_json_names_the_file_and_line(tmp_path):
    d = _wsc_dir(tmp_path, [json.dumps(REC), '{"text": "cut sh'], [json.dumps(REC)])
    with pytest.raises(ValueError, match=r"WSC/train.jsonl:2: not valid JSON"):
        read_split(get_task("wsc"), "train", d)


def test_record_missing_a_field_is_named(tmp_path):
    d = _wsc_dir(tmp_path, [json.dumps({"idx": 7, "label": True})] * 3, [json.dumps(REC)])
    with pytest.raises(ValueError, match="wsc record idx=7 is malformed"):
        sample_splits(get_task("wsc"), seed=0, n_train=2, n_dev=0, n_test=1, data_dir=d)


# ------------------------------------------------------------------ the chain
def test_bad_next_rank_changes_nothing():
    site = TensorSite(torch.randn(6, 5), rank=2)
    with torch.no_grad():
        site.lora_B.normal_()
    chain = ResidualLowRankOptimizer([site])
    w0, delta = site.weight.clone(), site.delta()
    for bad in (0, 99, -1, 2.5):
        with pytest.raises(ValueError, match="next_rank"):
            chain.tie_knot(next_rank=bad)
        assert torch.equal(site.weight, w0) and chain.link == 0
    chain.tie_knot()
    torch.testing.assert_close(site.weight, w0 + delta)  # merged once, not twice


def test_two_sites_over_one_weight_are_refused():
    w = torch.randn(4, 4)
    with pytest.raises(ValueError, match="share one weight"):
        ResidualLowRankOptimizer([TensorSite(w, 1, name="a"), TensorSite(w, 1, name="b")])


def test_non_finite_explicit_factors_leave_the_link_alone():
    site = TensorSite(torch.randn(5, 4), rank=2)
    chain = ResidualLowRankOptimizer([site])
    A, rank = site.lora_A.detach().clone(), site.rank
    B = torch.full((5, 1), float("nan"))
    with pytest.raises(NonFiniteUpdateError, match="not finite"):
        chain.merge_low_rank([(B, torch.ones(1, 4))], step_size=1.0, shrink=0.0)
    assert site.rank == rank and torch.equal(site.lora_A.detach(), A)


@pytest.mark.parametrize("kw,message", [({"step_size": float("nan")}, "step_size = nan must be a finite number"),
                                        ({"shrink": float("inf")}, "shrink = inf must be a finite number"),
                                        ({"ranks": [2, 1.7], "knot_steps": [1]}, "each of ranks = 1.7 must be an integer")])
def test_chain_settings_are_checked(kw, message):
    with pytest.raises(ValueError, match=message):
        ResidualLowRankOptimizer([TensorSite(torch.randn(5, 4), rank=2)], **kw)


def test_lora_settings_types():
    with pytest.raises(ValueError, match="lora_dropout"):
        LoraSettings(lora_dropout="0.1")
