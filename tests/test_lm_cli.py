"""``cola-opt finetune``, ``compare`` and ``grid`` on a user's prompt/completion JSONL and text folder.

The tiny random Llama (tests/conftest.py) runs the whole path: the pre-flight (records
checked, blocks counted), chain and knots, checkpoints and resume, export, the tables and
the grid's LR choice by a loss (lower is better). The last test (slow) runs the built-in
SmolLM2-135M end to end.
"""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_tokenizer
from safetensors.torch import load_file

from cola_opt.llm import lm_objective
from cola_opt.llm.cli import main
from cola_opt.llm.config import FinetuneConfig
from cola_opt.llm.grid import GridConfig, Run, choose_lrs
from cola_opt.llm.lm_objective import pack_documents
from cola_opt.llm.report import paired_tests, results_table
from cola_opt.llm.tasks import UserData
from cola_opt.llm.trainer import finetune

REPO = Path(__file__).resolve().parents[1]
WORDS = ["trophy", "suitcase", "Pete", "Mark", "book", "lies", "hypothesis", "noun", "passage", "pronoun"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """``pairs.jsonl`` (24 prompt/completion pairs) and ``docs/`` (10 text files) in the tiny tokenizer's words."""
    root = tmp_path_factory.mktemp("user-data")
    with open(root / "pairs.jsonl", "w") as f:
        for i in range(24):
            a, b = WORDS[i % 10], WORDS[(3 * i + 1) % 10]
            f.write(json.dumps({"prompt": f"Question: where is the {a}? Answer:", "completion": f" with the {b}"}) + "\n")
    (root / "docs").mkdir()
    for i in range(10):
        (root / "docs" / f"{i:02d}.txt").write_text(" ".join(WORDS[(i + j) % 10] for j in range(12 + 5 * i)) + ".")
    return root


@pytest.fixture()
def deterministic():
    """One thread and deterministic algorithms (bitwise-repeatable CPU runs, as tests/resume_driver.py), restored after."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(1), torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(saved[0]), torch.use_deterministic_algorithms(saved[1])


COMPLETION = ["--task", "completion", "--n-train", "16", "--n-dev", "4", "--n-test", "4", "--epochs", "2",
              "--batch-size", "4", "--knot-steps", "3,6", "--lr", "1e-2", "--autocast", "none", "--progress", "false"]
TEXT = ["--task", "text", "--n-train", "7", "--n-dev", "1", "--n-test", "2", "--epochs", "2", "--batch-size", "2",
        "--max-length", "16", "--chain-length", "2", "--lr", "1e-2", "--autocast", "none", "--progress", "false"]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_finetune_on_a_prompt_completion_jsonl(tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "runs"
    code, printed = _run(["finetune", "--model", str(tiny_model_dir), "--train-file", str(data / "pairs.jsonl"),
                          *COMPLETION, "--output-dir", str(out), "--checkpoint-every", "2",
                          "--export-dir", str(tmp_path / "export")], capsys)
    assert code == 0, printed
    r = json.loads((out / "completion_cola_s0" / "results.json").read_text())
    assert r["total_steps"] == 8 and r["knot_steps"] == [3, 6] and [k["step"] for k in r["knots"]] == [3, 6]
    assert r["counts"] == {"train": 16, "dev": 4, "test": 4} and r["test"]["n"] == 4
    assert r["test"]["perplexity"] == pytest.approx(math.exp(r["test"]["loss"]))
    assert 0 <= r["test"]["exact_match"] <= 1 and len(r["test"]["predictions"]) == 4
    assert [d["epoch"] for d in r["dev_history"]] == [1, 2] and "exact_match" in r["dev_history"][-1]
    assert r["train_loss"][-1] < r["train_loss"][0]  # it learns
    assert "test exact match" in printed and "perplexity" in printed
    assert json.loads((tmp_path / "export" / "chain.json").read_text())["knot_steps"] == [3, 6]
    assert not (out / "completion_cola_s0" / "checkpoint").exists()


def test_finetune_on_a_text_folder_plans_steps_from_the_packed_blocks(tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "runs"
    code, printed = _run(["finetune", "--model", str(tiny_model_dir), "--train-file", str(data / "docs"), *TEXT,
                          "--output-dir", str(out), "--progress", "true"], capsys)
    assert code == 0, printed
    assert "epoch 1: dev loss" in printed and "knot 1 tied at step" in printed and "link=2/2" in printed
    r = json.loads((out / "text_cola_s0" / "results.json").read_text())
    splits = UserData("text", str(data / "docs")).sample(seed=0, n_train=7, n_dev=1, n_test=2)
    blocks = pack_documents(tiny_tokenizer(), splits.train, 16)
    assert r["counts"]["train"] == 7 and len(blocks) > 7  # documents drawn, blocks trained on
    assert r["steps_per_epoch"] == math.ceil(len(blocks) / 2) and r["total_steps"] == 2 * r["steps_per_epoch"]
    assert r["data_fingerprint"] == splits.fingerprint()
    assert r["test"]["tokens"] == sum(len(b.ids) - 1 for b in pack_documents(tiny_tokenizer(), splits.test, 16))
    assert "exact_match" not in r["test"] and r["dev"]["loss"] > 0 and len(r["knots"]) == 1
    assert "test loss" in printed and "nats per token" in printed


def test_compare_tabulates_lm_metrics_without_a_majority_row(tiny_model_dir, data, tmp_path, capsys):
    code, printed = _run(["compare", "--model", str(tiny_model_dir), "--train-file", str(data / "pairs.jsonl"),
                          *COMPLETION, "--output-dir", str(tmp_path)], capsys)
    assert code == 0, printed
    summary = json.loads((tmp_path / "completion_compare_s0.json").read_text())
    table = summary["table"]
    assert "| method | links | dev EM (%) | test EM (%) | test loss | test ppl |" in table
    assert "majority class" not in table and summary["majority"] is None
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    loss = summary["methods"]["lora"]["test"]["loss"]
    assert f"| {loss:.3f} |" in rows["lora"]


def test_the_grid_chooses_the_lr_with_the_lower_dev_loss(tiny_model_dir, data, tmp_path, capsys):
    code, printed = _run(["grid", "--model", str(tiny_model_dir), "--tasks", "text", "--train-file", str(data / "docs"),
                          "--n-train", "6", "--n-dev", "2", "--n-test", "2", "--max-steps", "4", "--batch-size", "2",
                          "--max-length", "16", "--autocast", "none", "--methods", "lora,cola2", "--seeds", "2",
                          "--lrs", "3e-2,1e-4", "--out", str(tmp_path / "grid"), "--progress", "false"], capsys)
    assert code == 0, printed
    recs = [json.loads(line) for line in (tmp_path / "grid" / "runs.jsonl").read_text().splitlines()]
    search = {(r["method"], r["lr"]): r for r in recs if r["seed"] == 0}
    for m in ("lora", "cola2"):
        best = min((3e-2, 1e-4), key=lambda lr: search[(m, lr)]["dev_metric"])
        assert search[(m, 3e-2)]["dev_metric"] != search[(m, 1e-4)]["dev_metric"]
        assert {r["lr"] for r in recs if r["method"] == m and r["seed"] == 1} == {best}
    assert all(r["metric"] == "loss" and r["majority"] is None and len(r["test_items"]) >= 2 for r in recs)
    table = (tmp_path / "grid" / "table.md").read_text()
    assert table.startswith("Test loss (nats per token, lower is better)") and "diff (nats)" in table
    assert "majority class" not in table


def _lm_records(values: dict, metric="loss", dev_loss=None):
    return [{"run_id": Run("text", m, s, lr).run_id, "metric": metric, "dev_metric": v, "test_metric": v,
             "dev_loss": (dev_loss or {}).get((m, lr)), "test_items": [v, v], "majority": None}
            for (m, s, lr), v in values.items()]


def test_lr_choice_and_paired_tests_know_a_loss_is_better_lower():
    grid = GridConfig(base=FinetuneConfig(task="text", train_file="x"), tasks=("text",), methods=("lora", "cola2"),
                      seeds=2, lrs=(1e-3, 1e-4))
    grid.validate()
    recs = _lm_records({("lora", 0, 1e-3): 2.0, ("lora", 0, 1e-4): 1.5, ("cola2", 0, 1e-3): 1.2,
                        ("cola2", 0, 1e-4): 1.4})
    chosen = choose_lrs(grid, recs)
    assert chosen == {("text", "lora"): 1e-4, ("text", "cola2"): 1e-3}
    recs += _lm_records({("lora", 1, 1e-4): 1.6, ("cola2", 1, 1e-3): 1.1})
    (test,) = paired_tests(grid, recs, chosen)
    assert test["diff"] == pytest.approx(-0.4) and test["wins"] == 2 and test["metric"] == "loss"
    assert "1.550 ± 0.071" in results_table(grid, recs, chosen)
    # exact match ties (0 at both LRs) are broken by the dev loss
    em = GridConfig(base=FinetuneConfig(task="completion", train_file="x"), tasks=("completion",), methods=("lora",),
                    seeds=1, lrs=(1e-3, 1e-4))
    em.validate()
    recs = [{**r, "run_id": r["run_id"].replace("text", "completion")} for r in _lm_records(
        {("lora", 0, 1e-3): 0.0, ("lora", 0, 1e-4): 0.0}, "exact_match", {("lora", 1e-3): 3.0, ("lora", 1e-4): 2.0})]
    assert choose_lrs(em, recs) == {("completion", "lora"): 1e-4}
    with pytest.raises(ValueError, match="report different metrics"):
        GridConfig(base=FinetuneConfig(task="text", train_file="x"), tasks=("text", "sst2")).validate()


def test_a_cut_prompt_is_reported_once_and_the_run_finishes(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "long.jsonl"
    rows = [{"prompt": "Question: where is the trophy? " * (25 if i in (2, 5) else 1), "completion": " in the book"}
            for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, printed = _run(["finetune", "--model", str(tiny_model_dir), "--task", "completion", "--train-file", str(path),
                          "--test-file", str(path), "--n-train", "12", "--n-dev", "0", "--n-test", "12", "--max-steps",
                          "2", "--chain-length", "1", "--method", "lora", "--max-length", "32", "--autocast", "none",
                          "--progress", "false", "--output-dir", str(tmp_path / "runs")], capsys)
    assert code == 0, printed
    warnings = [line for line in printed.splitlines() if line.startswith("cola-opt: warning:")]
    assert len(warnings) == 1 and "4 of 24 prompts (train 2 of 12, dev 0 of 0, test 2 of 12)" in warnings[0]
    assert "max_length=32" in warnings[0] and "no completion was cut" in warnings[0]
    r = json.loads((tmp_path / "runs" / "completion_lora_s0" / "results.json").read_text())
    assert r["test"]["prompts_cut"] == 2 and r["test"]["prompt_tokens_cut"] > 0


def test_the_guard_skips_a_non_finite_lm_step(tiny_model_dir, data, tmp_path, monkeypatch):
    real = lm_objective.CompletionLM.loss
    calls = [0]

    def nan_at_two(self, model, batch):
        calls[0] += 1
        loss = real(self, model, batch)
        return loss * float("nan") if calls[0] == 2 else loss

    monkeypatch.setattr(lm_objective.CompletionLM, "loss", nan_at_two)
    r = finetune(_resume_cfg(tiny_model_dir, data, tmp_path, nonfinite="skip", epochs=1, checkpoint_every=0,
                                 knot_steps=(2,)))
    assert r["skipped_steps"] == [2] and math.isnan(r["train_loss"][1]) and len(r["train_loss"]) == 4
    weights = load_file(Path(r["export_dir"]) / "model.safetensors")
    assert all(bool(torch.isfinite(w).all()) for w in weights.values()) and math.isfinite(r["test"]["loss"])


# ------------------------------------------------------------------ resume
def _resume_cfg(model_dir, data, out: Path, **kw) -> FinetuneConfig:
    args = dict(task="completion", model=str(model_dir), train_file=str(data / "pairs.jsonl"), n_train=16, n_dev=4,
                n_test=4, epochs=3, batch_size=4, knot_steps=(4, 8), lora_dropout=0.1, lr=1e-2, autocast="none",
                progress=False, checkpoint_every=3, output_dir=str(out), export_dir=str(out / "export"))
    return FinetuneConfig(**{**args, **kw})


def test_resume_after_a_crash_gives_the_same_final_weights(tiny_model_dir, data, tmp_path, monkeypatch, deterministic):
    reference = finetune(_resume_cfg(tiny_model_dir, data, tmp_path / "ref"))
    calls = [0]
    real = lm_objective.CompletionLM.loss

    def crash_at_seven(self, model, batch):
        calls[0] += 1
        if calls[0] == 7:  # in step 7, after the checkpoint of step 6, before the knot of step 8
            raise RuntimeError("simulated crash")
        return real(self, model, batch)

    monkeypatch.setattr(lm_objective.CompletionLM, "loss", crash_at_seven)
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune(_resume_cfg(tiny_model_dir, data, tmp_path / "run"))
    monkeypatch.undo()
    resumed = finetune(_resume_cfg(tiny_model_dir, data, tmp_path / "run"))
    assert resumed["resumed_from"] == [6] and resumed["train_loss"] == reference["train_loss"]
    assert resumed["test"] == reference["test"] and [k["step"] for k in resumed["knots"]] == [4, 8]
    a, b = (load_file(Path(r["export_dir"]) / "model.safetensors") for r in (reference, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_from_before_the_late_fields_resumes_as_their_before_behaviour(tiny_model_dir, data, tmp_path,
                                                                                   monkeypatch, deterministic):
    from cola_opt.llm.config import USER_TASK_OPTIONS

    reference = finetune(_resume_cfg(tiny_model_dir, data, tmp_path / "ref", export_dir=None))
    real = lm_objective.CompletionLM.loss
    calls = [0]

    def crash_at_five(self, model, batch):
        calls[0] += 1
        if calls[0] == 5:
            raise RuntimeError("simulated crash")
        return real(self, model, batch)

    monkeypatch.setattr(lm_objective.CompletionLM, "loss", crash_at_five)
    with pytest.raises(RuntimeError):
        finetune(_resume_cfg(tiny_model_dir, data, tmp_path / "run", export_dir=None))
    monkeypatch.undo()
    state = tmp_path / "run" / "completion_cola_s0" / "checkpoint" / "step-000003" / "state.json"
    doc = json.loads(state.read_text())
    for name in (*USER_TASK_OPTIONS, "bucket_by_length"):  # as an older version wrote it
        doc["state"]["config"].pop(name)
    state.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"another configuration \(bucket_by_length: False -> True\)"):
        finetune(_resume_cfg(tiny_model_dir, data, tmp_path / "run", export_dir=None))  # before: a plain shuffle
    resumed = finetune(_resume_cfg(tiny_model_dir, data, tmp_path / "run", export_dir=None, bucket_by_length=False))
    assert resumed["resumed_from"] == [3] and resumed["train_loss"][:3] == reference["train_loss"][:3]
    assert len(resumed["train_loss"]) == 12


def _cli_args(model_dir, data, out: Path) -> list[str]:
    cfg = _resume_cfg(model_dir, data, out)
    args = []
    for k in ("task", "model", "train_file", "n_train", "n_dev", "n_test", "epochs", "batch_size", "knot_steps",
              "lora_dropout", "lr", "autocast", "progress", "checkpoint_every", "output_dir", "export_dir"):
        v = getattr(cfg, k)
        args += ["--" + k.replace("_", "-"), ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    return args


def _driver(pause: str, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "resume_driver.py"), pause, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # three subprocesses of a few seconds each
def test_kill_minus_nine_in_a_knot_then_resume_gives_the_same_final_weights(tiny_model_dir, data, tmp_path):
    ref = _driver("none", _cli_args(tiny_model_dir, data, tmp_path / "ref"))
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]
    args = _cli_args(tiny_model_dir, data, tmp_path / "run")
    p = _driver("knot", args)  # paused inside the knot of step 4, one site merged and the others not
    assert next(line for line in p.stdout if line.startswith("PAUSED")).strip() == "PAUSED knot"
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=120)
    latest = json.loads((tmp_path / "run" / "completion_cola_s0" / "checkpoint" / "latest.json").read_text())
    assert p.returncode == -signal.SIGKILL and latest["step"] == 3
    p = _driver("none", args)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    runs = [json.loads((tmp_path / d / "completion_cola_s0" / "results.json").read_text()) for d in ("ref", "run")]
    assert runs[1]["resumed_from"] == [3] and runs[1]["train_loss"] == runs[0]["train_loss"]
    a, b = (load_file(tmp_path / d / "export" / "model.safetensors") for d in ("ref", "run"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ the built-in model, end to end
@pytest.mark.slow  # SmolLM2-135M on 2 CPU cores: about a minute per run
@pytest.mark.parametrize("kind", ["completion", "text"])
def test_smollm2_end_to_end_with_chain_knots_and_export(kind, data, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cola_opt.llm.lm_objective import CompletionLM, TextLM

    source = data / ("pairs.jsonl" if kind == "completion" else "docs")
    extra = ["--chat-template", "true", "--max-length", "64"] if kind == "completion" else ["--max-length", "64"]
    code, printed = _run(["finetune", "--task", kind, "--train-file", str(source), "--n-train", "8", "--n-dev", "2",
                          "--n-test", "4", "--max-steps", "4", "--batch-size", "2", "--chain-length", "2",
                          "--lr", "1e-3", "--autocast", "none", "--progress", "false", *extra,
                          "--output-dir", str(tmp_path / "runs"), "--export-dir", str(tmp_path / "export")], capsys)
    assert code == 0, printed
    r = json.loads((tmp_path / "runs" / f"{kind}_cola_s0" / "results.json").read_text())
    assert r["total_steps"] == 4 and r["knot_steps"] == [2] and len(r["knots"]) == 1
    assert math.isfinite(r["test"]["loss"]) and r["test"]["perplexity"] > 1
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "export")
    objective = CompletionLM(tok, 64, chat_template=True) if kind == "completion" else TextLM(tok, 64)
    splits = UserData(kind, str(source)).sample(seed=0, n_train=8, n_dev=2, n_test=4)
    again = objective.evaluate(model, objective.encode(splits.test), batch_size=4, desc=None)
    assert again["loss"] == pytest.approx(r["test"]["loss"], rel=1e-4)  # the export is the trained model


def test_eval_every_and_dev_each_epoch_set_the_dev_points_and_leave_training_unchanged(tiny_model_dir, data, tmp_path, deterministic):
    """Dev evaluations every 3 steps (12 steps, 4 per epoch): points at 3, 4, 6, 8, 9, 12; the same losses and test."""
    base = dict(task="completion", model=str(tiny_model_dir), train_file=str(data / "pairs.jsonl"), n_train=16,
                n_dev=4, n_test=4, epochs=3, batch_size=4, knot_steps=(4, 8), lora_dropout=0.1, lr=1e-2,
                autocast="none", progress=False)
    plain = finetune(FinetuneConfig(**base, output_dir=str(tmp_path / "plain")))
    every = finetune(FinetuneConfig(**base, eval_every=3, output_dir=str(tmp_path / "every")))
    assert [d["step"] for d in plain["dev_history"]] == [4, 8, 12]
    assert [d["step"] for d in every["dev_history"]] == [3, 4, 6, 8, 9, 12]
    assert every["train_loss"] == plain["train_loss"] and every["test"] == plain["test"]
    assert every["dev_history"][-1] == plain["dev_history"][-1]
    last = finetune(FinetuneConfig(**base, dev_each_epoch=False, output_dir=str(tmp_path / "last")))
    assert [d["step"] for d in last["dev_history"]] == [12] and last["train_loss"] == plain["train_loss"]
    assert last["dev_history"][-1] == plain["dev_history"][-1]
    with pytest.raises(ValueError, match="eval_every = -1 must be an integer >= 0"):
        FinetuneConfig(**base, eval_every=-1).validate()
