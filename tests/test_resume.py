"""Checkpoints, resume, the non-finite guard and export in the fine-tuning loop.

Every resumed run is compared with one uninterrupted run of the same configuration,
bit for bit (deterministic CPU settings: one thread, deterministic algorithms, no
autocast, the tiny Llama): train losses, dev and test results, and the exported weights.
The run has 12 steps, knots after steps 4 and 8 with ranks 8, 4, 2, LoRA dropout (so the
RNG state matters) and a checkpoint every 3 steps.
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
from safetensors.torch import load_file

from cola_opt.llm import checkpoint, objective, trainer
from cola_opt.llm import compare as compare_module
from cola_opt.llm.cli import main
from cola_opt.llm.config import FinetuneConfig
from cola_opt.llm.guard import NonFiniteError
from cola_opt.llm.trainer import finetune

REPO = Path(__file__).resolve().parents[1]
SUPER_GLUE = REPO.parent / "shared" / "data" / "super_glue"
pytestmark = pytest.mark.skipif(not (SUPER_GLUE / "WSC").is_dir(), reason=f"{SUPER_GLUE} is not present")

SETTINGS = dict(task="wsc", n_train=24, n_dev=8, n_test=16, epochs=2, batch_size=4, knot_steps=(4, 8),
                link_ranks=(8, 4, 2), lora_dropout=0.1, lr=1e-3, autocast="none", progress=False, checkpoint_every=3,
                threads=1)  # bit-exact comparisons: auto could change the thread count, and float sums with it


def _cfg(model_dir, out: Path, **kw) -> FinetuneConfig:
    args = dict(SETTINGS, model=str(model_dir), data_dir=str(SUPER_GLUE), output_dir=str(out),
                export_dir=str(out / "export"))
    args.update(kw)
    return FinetuneConfig(**args)


def _cli_args(model_dir, out: Path) -> list[str]:
    args = []
    for k, v in dict(SETTINGS, model=model_dir, data_dir=SUPER_GLUE, output_dir=out, export_dir=out / "export").items():
        args += ["--" + k.replace("_", "-"), ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    return args


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory, deterministic):
    """One uninterrupted run: its results and its exported weights."""
    out = tmp_path_factory.mktemp("reference")
    r = finetune(_cfg(tiny_model_dir, out))
    assert r["resumed_from"] == [] and [c["step"] for c in r["checkpoints"]] == [3, 6, 9, 12]
    assert not (out / "wsc_cola_s0" / "checkpoint").exists()  # deleted once results.json is written
    return r, load_file(out / "export" / "model.safetensors")


def _assert_same_run(result: dict, reference, same_eval_batches: bool = True) -> None:
    ref, ref_weights = reference
    assert result["train_loss"] == ref["train_loss"]  # floats, compared exactly
    if same_eval_batches:
        assert result["dev_history"] == ref["dev_history"]
        assert result["test"] == ref["test"]
    else:  # other padding in the evaluation: the same predictions, losses within float rounding
        assert result["test"]["predictions"] == ref["test"]["predictions"]
        assert result["test"]["loss"] == pytest.approx(ref["test"]["loss"], rel=1e-6)
    assert [(k["step"], k["rank"], k["next_rank"]) for k in result["knots"]] == [(4, 8, 4), (8, 4, 2)]
    weights = load_file(Path(result["export_dir"]) / "model.safetensors")
    assert weights.keys() == ref_weights.keys()
    for name, w in weights.items():
        assert torch.equal(w, ref_weights[name]), name


def _latest(out: Path) -> int:
    return json.loads((out / "wsc_cola_s0" / "checkpoint" / "latest.json").read_text())["step"]


def _fail_at_forward(monkeypatch, n: int, make):
    """Replace the loss of the n-th training forward pass (1-based) with ``make(loss)``."""
    real = objective.classification_loss
    calls = [0]

    def patched(scores, labels):
        calls[0] += 1
        loss = real(scores, labels)
        return make(loss) if calls[0] == n else loss

    monkeypatch.setattr(objective, "classification_loss", patched)


def _crash(loss):
    raise RuntimeError("simulated crash")


# ------------------------------------------------------------------ resume
@pytest.mark.parametrize("crash_at", [8, 10])  # in the step that ties the second knot; between checkpoints
def test_resume_after_a_crash_is_bitwise_the_uninterrupted_run(crash_at, tiny_model_dir, tmp_path, reference,
                                                                 monkeypatch):
    _fail_at_forward(monkeypatch, crash_at, _crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune(_cfg(tiny_model_dir, tmp_path))
    assert _latest(tmp_path) == 3 * ((crash_at - 1) // 3)
    monkeypatch.undo()
    r = finetune(_cfg(tiny_model_dir, tmp_path))
    assert r["resumed_from"] == [3 * ((crash_at - 1) // 3)]
    _assert_same_run(r, reference)
    assert not (tmp_path / "wsc_cola_s0" / "checkpoint").exists()


def test_ctrl_c_finishes_the_step_writes_a_checkpoint_and_resumes(tiny_model_dir, tmp_path, reference, monkeypatch):
    def interrupt(loss):
        signal.raise_signal(signal.SIGINT)  # noted by the trainer; the step goes on
        return loss

    _fail_at_forward(monkeypatch, 5, interrupt)
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN when started in the background
    with pytest.raises(KeyboardInterrupt, match="SIGINT after step 5; run the same command again"):
        finetune(_cfg(tiny_model_dir, tmp_path))
    assert _latest(tmp_path) == 5  # off the every-3 schedule: written on the way out
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    monkeypatch.undo()
    r = finetune(_cfg(tiny_model_dir, tmp_path))
    assert r["resumed_from"] == [5] and [c["step"] for c in r["checkpoints"]] == [3, 5, 6, 9, 12]
    _assert_same_run(r, reference)


def test_a_second_signal_interrupts_at_once():
    notes = []
    before = signal.getsignal(signal.SIGTERM)
    with checkpoint.DeferredInterrupt(notify=notes.append) as d:
        assert getattr(signal.getsignal(signal.SIGTERM), "__self__", None) is d  # else the next line would end pytest
        signal.raise_signal(signal.SIGTERM)
        assert d.requested == "SIGTERM" and "finishing this step" in notes[0]
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


def _checkpoint_after_crash(model_dir, out, monkeypatch, at=5):
    _fail_at_forward(monkeypatch, at, _crash)
    with pytest.raises(RuntimeError):
        finetune(_cfg(model_dir, out))
    monkeypatch.undo()


def test_compare_restarted_after_a_kill_skips_the_methods_that_finished(tiny_model_dir, tmp_path, monkeypatch):
    from cola_opt.llm.compare import compare

    cfg = _cfg(tiny_model_dir, tmp_path, max_steps=4, knot_steps=None, link_ranks=None, chain_length=2, export_dir=None)
    first = compare(cfg)["methods"]
    (tmp_path / "wsc_cola_s0" / "results.json").unlink()  # as if killed while COLA trained
    trained = []
    real = compare_module.finetune
    monkeypatch.setattr(compare_module, "finetune", lambda c, splits=None: trained.append(c.method) or real(c, splits))

    again = compare(cfg.replace(progress=True, eval_batch_size=2))["methods"]  # fields a resume may change
    assert trained == ["cola"]
    assert again["lora"]["test"] == first["lora"]["test"] and again["lora"]["train_loss"] == first["lora"]["train_loss"]
    assert again["cola"]["test"]["n"] == 16

    trained.clear()
    compare(cfg.replace(lr=5e-4))  # another setting: everything runs again
    assert trained == ["zero-shot", "lora", "cola"]
    trained.clear()
    compare(cfg.replace(lr=5e-4, resume="never"))
    assert trained == ["zero-shot", "lora", "cola"]


@pytest.mark.parametrize("change,message", [
    ({"lr": 5e-4}, r"another configuration \(lr: 0\.001 -> 0\.0005\)"),
    ({"rank": 4, "link_ranks": (4, 4, 2)}, r"link_ranks: \[8, 4, 2\] -> \[4, 4, 2\]; rank: 8 -> 4"),
    ({"max_steps": 10}, r"max_steps: None -> 10"),
])
def test_resume_refuses_a_config_that_trains_differently(change, message, tiny_model_dir, tmp_path, monkeypatch,
                                                         deterministic):
    _checkpoint_after_crash(tiny_model_dir, tmp_path, monkeypatch)
    loaded = []
    monkeypatch.setattr(trainer, "load_model", lambda *a, **k: loaded.append(1))
    with pytest.raises(ValueError, match=message):
        finetune(_cfg(tiny_model_dir, tmp_path, **change))
    assert not loaded and _latest(tmp_path) == 3  # refused before the model was loaded; the checkpoint kept


def test_resume_refuses_other_training_data(tiny_model_dir, tmp_path, monkeypatch, deterministic):
    from cola_opt.llm.tasks import get_task, sample_splits

    _checkpoint_after_crash(tiny_model_dir, tmp_path, monkeypatch)
    other = sample_splits(get_task("wsc"), seed=1, n_train=24, n_dev=8, n_test=16, data_dir=str(SUPER_GLUE))
    with pytest.raises(ValueError, match="the data differ from those of the run that wrote it"):
        finetune(_cfg(tiny_model_dir, tmp_path), other)


def test_resume_refuses_a_model_whose_frozen_weights_changed(tiny_model_dir, tmp_path, monkeypatch, deterministic):
    import shutil

    from safetensors.torch import save_file

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    _fail_at_forward(monkeypatch, 5, _crash)
    with pytest.raises(RuntimeError):
        finetune(_cfg(model_dir, tmp_path))
    monkeypatch.undo()
    weights = load_file(model_dir / "model.safetensors")
    name = next(n for n in weights if "mlp" in n)  # not adapted: the checkpoint does not hold it
    weights[name][0, 0] += 1e-3
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="the frozen weights differ from those of the run that wrote it"):
        finetune(_cfg(model_dir, tmp_path))


def test_resume_modes_require_and_never(tiny_model_dir, tmp_path, monkeypatch, capsys, deterministic):
    with pytest.raises(FileNotFoundError, match="resume 'require': there is no checkpoint in"):
        finetune(_cfg(tiny_model_dir, tmp_path, resume="require"))
    code = main(["finetune", *_cli_args(tiny_model_dir, tmp_path), "--resume", "require"])
    assert code == 2 and "cola-opt: error: resume 'require': there is no checkpoint" in capsys.readouterr().err
    _checkpoint_after_crash(tiny_model_dir, tmp_path, monkeypatch)
    r = finetune(_cfg(tiny_model_dir, tmp_path, resume="never", max_steps=2, knot_steps=(1,), link_ranks=None,
                      export_dir=None))
    assert r["resumed_from"] == [] and len(r["train_loss"]) == 2  # a new run: the old checkpoint was deleted


def test_settings_that_do_not_change_the_weights_may_change_on_resume(tiny_model_dir, tmp_path, reference,
                                                                      monkeypatch):
    _checkpoint_after_crash(tiny_model_dir, tmp_path, monkeypatch)
    r = finetune(_cfg(tiny_model_dir, tmp_path, checkpoint_every=5, eval_batch_size=3, nonfinite="skip"))
    assert r["resumed_from"] == [3] and [c["step"] for c in r["checkpoints"]] == [3, 5, 10, 12]
    _assert_same_run(r, reference, same_eval_batches=False)


# ------------------------------------------------------------------ the non-finite guard
def test_stop_checkpoints_the_last_finite_step_and_a_resume_continues_exactly(tiny_model_dir, tmp_path, reference,
                                                                              monkeypatch):
    _fail_at_forward(monkeypatch, 5, lambda loss: loss * float("nan"))
    with pytest.raises(NonFiniteError, match=r"non-finite loss \(nan\) at step 5.*The state after step 4 is "
                                             r"checkpointed in .*step-000004.*--nonfinite skip") as info:
        finetune(_cfg(tiny_model_dir, tmp_path))
    assert info.value.step == 5 and _latest(tmp_path) == 4
    monkeypatch.undo()  # the NaN was transient: the resumed run is the uninterrupted one
    _assert_same_run(finetune(_cfg(tiny_model_dir, tmp_path)), reference)


def test_stop_without_checkpoints_says_nothing_was_saved(tiny_model_dir, tmp_path, monkeypatch, deterministic):
    _fail_at_forward(monkeypatch, 2, lambda loss: loss * float("inf"))
    with pytest.raises(NonFiniteError, match=r"non-finite loss \(inf\) at step 2.*Checkpointing is off"):
        finetune(_cfg(tiny_model_dir, tmp_path, checkpoint_every=0, export_dir=None))
    assert not (tmp_path / "wsc_cola_s0").exists()


def test_skip_drops_the_update_but_counts_the_step(tiny_model_dir, tmp_path, reference, monkeypatch):
    ref, _ = reference
    _fail_at_forward(monkeypatch, 3, lambda loss: loss * float("nan"))
    steps = []
    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k))
    r = finetune(_cfg(tiny_model_dir, tmp_path, nonfinite="skip"))
    assert r["skipped_steps"] == [3] and len(steps) == 11  # 12 steps, one update dropped
    assert math.isnan(r["train_loss"][2]) and all(math.isfinite(x) for i, x in enumerate(r["train_loss"]) if i != 2)
    assert r["train_loss"][:2] == ref["train_loss"][:2] and r["train_loss"][3] != ref["train_loss"][3]
    # the skipped step still counted: the knots fall on their steps, at the scheduled learning rates
    assert [(k["step"], k["lr"]) for k in r["knots"]] == [(k["step"], k["lr"]) for k in ref["knots"]]
    weights = load_file(Path(r["export_dir"]) / "model.safetensors")
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())


# ------------------------------------------------------------------ export
def test_export_reloads_with_the_trained_models_logits(tiny_model_dir, tmp_path, monkeypatch, deterministic):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    seen = {}
    real_export = trainer.export_merged

    def export_and_remember(chain, peft_model, out_dir, **kw):
        peft_model.eval()
        with torch.no_grad():
            seen["logits"] = peft_model(input_ids=ids).logits
        seen["live_link"] = float(chain.sites[0].lora_B.abs().max())
        return real_export(chain, peft_model, out_dir, **kw)

    monkeypatch.setattr(trainer, "export_merged", export_and_remember)
    cfg = _cfg(tiny_model_dir, tmp_path, checkpoint_every=0, export_links=str(tmp_path / "links"))
    r = finetune(cfg)
    assert seen["live_link"] > 0  # the last link was trained and had to be merged by the export
    model = AutoModelForCausalLM.from_pretrained(r["export_dir"]).eval()
    assert not any("lora" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, seen["logits"], atol=1e-5, rtol=0)
    assert AutoTokenizer.from_pretrained(r["export_dir"]).pad_token == "<pad>"
    record = json.loads((Path(r["export_dir"]) / "chain.json").read_text())
    assert record["knot_steps"] == [4, 8] and [k["step"] for k in record["knots"]] == [4, 8, 12]
    assert record["ranks"] == [8, 4, 2] and [k["rank"] for k in record["knots"]] == [8, 4, 2]
    # the LR of each link's last step; the export's merge records the LR after the last step (0)
    assert [k["lr"][0] for k in record["knots"]] == pytest.approx([1e-3 * 9 / 12, 1e-3 * 5 / 12, 0.0])
    assert record["extra"]["task"] == "wsc" and record["extra"]["lr"] == 1e-3
    assert sorted(p.name for p in (tmp_path / "links").iterdir()) == ["link-00", "link-01", "link-02"]
    assert json.loads((tmp_path / "links" / "link-02" / "adapter_config.json").read_text())["r"] == 2


def test_full_finetuning_exports_the_trained_model(tiny_model_dir, tmp_path, deterministic):
    from transformers import AutoModelForCausalLM

    r = finetune(_cfg(tiny_model_dir, tmp_path, method="full", max_steps=2, knot_steps=None, link_ranks=None))
    model = AutoModelForCausalLM.from_pretrained(r["export_dir"])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, base.get_parameter(n))]
    assert len(changed) == len(list(base.parameters()))  # every weight trained and exported


def test_links_without_an_export_and_compare_exports_per_method(tiny_model_dir, tmp_path, deterministic):
    from cola_opt.llm.compare import compare

    r = finetune(_cfg(tiny_model_dir, tmp_path, method="lora", max_steps=2, knot_steps=None, link_ranks=None,
                      checkpoint_every=0, export_dir=None, export_links=str(tmp_path / "only-links")))
    assert r["export_dir"] is None
    link = load_file(tmp_path / "only-links" / "link-00" / "adapter_model.safetensors")
    assert any("lora_B" in k and float(v.abs().max()) > 0 for k, v in link.items())  # the trained last link

    compare(_cfg(tiny_model_dir, tmp_path / "cmp", max_steps=4, knot_steps=None, link_ranks=None, chain_length=2,
                 checkpoint_every=0, export_links=str(tmp_path / "cmp-links")), methods=("zero-shot", "lora", "cola"))
    assert sorted(p.name for p in (tmp_path / "cmp" / "export").iterdir()) == ["cola", "lora"]
    assert sorted(p.name for p in (tmp_path / "cmp-links" / "cola").iterdir()) == ["link-00", "link-01"]
    assert sorted(p.name for p in (tmp_path / "cmp-links" / "lora").iterdir()) == ["link-00"]


@pytest.mark.parametrize("change,message", [
    ({"checkpoint_every": -1}, "checkpoint_every must be an integer >= 0"),
    ({"resume": "yes"}, r"resume 'yes' must be one of \('auto', 'require', 'never'\)"),
    ({"nonfinite": "ignore"}, r"nonfinite 'ignore' must be one of \('skip', 'stop'\)"),
    ({"method": "zero-shot", "knot_steps": None, "link_ranks": None}, "export_dir and export_links need a trained"),
    ({"method": "full", "knot_steps": None, "link_ranks": None, "export_links": "x"}, "method full has no links"),
    ({"export_links": "EXPORT/links"}, "must lie outside export_dir"),
])
def test_bad_robustness_settings_fail_before_any_work(change, message, tiny_model_dir, tmp_path):
    if change.get("export_links") == "EXPORT/links":
        change["export_links"] = str(tmp_path / "export" / "links")
    with pytest.raises(ValueError, match=message):
        finetune(_cfg(tiny_model_dir, tmp_path, **change))
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ kill -9 at several points
def _start(pause: str, model_dir, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "resume_driver.py"), pause,
                             *_cli_args(model_dir, out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_pause(proc: subprocess.Popen) -> str:
    for line in proc.stdout:
        if line.startswith("PAUSED"):
            return line.split(maxsplit=1)[1].strip()
    proc.wait()
    raise AssertionError(f"the driver ended (rc {proc.returncode}) before its pause:\n{proc.stderr.read()[-3000:]}")


def _kill(proc: subprocess.Popen, sig=signal.SIGKILL) -> int:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    proc.err = err
    return proc.returncode


@pytest.mark.slow  # four subprocesses of a few seconds each: about 20-40 s
def test_kill_minus_nine_anywhere_then_resume_is_bitwise_the_uninterrupted_run(tiny_model_dir, tmp_path, reference):
    root = tmp_path / "wsc_cola_s0" / "checkpoint"
    # 1. SIGKILL inside the knot of step 4, with the first site merged and the others not
    p = _start("knot", tiny_model_dir, tmp_path)
    assert _wait_for_pause(p) == "knot"
    assert _kill(p) == -signal.SIGKILL and _latest(tmp_path) == 3
    # 2. resumed at 3; SIGKILL once the checkpoint of step 6 is complete but not yet pointed at
    p = _start("pointer", tiny_model_dir, tmp_path)
    assert _wait_for_pause(p) == "pointer step-000006"
    assert _kill(p) == -signal.SIGKILL and _latest(tmp_path) == 3
    assert (root / "step-000006").is_dir()  # complete, never read: the pointer decides
    # 3. resumed at 3 again; SIGTERM during the forward pass of step 8 (a knot step): the step and
    #    its knot finish, a checkpoint of step 8 is written, the CLI exits with 130
    p = _start("forward:5", tiny_model_dir, tmp_path)
    assert _wait_for_pause(p) == "forward 5"
    assert _kill(p, signal.SIGTERM) == 130 and _latest(tmp_path) == 8
    assert "cola-opt: interrupted: SIGTERM after step 8; run the same command again" in p.err
    # leftovers gone; the previous checkpoint stays as the fallback
    assert sorted(e.name for e in root.iterdir()) == ["latest.json", "lock", "step-000006", "step-000008"]
    # 4. resumed at 8, to the end
    p = _start("none", tiny_model_dir, tmp_path)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    r = json.loads((tmp_path / "wsc_cola_s0" / "results.json").read_text())
    assert r["resumed_from"] == [3, 8]  # the second resume at 3 wrote no checkpoint that survived
    _assert_same_run(r, reference)
    assert not root.exists()
