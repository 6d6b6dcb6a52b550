"""The capacity study's methods by name: ranked grid names, the CLI's finetune, compare and grid, and bad values.

Every bad name or value is one ``ValueError`` naming it, raised before any run starts
(and before anything is written).
"""

import json
import math
from pathlib import Path

import pytest

from cola_opt.chain.lr_schedules import check_lr_schedule, default_restart_warmup_steps
from cola_opt.llm import grid as grid_module
from cola_opt.llm import trainer
from cola_opt.llm.cli import main
from cola_opt.llm.config import FinetuneConfig
from cola_opt.llm.grid import GridConfig, method_changes, run_grid
from cola_opt.llm.methods import grid_method
from cola_opt.llm.trainer import finetune

REPO = Path(__file__).resolve().parents[1]
SUPER_GLUE = REPO.parent / "shared" / "data" / "super_glue"
needs_wsc = pytest.mark.skipif(not (SUPER_GLUE / "WSC").is_dir(), reason=f"{SUPER_GLUE} is not present")


# ------------------------------------------------------------------ grid names
@pytest.mark.parametrize("name,rank,alpha,changes,label", [
    ("lora-r64", 8, 16.0, {"method": "lora", "rank": 64, "lora_alpha": 128.0}, "LoRA r=64"),
    ("lora-r1", 8, 16.0, {"method": "lora", "rank": 1, "lora_alpha": 2.0}, "LoRA r=1"),
    ("lora-r64", 8, 8.0, {"method": "lora", "rank": 64, "lora_alpha": 64.0}, "LoRA r=64"),  # the grid's ratio 1
    ("lora-r64", 8, None, {"method": "lora", "rank": 64, "lora_alpha": 128.0}, "LoRA r=64"),  # alpha = 2r
    ("cola4-r8", 16, 32.0, {"method": "cola", "chain_length": 4, "rank": 8, "lora_alpha": 16.0}, "COLA (4 links) r=8"),
    ("cola8-r1", 8, 16.0, {"method": "cola", "chain_length": 8, "rank": 1, "lora_alpha": 2.0}, "COLA (8 links) r=1"),
    ("relora4-r8", 8, 16.0, {"method": "relora", "chain_length": 4, "rank": 8, "lora_alpha": 16.0},
     "ReLoRA (4 links) r=8"),
    ("relora3", 8, 16.0, {"method": "relora", "chain_length": 3}, "ReLoRA (3 links)"),
    ("galore-r8", 8, 16.0, {"method": "galore", "galore_rank": 8}, "GaLore r=8"),
    ("galore", 8, 16.0, {"method": "galore"}, "GaLore"),
    ("full", 8, 16.0, {"method": "full"}, "full fine-tuning"),
    ("lora", 8, 16.0, {"method": "lora"}, "LoRA"),
])
def test_ranked_names_set_the_rank_and_keep_the_scaling(name, rank, alpha, changes, label):
    got = method_changes(name, rank, alpha)
    assert got == {"link_ranks": None, "knot_steps": None, **changes}
    assert grid_method(name).label(rank) == label
    if "rank" in changes:  # scaling alpha / r is the grid's at every rank
        assert got["lora_alpha"] / got["rank"] == (2.0 if alpha is None else alpha / rank)


@pytest.mark.parametrize("bad", ["lora-r0", "lora-r", "lora-r08", "lora8", "cola", "cola1-r8", "cola04", "relora",
                                 "relora1", "relora-r8", "galore2", "galore-r0", "full-r8", "zero-shot-r8", "LoRA-r8",
                                 "cola4-r8-r2", "stepdown-r0", ""])
def test_bad_grid_names_are_one_error_listing_the_forms(bad):
    with pytest.raises(ValueError, match=rf"^unknown grid method '{bad}'; use zero-shot, full, lora\[-r<R>\], "
                                         r"galore\[-r<R>\], cola<N>\[-r<R>\], relora<N>\[-r<R>\]"):
        grid_method(bad)


def test_a_bad_name_in_the_grid_is_refused_before_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(grid_module, "finetune", lambda *a, **k: pytest.fail("a run started"))
    grid = GridConfig(tasks=("cb",), methods=("lora-r8", "cola4-r8", "relora1-r8"), out=str(tmp_path / "g"))
    with pytest.raises(ValueError, match=r"unknown grid method 'relora1-r8'"):
        run_grid(grid)
    assert not (tmp_path / "g").exists()


# ------------------------------------------------------------------ the re-warm-up
@pytest.mark.parametrize("total,knots,expected", [
    (12, (4, 8), 1), (6000, (2000, 4000), 100), (100, (50,), 2), (10, (9,), 0), (10, (), 0),
    (2000, (10, 1000), 50),  # the first link (before any knot) has no re-warm-up: 990 steps is the shortest
])
def test_default_restart_warmup_is_a_twentieth_of_the_shortest_link(total, knots, expected):
    assert default_restart_warmup_steps(total, knots) == expected
    check_lr_schedule("jagged-cosine", total, knots, 0)  # the default always fits


@pytest.mark.parametrize("args,message", [
    (("cosine", 12, (4, 8), 0), r"lr_schedule 'cosine' must be one of \('linear', 'jagged-cosine'\)"),
    (("jagged-cosine", 12, (4, 8), 0, 4), "restart_warmup_steps=4 does not fit the link from step 4 to 8"),
    (("jagged-cosine", 12, (4, 8), 12), r"warmup_steps=12 is not shorter than the run \(12 optimizer steps\)"),
    (("jagged-cosine", 12, (4, 12), 0), "knot"),
])
def test_bad_schedules_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        check_lr_schedule(*args)
    check_lr_schedule("linear", 12, (4, 8), 11)  # a warm-up shorter than the run is fine
    with pytest.raises(ValueError, match=r"warmup_steps=12 is not shorter than the run"):
        check_lr_schedule("linear", 12, (4, 8), 12)  # the LR would never reach its peak (issue 9)


# ------------------------------------------------------------------ bad values, before any work
def _cfg(model_dir, out, **kw):
    return FinetuneConfig(model=str(model_dir), task="wsc", data_dir=str(SUPER_GLUE), n_train=24, n_dev=8, n_test=16,
                          epochs=2, batch_size=4, lr=1e-3, autocast="none", output_dir=str(out), progress=False, **kw)


@needs_wsc
@pytest.mark.parametrize("change,message", [
    ({"lr_schedule": "cosine"}, r"lr_schedule 'cosine' must be one of \('linear', 'jagged-cosine'\) or none"),
    ({"restart_warmup_steps": -1}, "restart_warmup_steps = -1 must be an integer >= 0"),
    ({"method": "relora", "knot_steps": (4, 8), "restart_warmup_steps": 4},
     "restart_warmup_steps=4 does not fit the link from step 4 to 8"),
    ({"method": "relora", "warmup_steps": 12}, r"warmup_steps=12 is not shorter than the run \(12 optimizer steps\)"),
    ({"relora_reset": "prune:1.5"}, r"prune ratio 1.5 must be in \[0, 1\]"),
    ({"relora_reset": "half"}, "unknown optimizer reset 'half'"),
    ({"galore_rank": 0}, "galore_rank = 0 must be an integer >= 1"),
    ({"galore_update_proj_gap": 0}, "galore_update_proj_gap = 0 must be an integer >= 1"),
    ({"galore_scale": 0.0}, "galore_scale = 0.0 must be a finite number > 0"),
    ({"galore_scale": float("nan")}, "galore_scale = nan must be a finite number > 0"),
    ({"galore_train_others": "yes"}, "galore_train_others must be true or false, got 'yes'"),
    ({"method": "galore", "target_modules": ("q_proj", "nope")},
     r"target_modules \['q_proj', 'nope'\]: \['nope'\] match no module of LlamaForCausalLM; its linear layers are "
     r"named \['down_proj', 'gate_proj', 'k_proj', 'lm_head', 'o_proj', 'q_proj', 'up_proj', 'v_proj'\]"),
    ({"method": "galore", "target_modules": ("input_layernorm",)},
     r"target module 'model.layers.0.input_layernorm' \(LlamaRMSNorm\) has no 2-D weight for GaLore"),
    ({"method": "galore", "export_links": "links"}, "export_links needs a LoRA method"),
    ({"method": "galore", "knot_steps": (4,)}, r"knot_steps \[4\] needs a method with knots \(cola, relora\)"),
])
def test_bad_values_fail_before_any_work(change, message, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ValueError, match=message):
        finetune(_cfg(tiny_model_dir, tmp_path, **change))
    assert not list(tmp_path.iterdir())


@needs_wsc
def test_the_cli_says_a_bad_schedule_in_one_line(tiny_model_dir, tmp_path, capsys):
    code = main(["finetune", "--model", str(tiny_model_dir), "--data-dir", str(SUPER_GLUE), "--output-dir",
                 str(tmp_path), "--method", "relora", "--lr-schedule", "jagged", "--progress", "false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["cola-opt: error: lr_schedule 'jagged' must be one of ('linear', 'jagged-cosine') "
                                 "or none (the method's)"]


# ------------------------------------------------------------------ the CLI's verbs
@needs_wsc
def test_finetune_and_compare_run_every_study_method_from_the_cli(tiny_model_dir, tmp_path, capsys):
    common = ["--model", str(tiny_model_dir), "--data-dir", str(SUPER_GLUE), "--task", "wsc", "--n-train", "24",
              "--n-dev", "8", "--n-test", "16", "--epochs", "1", "--batch-size", "4", "--autocast", "none",
              "--progress", "false", "--output-dir", str(tmp_path), "--galore-rank", "4", "--chain-length", "3",
              "--rank", "2"]
    assert main(["finetune", *common, "--method", "relora", "--restart-warmup-steps", "0"]) == 0
    r = json.loads((tmp_path / "wsc_relora_s0" / "results.json").read_text())
    assert r["knot_steps"] == [2, 4] and r["config"]["relora_reset"] == "prune:0.99"
    assert r["config"]["lr_schedule"] is None and r["config"]["restart_warmup_steps"] == 0
    # the LR of the step before each knot (steps 2 and 4 of 6 run at factors t = 1, 3): the cosine, floor 0.1
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / 6)) for t in (1, 3)]
    assert [k["lr"][0] for k in r["knots"]] == pytest.approx([5e-4 * c for c in cosine], rel=1e-12)
    capsys.readouterr()
    assert main(["compare", *common, "--methods", "lora,relora,galore,full"]) == 0
    table = capsys.readouterr().out
    for row in ("| lora | 1 |", "| relora | 3 |", "| galore | 1 |", "| full | 1 |"):
        assert row in table
    summary = json.loads((tmp_path / "wsc_compare_s0.json").read_text())
    assert summary["config"]["method"] == ["lora", "relora", "galore", "full"]
    assert summary["methods"]["galore"]["config"]["galore_rank"] == 4
    assert main(["compare", *common, "--methods", "lora,dora"]) == 2
    assert "method 'dora' must be one of" in capsys.readouterr().err


def test_a_grid_of_the_study_methods_runs_each_at_its_rank(tiny_model_dir, fixtures_dir, tmp_path, capsys):
    out = tmp_path / "grid"
    methods = "lora-r1,lora-r4,cola2-r2,cola4-r1,relora2-r2,galore-r2,full"
    code = main(["grid", "--model", str(tiny_model_dir), "--data-dir", str(fixtures_dir), "--tasks", "boolq",
                 "--methods", methods, "--seeds", "1", "--lrs", "1e-2", "--n-train", "8", "--n-dev", "3",
                 "--n-test", "20", "--epochs", "1", "--batch-size", "2", "--autocast", "none", "--progress", "false",
                 "--out", str(out)])
    assert code == 0
    runs = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["method"] for r in runs] == methods.split(",")
    assert [r["knot_steps"] for r in runs] == [[], [], [2], [1, 2, 3], [2], [], []]
    used = {}
    for r in runs:
        cfg = json.loads((out / "runs" / r["run_id"].replace("/", "_") / f"boolq_{grid_method(r['method']).method.name}"
                          "_s0" / "results.json").read_text())["config"]
        used[r["method"]] = (cfg["method"], cfg["rank"], cfg["lora_alpha"], cfg["galore_rank"], cfg["chain_length"])
    assert used == {"lora-r1": ("lora", 1, 2.0, 128, 1), "lora-r4": ("lora", 4, 8.0, 128, 1),
                    "cola2-r2": ("cola", 2, 4.0, 128, 2), "cola4-r1": ("cola", 1, 2.0, 128, 4),
                    "relora2-r2": ("relora", 2, 4.0, 128, 2), "galore-r2": ("galore", 8, 16.0, 2, 1),
                    "full": ("full", 8, 16.0, 128, 1)}  # one link recorded for a method without knots
    table = (out / "table.md").read_text()
    assert "LoRA r=4" in table and "ReLoRA (2 links) r=2" in table and "GaLore r=2" in table
