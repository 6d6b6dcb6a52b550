"""Defaults that fit the hardware (issue 9, item 8): ``--autocast auto``, resolved, recorded and fingerprinted."""

import json

import pytest
import torch

from cola_opt.llm import precision
from cola_opt.llm.cli import main
from cola_opt.llm.config import FinetuneConfig
from cola_opt.llm.grid_plan import GridConfig


@pytest.fixture(params=[True, False], ids=["native-bf16", "emulated-bf16"])
def native(request, monkeypatch):
    """Run the test as on a CPU with native bf16 (AVX512-BF16, AMX) and as on one without (AVX2 only)."""
    monkeypatch.setattr(precision, "native_low_precision", lambda kind, where: request.param)
    return request.param


def test_auto_is_the_default_and_resolves_by_capability(native):
    cfg = FinetuneConfig(model="x")
    assert cfg.autocast == "auto"
    cfg.validate()
    assert cfg.autocast == ("bf16" if native else "none")
    forced = FinetuneConfig(model="x", autocast="bf16")
    forced.validate()
    assert forced.autocast == "bf16"  # a choice the user made is kept


def test_native_bf16_follows_onednn():
    assert precision.native_low_precision("bf16", "cpu") is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert precision.resolve_autocast("auto", "cpu") == ("bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported()
                                                         else "none")
    with pytest.raises(ValueError, match="autocast 'bf32' must be one of auto, none, bf16, fp16"):
        precision.resolve_autocast("bf32", "cpu")


def test_a_grid_fingerprints_the_precision_that_runs_not_the_word_auto(native):
    auto = GridConfig(base=FinetuneConfig(model="x")).fingerprint()  # never validated: still resolved
    assert auto == GridConfig(base=FinetuneConfig(model="x", autocast="bf16" if native else "none")).fingerprint()
    assert auto != GridConfig(base=FinetuneConfig(model="x", autocast="none" if native else "bf16")).fingerprint()


def _finetune(model, tmp_path, *extra):
    return main(["finetune", "--model", str(model), "--task", "wsc", "--n-train", "8", "--n-dev", "2", "--n-test",
                 "4", "--max-steps", "2", "--batch-size", "4", "--chain-length", "2", "--progress", "false",
                 "--output-dir", str(tmp_path), *extra])


def test_results_record_the_resolved_choice_and_a_forced_slow_path_is_warned(native, super_glue_dir, tiny_model_dir,
                                                                             tmp_path, capsys):
    assert _finetune(tiny_model_dir, tmp_path / "auto") == 0
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("cola-opt: warning:")]
    r = json.loads((tmp_path / "auto" / "wsc_cola_s0" / "results.json").read_text())
    assert r["config"]["autocast"] == r["precision"]["autocast"] == ("bf16" if native else "none")
    assert r["precision"]["native_bf16"] is native and r["precision"]["cpu_capability"] == \
        torch.backends.cpu.get_cpu_capability()
    assert warnings == []  # auto never takes a slow path
    assert _finetune(tiny_model_dir, tmp_path / "forced", "--autocast", "bf16") == 0
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("cola-opt: warning:")]
    if native:
        assert warnings == []
    else:
        assert len(warnings) == 1 and "--autocast bf16 on a CPU without native support" in warnings[0]


def test_a_checkpoint_is_not_resumed_at_another_precision(super_glue_dir, tiny_model_dir, tmp_path, monkeypatch,
                                                          capsys):
    """Written where auto meant bf16, resumed where it means none: refused, naming the precision."""
    from cola_opt.llm import trainer

    monkeypatch.setattr(precision, "native_low_precision", lambda kind, where: True)
    monkeypatch.setattr(trainer, "remove_checkpoints", lambda *a, **k: None)  # keep the last checkpoint
    assert _finetune(tiny_model_dir, tmp_path, "--checkpoint-every", "1") == 0
    monkeypatch.setattr(precision, "native_low_precision", lambda kind, where: False)
    capsys.readouterr()
    assert _finetune(tiny_model_dir, tmp_path, "--checkpoint-every", "1") == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "autocast: 'bf16' -> 'none'" in err
