"""``--n-dev 0`` (no dev examples) is a valid setting: every command finishes, and so does a resumed run.

Issue 9, item 2: the epoch line formatted the missing dev accuracy and crashed every
training run at the end of its first epoch, under ``--progress false`` too, and again
after a resume.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from cola_opt.llm import objective
from cola_opt.llm.cli import main
from cola_opt.llm.config import FinetuneConfig
from cola_opt.llm.trainer import finetune


def _options(model_dir, data_dir, out, *, progress="false"):
    return ["--model", str(model_dir), "--task", "wsc", "--data-dir", str(data_dir), "--n-train", "12",
            "--n-dev", "0", "--n-test", "8", "--epochs", "2", "--batch-size", "4", "--chain-length", "2",
            "--autocast", "none", "--progress", progress, "--output-dir", str(out)]


@pytest.mark.parametrize("progress", ["false", "true"])
def test_finetune_without_dev_examples_finishes(progress, tiny_model_dir, super_glue_dir, tmp_path, capsys):
    assert main(["finetune", *_options(tiny_model_dir, super_glue_dir, tmp_path, progress=progress)]) == 0
    r = json.loads((tmp_path / "wsc_cola_s0" / "results.json").read_text())
    assert r["counts"] == {"train": 12, "dev": 0, "test": 8}
    assert [(h["epoch"], h["step"], h["accuracy"], h["n"]) for h in r["dev_history"]] == [(1, 3, None, 0),
                                                                                          (2, 6, None, 0)]
    assert r["dev"]["accuracy"] is None and r["test"]["n"] == 8 and len(r["train_loss"]) == 6
    assert 0.0 <= r["test"]["accuracy"] <= 1.0
    assert ("epoch 1: no dev examples" in "".join(capsys.readouterr())) == (progress == "true")


def test_compare_without_dev_examples_shows_no_dev_column(tiny_model_dir, super_glue_dir, tmp_path, capsys):
    assert main(["compare", *_options(tiny_model_dir, super_glue_dir, tmp_path)]) == 0
    table = capsys.readouterr().out
    for row in ("| zero-shot | - | - |", "| lora | 1 | - |", "| cola | 2 | - |"):
        assert row in table
    summary = json.loads((tmp_path / "wsc_compare_s0.json").read_text())
    assert all(r["dev"]["n"] == 0 and r["test"]["n"] == 8 for r in summary["methods"].values())


def test_grid_without_dev_examples_records_no_dev_accuracy(tiny_model_dir, fixtures_dir, tmp_path):
    out = tmp_path / "grid"
    code = main(["grid", "--model", str(tiny_model_dir), "--data-dir", str(fixtures_dir), "--tasks", "boolq",
                 "--methods", "zero-shot,lora,cola2", "--seeds", "1", "--n-train", "8", "--n-dev", "0",
                 "--n-test", "100", "--epochs", "1", "--batch-size", "4", "--autocast", "none",
                 "--progress", "false", "--out", str(out)])
    assert code == 0
    recs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["method"] for r in recs] == ["zero-shot", "lora", "cola2"]
    assert all(r["dev_accuracy"] is None and r["counts"]["dev"] == 0 for r in recs)
    assert all(0.0 <= r["test_accuracy"] <= 1.0 and len(r["test_correct"]) == 5 for r in recs)
    assert "| LoRA |" in (out / "table.md").read_text()


def test_resume_without_dev_examples_is_the_uninterrupted_run(tiny_model_dir, super_glue_dir, tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = FinetuneConfig(model=str(tiny_model_dir), task="wsc", data_dir=str(super_glue_dir), n_train=12, n_dev=0,
                             n_test=8, epochs=2, batch_size=4, knot_steps=(3,), autocast="none", progress=False,
                             checkpoint_every=2, output_dir=str(tmp_path / "a"))
        reference = finetune(cfg)
        real, calls = objective.classification_loss, [0]

        def crash_at_the_fifth(scores, labels):
            calls[0] += 1
            if calls[0] == 5:
                raise RuntimeError("simulated crash")
            return real(scores, labels)

        monkeypatch.setattr(objective, "classification_loss", crash_at_the_fifth)
        resumed_cfg = cfg.replace(output_dir=str(tmp_path / "b"))
        with pytest.raises(RuntimeError, match="simulated crash"):
            finetune(resumed_cfg)  # past the end of epoch 1 (step 3) and its dev line
        monkeypatch.undo()
        r = finetune(resumed_cfg)
    finally:
        torch.set_num_threads(threads)
    assert r["resumed_from"] == [4]
    assert r["train_loss"] == reference["train_loss"] and all(math.isfinite(x) for x in r["train_loss"])
    assert r["dev_history"] == reference["dev_history"] and r["test"] == reference["test"]
    assert not (Path(resumed_cfg.output_dir) / "wsc_cola_s0" / "checkpoint").exists()
