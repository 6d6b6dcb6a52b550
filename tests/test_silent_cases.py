"""The smaller silent cases (issue 9, item 9): each is now refused, recorded or warned about."""

import json
import re
from pathlib import Path

import pytest

from cola_opt.llm.cli import main
from cola_opt.llm.compare import format_table
from cola_opt.llm.config import FinetuneConfig
from cola_opt.llm.plan import preflight

README = Path(__file__).resolve().parents[1] / "README.md"


def _cli(argv):
    try:
        return main(argv)
    except SystemExit as e:  # argparse
        return e.code


def _run(model, out, *extra):
    return _cli(["finetune", "--model", str(model), "--task", "wsc", "--n-train", "8", "--n-dev", "2", "--n-test",
                 "4", "--max-steps", "3", "--batch-size", "4", "--autocast", "none", "--progress", "false",
                 "--output-dir", str(out), *extra])


def _errors(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_lora_records_one_link_and_refuses_a_chain_length(super_glue_dir, tiny_model_dir, tmp_path, capsys):
    assert _run(tiny_model_dir, tmp_path, "--method", "lora") == 0  # the default chain length (3) is cola's
    r = json.loads((tmp_path / "wsc_lora_s0" / "results.json").read_text())
    assert r["config"]["chain_length"] == 1 and r["knot_steps"] == []
    cfg = FinetuneConfig(method="full", chain_length=3)
    cfg.validate()
    assert cfg.chain_length == 1
    capsys.readouterr()
    assert _run(tiny_model_dir, tmp_path / "b", "--method", "lora", "--chain-length", "3") == 2
    assert _errors(capsys) == ["cola-opt: error: chain_length 3 needs method cola: method 'lora' ties no knots (lora "
                               "and full train one link); leave --chain-length out"]
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("warmup,max_steps", [(3, 3), (10, 3)])
def test_a_warm_up_as_long_as_the_run_is_refused(super_glue_dir, tiny_model_dir, warmup, max_steps):
    cfg = FinetuneConfig(model=str(tiny_model_dir), n_train=8, n_dev=2, n_test=4, max_steps=max_steps,
                         warmup_steps=warmup, data_dir=str(super_glue_dir))
    with pytest.raises(ValueError, match=f"warmup_steps={warmup} is not shorter than the run \\({max_steps} optimizer"):
        preflight(cfg)
    assert preflight(cfg.replace(warmup_steps=max_steps - 1)).total_steps == max_steps
    assert preflight(cfg.replace(method="zero-shot")).total_steps == 0  # trains nothing: nothing to warm up


def test_a_warm_up_that_does_not_fit_is_refused_before_a_built_in_model_is_fetched(super_glue_dir, tmp_path,
                                                                                  monkeypatch):
    """The schedule is checked before the LoRA targets, which read the model's config: a built-in model missing
    from the cache is not fetched (93 MB) and converted only to be told the warm-up does not fit."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("COLA_CACHE", str(cache))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # were it fetched, pip would fail at once instead of downloading
    cfg = FinetuneConfig(n_train=8, n_dev=2, n_test=4, max_steps=3, warmup_steps=3, data_dir=str(super_glue_dir))
    assert cfg.model == "smollm2-135m"  # the default: a built-in model
    with pytest.raises(ValueError, match=r"warmup_steps=3 is not shorter than the run \(3 optimizer"):
        preflight(cfg)
    assert not cache.exists()  # the cache was not even created

def test_n_train_above_the_split_is_warned_and_recorded(super_glue_dir, tiny_model_dir, tmp_path, capsys):
    assert _run(tiny_model_dir, tmp_path, "--n-train", "600", "--max-length", "512") == 0
    warnings = [x for x in _errors(capsys) if x.startswith("cola-opt: warning:")]
    assert warnings == ["cola-opt: warning: n_train=600 asked, 552 drawn: wsc's train split has 554 records and "
                        "n_dev=2 takes 2 of them; training on 552"]
    r = json.loads((tmp_path / "wsc_cola_s0" / "results.json").read_text())
    assert r["counts"]["train"] == 552 and r["capped"]["train"]["asked"] == 600 and r["capped"]["train"]["drawn"] == 552


def test_bf16_weights_can_take_the_fp32_master_path(super_glue_dir, tiny_model_dir, tmp_path):
    assert _run(tiny_model_dir, tmp_path, "--dtype", "bf16", "--fp32-master", "true", "--chain-length", "3",
                "--export-dir", str(tmp_path / "export")) == 0
    chain = json.loads((tmp_path / "export" / "chain.json").read_text())
    assert len(chain["sites"]) == 4 and all(s["fp32_master"] for s in chain["sites"])
    r = json.loads((tmp_path / "wsc_cola_s0" / "results.json").read_text())
    assert r["precision"]["fp32_master"] is True and len(r["knots"]) == 2
    assert _run(tiny_model_dir, tmp_path / "b", "--dtype", "bf16", "--export-dir", str(tmp_path / "export-b")) == 0
    chain = json.loads((tmp_path / "export-b" / "chain.json").read_text())
    assert not any(s["fp32_master"] for s in chain["sites"])  # off by default, as before


@pytest.mark.parametrize("changes,message", [
    ({}, "fp32_master needs --dtype bf16 or fp16"),
    ({"dtype": "bf16", "method": "full"}, "method 'full' trains every weight"),
    ({"dtype": "bf16", "checkpoint_every": 5}, "checkpoint_every=5: the master copy is not in the checkpoint"),
])
def test_the_fp32_master_copy_is_refused_where_it_means_nothing_or_breaks_a_resume(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        FinetuneConfig(fp32_master=True, **changes).validate()
    FinetuneConfig(fp32_master=True, dtype="bf16", method="zero-shot").validate()  # compare's zero-shot run


@pytest.mark.parametrize("argv,line", [
    (["--lr", "-1e-3"], "cola-opt: error: lr = -0.001 must be a finite number > 0"),
    (["--lr=-1e-3"], "cola-opt: error: lr = -0.001 must be a finite number > 0"),
    (["--weight-decay", "-.5"], "cola-opt: error: weight_decay = -0.5 must be a finite number >= 0"),
    (["--lr", "abc"], "cola-opt: error: argument --lr: invalid float value: 'abc' (see: cola-opt finetune --help)"),
    (["--no-such-option", "1"], "cola-opt: error: unrecognized arguments: --no-such-option 1 (see: cola-opt --help)"),
])
def test_argument_errors_are_one_line_naming_the_value(argv, line, tmp_path, capsys):
    assert _cli(["finetune", "--output-dir", str(tmp_path / "out"), *argv]) == 2
    assert _errors(capsys) == [line]


def test_model_names_are_checked_before_any_hub_is_asked(tmp_path, monkeypatch, capsys):
    import transformers

    def no_hub(*a, **k):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_hub)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_hub)
    for model, line in [
        (str(tmp_path / "missing"), f"cola-opt: error: model {str(tmp_path / 'missing')!r}: no such folder"),
        ("./missing", "cola-opt: error: model './missing': no such folder"),
        ("smollm2-13m", "cola-opt: error: model 'smollm2-13m' is not a built-in model (smollm2-135m, gemma3-270m): "
                        "did you mean 'smollm2-135m'? (a local folder must exist; a hub id is org/name)"),
    ]:
        assert _cli(["finetune", "--model", model, "--output-dir", str(tmp_path / "out")]) == 2
        assert _errors(capsys) == [line]
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a model folder"):
        FinetuneConfig(model=str(tmp_path / "a-file")).validate()
    FinetuneConfig(model="facebook/opt-1.3b").validate()  # a hub id is left to the hub


def test_the_compare_table_shows_cpu_seconds_beside_wall_time():
    def result(train, cpu, knots):
        return {"knot_steps": [5] * knots, "dev": {"accuracy": 0.5}, "test": {"accuracy": 0.625},
                "train_seconds": train, "train_cpu_seconds": cpu, "knots": [{"seconds": 0.002}] * knots}

    table = format_table(FinetuneConfig(), {"zero-shot": result(0.0, 0.0, 0), "lora": result(40.2, 77.6, 0),
                                            "cola": result(41.0, 79.4, 2)}, 0.6)
    assert "| method | links | dev acc (%) | test acc (%) | train time (s) | train CPU (s) | mean knot time (ms) |" in table
    assert "| lora | 1 | 50.0 | 62.5 | 40 | 78 | - |" in table
    assert "| cola | 3 | 50.0 | 62.5 | 41 | 79 | 2.0 |" in table


def test_the_readme_says_the_test_command_fetches_gemma():
    text = README.read_text()
    tests = text[text.index("**Tests**"):text.index("### What the main job does")]
    assert "gemma3-270m" in tests and "228 MB" in tests and "1.1 GB" in tests
