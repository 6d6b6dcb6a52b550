"""ReLoRA and GaLore (and the ranks of LoRA and COLA) through the one trainer, on the tiny Llama and WSC.

What each method trains, ReLoRA's optimizer pruning at every knot and its re-warmed LR
(against the formula written out here), GaLore's projector (against an SVD of the
gradient it was taken from), the full export of GaLore, and resume after a crash, bit for
bit, for every method that checkpoints. 24 training examples, batch 4, 2 epochs: 12 steps.
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

from cola_opt.llm import objective, trainer
from cola_opt.llm.checkpoint import pack_state
from cola_opt.llm.config import FinetuneConfig
from cola_opt.llm.galore import galore_optimizer, galore_projectors
from cola_opt.llm.trainer import finetune

REPO = Path(__file__).resolve().parents[1]
SUPER_GLUE = REPO.parent / "shared" / "data" / "super_glue"
pytestmark = [pytest.mark.skipif(not (SUPER_GLUE / "WSC").is_dir(), reason=f"{SUPER_GLUE} is not present"),
              pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")]

SETTINGS = dict(task="wsc", n_train=24, n_dev=8, n_test=16, epochs=2, batch_size=4, lr=1e-3, autocast="none",
                progress=False)
TARGETS = [f"base_model.model.model.layers.{i}.self_attn.{m}_proj" for i in (0, 1) for m in ("q", "v")]


def _cfg(model_dir, out: Path, **kw) -> FinetuneConfig:
    return FinetuneConfig(**{**SETTINGS, "model": str(model_dir), "data_dir": str(SUPER_GLUE), "output_dir": str(out),
                             **kw})


@pytest.fixture()
def built(monkeypatch):
    """What :func:`trainer.build_chain` built, and ``hooks(chain)`` to run on the chain before training."""
    seen = {"hooks": []}
    real = trainer.build_chain

    def build(cfg, model, total_steps, knots):
        model, chain, sched = real(cfg, model, total_steps, knots)
        seen.update(model=model, chain=chain, sched=sched,
                    trainable={n: p.numel() for n, p in model.named_parameters() if p.requires_grad})
        for hook in seen["hooks"]:
            hook(chain)
        return model, chain, sched

    monkeypatch.setattr(trainer, "build_chain", build)
    return seen


# ------------------------------------------------------------------ what each method trains
def _lora_names(prefix):
    return {f"{prefix}.lora_{f}.default.weight" for f in ("A", "B")}


@pytest.mark.parametrize("method,kw,names,numel,knots", [
    ("lora", dict(rank=1), set().union(*map(_lora_names, TARGETS)), 224 * 1, []),  # 2 layers x (q 64 r + v 48 r)
    ("cola", dict(rank=2, chain_length=3), set().union(*map(_lora_names, TARGETS)), 224 * 2, [2, 4]),
    ("cola", dict(rank=1, chain_length=6), set().union(*map(_lora_names, TARGETS)), 224 * 1, [1, 2, 3, 4, 5]),
    ("relora", dict(rank=4, chain_length=3), set().union(*map(_lora_names, TARGETS)), 224 * 4, [2, 4]),
    ("galore", dict(galore_rank=4), {t.removeprefix("base_model.model.") + ".weight" for t in TARGETS},
     2 * (32 * 32 + 16 * 32), []),
    ("galore", dict(galore_rank=4, galore_train_others=True), None, None, []),
    ("full", {}, None, None, []),
])
def test_each_method_trains_its_own_set(method, kw, names, numel, knots, tiny_model_dir, tmp_path, built,
                                        deterministic):
    from transformers import AutoModelForCausalLM

    r = finetune(_cfg(tiny_model_dir, tmp_path, method=method, max_steps=6, **kw))
    if names is None:  # every weight of the model
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        names, numel = {n for n, _ in base.named_parameters()}, sum(p.numel() for p in base.parameters())
    assert set(built["trainable"]) == names and sum(built["trainable"].values()) == numel
    assert r["knot_steps"] == knots and [k["step"] for k in r["knots"]] == knots
    assert len(r["train_loss"]) == 6 and all(map(math.isfinite, r["train_loss"]))


# ------------------------------------------------------------------ ReLoRA: pruning and LR
def _state_snapshot(chain):
    return {id(p): {k: v.clone() for k, v in chain.optimizer.state[p].items()} for p in chain.factor_parameters()}


@pytest.mark.parametrize("reset,ratio", [(None, 0.99), ("prune:0.5", 0.5)])
def test_relora_prunes_each_state_tensor_by_magnitude_at_each_knot(reset, ratio, tiny_model_dir, tmp_path, built,
                                                                   deterministic):
    before, checked = {}, []

    def after(chain, record):
        for p in chain.factor_parameters():
            for key, v in chain.optimizer.state[p].items():
                old = before[id(p)][key]
                if key == "step":  # the step counter stays
                    assert torch.equal(v, old)
                    continue
                k = int(ratio * v.numel())
                pruned = v == 0
                assert int(pruned.sum()) == k  # exactly the fraction asked for (no ties in these moments)
                assert torch.equal(v[~pruned], old[~pruned])  # the rest is kept as it was
                assert float(old[pruned].abs().max()) <= float(old[~pruned].abs().min())  # the smallest went
                checked.append((record.step, key, k / v.numel()))

    built["hooks"].append(lambda c: c.add_knot_hook(lambda ch, rec: before.update(_state_snapshot(ch)), when="before"))
    built["hooks"].append(lambda c: c.add_knot_hook(after, when="after"))
    extra = {} if reset is None else {"relora_reset": reset}
    r = finetune(_cfg(tiny_model_dir, tmp_path, method="relora", rank=4, knot_steps=(4, 8), **extra))
    assert r["knot_steps"] == [4, 8] and [k["step"] for k in r["knots"]] == [4, 8]
    sizes = sorted({round(f, 4) for _, _, f in checked})
    assert {s for s, _, _ in checked} == {4, 8} and {key for _, key, _ in checked} == {"exp_avg", "exp_avg_sq"}
    assert len(checked) == 2 * 8 * 2  # 2 knots x 8 factors x 2 moments
    assert all(ratio - 1 / 64 < f <= ratio for f in sizes)  # int(ratio * n) / n for n in {64, 128}


def _jagged(t, total, knots, rewarm):
    """ReLoRA's jagged cosine factor (Lialin et al. 2023, Figure 2), written out: floor 0.1, no first warm-up."""
    def env(s):
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / total))

    for s in knots:
        if s <= t < s + rewarm:
            return (t - s) / rewarm * env(s + rewarm)
    return env(t)


@pytest.mark.parametrize("method,schedule,rewarm", [("relora", None, 2), ("cola", "jagged-cosine", 2),
                                                    ("relora", None, None), ("relora", "linear", None)])
def test_the_lr_of_every_step_rewarms_after_each_knot(method, schedule, rewarm, tiny_model_dir, tmp_path, built,
                                                      deterministic):
    lrs = []

    def record(chain):
        step = chain.optimizer.step
        chain.optimizer.step = lambda *a, **k: lrs.append(chain.optimizer.param_groups[0]["lr"]) or step(*a, **k)

    built["hooks"].append(record)
    finetune(_cfg(tiny_model_dir, tmp_path, method=method, knot_steps=(4, 8), lr_schedule=schedule,
                  restart_warmup_steps=rewarm))
    if schedule == "linear":
        expected = [1e-3 * (1 - t / 12) for t in range(12)]  # COLA's: the knots do not touch it
    else:  # the default re-warm-up: a twentieth of the 4-step links, rounded, at least 1
        expected = [1e-3 * _jagged(t, 12, (4, 8), rewarm or 1) for t in range(12)]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-18)
    if schedule != "linear":
        assert lrs[4] == lrs[8] == 0.0 and lrs[3] > lrs[5] > 0  # each link starts at 0 and climbs back


# ------------------------------------------------------------------ GaLore
def test_galore_projects_on_the_top_singular_vectors_refreshed_every_gap(tiny_model_dir, tmp_path, built,
                                                                         deterministic):
    steps = []

    def record(chain):
        opt, step = chain.optimizer, chain.optimizer.step

        def recording_step(*a, **k):
            grads = {p: p.grad.clone() for g in opt.param_groups for p in g["params"]}
            step(*a, **k)
            steps.append((grads, {p: m.clone() for p, m in galore_projectors(opt).items()}))

        opt.step = recording_step

    built["hooks"].append(record)
    r = finetune(_cfg(tiny_model_dir, tmp_path, method="galore", galore_rank=4, galore_update_proj_gap=5,
                      galore_scale=0.5, export_dir=str(tmp_path / "export")))
    assert len(steps) == 12
    opt = built["chain"].optimizer
    weights = opt.param_groups[1]["params"]
    assert opt.param_groups[0]["params"] == [] and opt.param_groups[1]["rank"] == 4
    for i, (grads, projectors) in enumerate(steps):
        for w in weights:
            P = projectors[w]
            m, n = w.shape
            if i % 5 == 0:  # a new SVD at optimizer iterations 0, 5 and 10: P spans the gradient's top 4 vectors
                U, _, Vh = torch.linalg.svd(grads[w], full_matrices=False)
                top = Vh[:4] if m >= n else U[:, :4].T
                got = P if m >= n else P.T
                torch.testing.assert_close(got.T @ got, top.T @ top, atol=1e-5, rtol=0)
            else:  # kept between
                assert torch.equal(P, steps[i - 1][1][w])
            assert tuple(P.shape) == ((4, n) if m >= n else (m, 4))  # the smaller side is projected
            state = opt.state[w]
            assert tuple(state["exp_avg"].shape) == ((m, 4) if m >= n else (4, n))  # Adam's moments in rank 4
    assert not torch.equal(steps[4][1][weights[0]], steps[5][1][weights[0]])
    # the export is the whole model: the targets changed, every other weight is the base's
    from transformers import AutoModelForCausalLM

    out = load_file(Path(r["export_dir"]) / "model.safetensors")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    changed = {k for k, v in out.items() if not torch.equal(v, base[k])}
    assert changed == {t.removeprefix("base_model.model.") + ".weight" for t in TARGETS}
    assert set(out) == set(base) - {"lm_head.weight"} or set(out) == set(base)  # tied embeddings may be saved once


def test_galore_state_is_checkpointable_only_through_our_hooks():
    from galore_torch import GaLoreAdamW

    from cola_opt.llm.checkpoint import unpack_state

    def stepped(make):
        torch.manual_seed(0)
        lin = torch.nn.Sequential(torch.nn.Linear(6, 4))
        opt = make(lin)
        lin(torch.randn(3, 6)).sum().backward()
        opt.step()
        return lin, opt

    _, plain = stepped(lambda lin: GaLoreAdamW([{"params": [lin[0].weight], "rank": 2, "update_proj_gap": 2,
                                                 "scale": 1.0, "proj_type": "std"}], lr=1e-2,
                                               no_deprecation_warning=True))
    with pytest.raises(TypeError, match="cannot store GaLoreProjector"):  # what our hooks are for
        pack_state(plain.state_dict(), {}, "chain")
    make = lambda lin: galore_optimizer(lin, target_modules=("0",), rank=2, update_proj_gap=2, scale=1.0, lr=1e-2)
    lin, ours = stepped(make)
    tensors = {}
    packed = pack_state(ours.state_dict(), tensors, "chain")
    (key, state), = packed["state"]["__items__"]  # the state of parameter 0
    assert key == 0 and state["projector"] == {"ortho_matrix": {"__tensor__": "chain.state.0.projector.ortho_matrix"}}
    assert type(ours.state[lin[0].weight]["projector"]).__name__ == "GaLoreProjector"  # the live state is untouched
    fresh_lin = torch.nn.Sequential(torch.nn.Linear(6, 4))
    fresh = make(fresh_lin)
    fresh.load_state_dict(unpack_state(packed, {k: v.clone() for k, v in tensors.items()}))
    restored = fresh.state[fresh_lin[0].weight]["projector"]
    assert type(restored).__name__ == "GaLoreProjector" and restored.proj_type == "std" and restored.rank == 2
    assert restored.update_proj_gap == 2 and restored.scale == 1.0
    assert torch.equal(restored.ortho_matrix, ours.state[lin[0].weight]["projector"].ortho_matrix)


# ------------------------------------------------------------------ resume after a crash
RESUMED = {
    "relora": dict(rank=4, knot_steps=(4, 8), restart_warmup_steps=1, lora_dropout=0.1),
    "galore": dict(galore_rank=4, galore_update_proj_gap=4),
    "galore-others": dict(method="galore", galore_rank=4, galore_update_proj_gap=4, galore_train_others=True),
    "full": {},
}


def _resume_cfg(name, model_dir, out):
    kw = dict(RESUMED[name])
    return _cfg(model_dir, out, **{"method": name, **kw, "checkpoint_every": 3, "export_dir": str(out / "export")})


def _same_run(r, ref):
    assert r["train_loss"] == ref["train_loss"] and r["test"] == ref["test"]
    a, b = load_file(Path(r["export_dir"]) / "model.safetensors"), load_file(Path(ref["export_dir"]) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", list(RESUMED))
def test_resume_after_a_crash_is_bitwise_the_uninterrupted_run(name, tiny_model_dir, tmp_path, monkeypatch,
                                                               deterministic):
    ref = finetune(_resume_cfg(name, tiny_model_dir, tmp_path / "ref"))
    real, calls = objective.classification_loss, [0]

    def crash_at_7(scores, labels):
        calls[0] += 1
        if calls[0] == 7:  # in step 7: the last checkpoint is step 6
            raise RuntimeError("simulated crash")
        return real(scores, labels)

    monkeypatch.setattr(objective, "classification_loss", crash_at_7)
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune(_resume_cfg(name, tiny_model_dir, tmp_path / "run"))
    monkeypatch.undo()
    r = finetune(_resume_cfg(name, tiny_model_dir, tmp_path / "run"))
    assert r["resumed_from"] == [6] and [c["step"] for c in r["checkpoints"]] == [3, 6, 9, 12]
    _same_run(r, ref)


@pytest.mark.slow  # two subprocesses of a few seconds each
def test_sigkill_of_galore_then_resume_is_bitwise_the_uninterrupted_run(tiny_model_dir, tmp_path, deterministic):
    """SIGKILL once the first checkpoint (step 3) is on disk; the next process resumes from it and ends as the reference."""
    ref = finetune(_resume_cfg("galore", tiny_model_dir, tmp_path / "ref"))
    options = {**SETTINGS, **RESUMED["galore"], "method": "galore", "model": tiny_model_dir, "data_dir": SUPER_GLUE,
               "output_dir": tmp_path / "run", "checkpoint_every": 3, "export_dir": tmp_path / "run" / "export"}
    args = [x for k, v in options.items() for x in ("--" + k.replace("_", "-"), str(v))]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = [sys.executable, str(REPO / "tests" / "resume_driver.py")]
    p = subprocess.Popen([*driver, "pointer", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = next((x for x in p.stdout if x.startswith("PAUSED")), "")
    p.send_signal(signal.SIGKILL)
    _, err = p.communicate(timeout=120)
    assert line.split()[1:] == ["pointer", "step-000003"], err[-2000:]
    assert p.returncode == -signal.SIGKILL
    done = subprocess.run([*driver, "none", *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads((tmp_path / "run" / "wsc_galore_s0" / "results.json").read_text())
    assert r["resumed_from"] == [3]
    _same_run(r, ref)
