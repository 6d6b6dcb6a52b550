"""Bad input through the command line, as an adversary tries it (issue 9).

Every case runs ``cola_opt.llm.cli.main([...])`` in-process on the tiny random Llama
(a copy saved inside the case's folder) and the original WSC files. For each bad input
it asserts exit code 2 (1 for a run that starts and then stops on a non-finite value),
exactly one ``cola-opt: error:`` line that names the value, no traceback, and that no
file outside the output folder was created, changed or deleted (a snapshot of the case's
folder, the model folder included, before and after). For each valid but odd input it
asserts a finished run (exit 0) with its ``results.json`` written.

The cases are rows of :data:`CASES`: add a row for each new item.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cola_opt.llm import objective, trainer
from cola_opt.llm.cli import main

SUPER_GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "super_glue"
FIXTURE_BOOLQ = Path(__file__).resolve().parent / "fixtures" / "super_glue" / "BoolQ"
pytestmark = pytest.mark.skipif(not (SUPER_GLUE / "WSC").is_dir(), reason=f"{SUPER_GLUE} is not present")

RUN = "wsc_cola_s0"  # the run folder of the base arguments


@dataclass
class World:
    """The folders of one case: ``root`` is snapshotted, ``out`` (inside it) is the output folder."""

    root: Path
    model: Path
    out: Path
    template: Path  # a run folder holding two checkpoints (steps 2 and 3), for the checkpoint cases

    @property
    def ckpt(self) -> Path:
        return self.out / RUN / "checkpoint"


@dataclass(frozen=True)
class Case:
    """One row: extra arguments, what to prepare, and what must come out.

    Attributes:
        name: the case's id.
        args: extra CLI arguments, from the world.
        expect: ``"refused"`` (exit 2), ``"stopped"`` (exit 1: a non-finite value mid-run) or ``"finished"``.
        message: a regex the single error line (or, when finished, the single warning line) must match.
        value: the value the error line must name, from the world.
        setup: prepares files before the snapshot (and may patch, through ``monkeypatch``).
        check: further checks of a finished run, given the world and its ``results.json``.
        own_model: the case changes the model folder, so it gets its own copy (else it uses the
            template's copy, as the checkpoint cases must: a resume checks the model path).
        run: the run folder a finished case writes (the base arguments': ``wsc_cola_s0``).
        test_n: the test examples a finished run must report (``None``: the case's ``check`` sees to it).
        verb: the command (``finetune``, or ``compare`` for a case about it).
    """

    name: str
    args: Callable[[World], list[str]]
    expect: str = "refused"
    message: str = ""
    value: Callable[[World], str] | None = None
    setup: Callable[[World, pytest.MonkeyPatch], None] | None = None
    check: Callable[[World, dict], None] | None = None
    own_model: bool = False
    run: str = RUN
    test_n: int | None = 4
    verb: str = "finetune"


def base_args(w: World, verb: str = "finetune") -> list[str]:
    return [verb, "--model", str(w.model), "--task", "wsc", "--data-dir", str(SUPER_GLUE), "--n-train", "8",
            "--n-dev", "2", "--n-test", "4", "--max-steps", "3", "--batch-size", "4", "--chain-length", "2",
            "--autocast", "none", "--progress", "false", "--output-dir", str(w.out)]


CKPT_ARGS = ["--checkpoint-every", "1"]


# ------------------------------------------------------------------ item 1: exports never delete what was there
def _notes(w: World, _mp) -> None:
    (w.root / "notes").mkdir()
    (w.root / "notes" / "todo.txt").write_text("the user's notes")


def _other_run(w: World, _mp) -> None:
    (w.out / "rte_lora_s0").mkdir(parents=True)
    (w.out / "rte_lora_s0" / "results.json").write_text('{"test": {"accuracy": 0.7}}')


def _home(w: World, mp) -> None:
    (w.root / "home").mkdir()
    (w.root / "home" / ".bashrc").write_text("# mine")
    mp.setenv("HOME", str(w.root / "home"))


def _a_file(w: World, _mp) -> None:
    (w.root / "a-file").write_text("x")


def _read_only(w: World, mp) -> None:
    """``ro/``, a folder nobody may write into: ``os.access`` says so (root, which runs the tests here, ignores
    file modes)."""
    import os

    (w.root / "ro").mkdir()
    real_access, read_only = os.access, (w.root / "ro").resolve()
    mp.setattr(os, "access", lambda p, mode, **kw: False if Path(p).resolve() == read_only
               else real_access(p, mode, **kw))


def _earlier_export(w: World, _mp) -> None:
    """An export this tool wrote before (of the base model), to be replaced."""
    from transformers import AutoModelForCausalLM

    from cola_opt.llm.export import export_full

    export_full(AutoModelForCausalLM.from_pretrained(w.model), w.root / "export")


def _exported(w: World, r: dict) -> None:
    from transformers import AutoModelForCausalLM

    assert r["export_dir"] == str(w.root / "export")
    assert AutoModelForCausalLM.from_pretrained(w.root / "export") is not None
    assert json.loads((w.root / "export" / "cola_opt_export.json").read_text())["kind"] == "merged"


EXPORT_CASES = [
    Case("export into a folder of notes", lambda w: ["--export-dir", str(w.root / "notes")], setup=_notes,
         message="already exists and is not an export of cola_opt: it holds 'todo.txt'",
         value=lambda w: str(w.root / "notes")),
    Case("export links into a folder of notes", lambda w: ["--export-links", str(w.root / "notes")], setup=_notes,
         message="already exists and is not an export of cola_opt", value=lambda w: str(w.root / "notes")),
    Case("export into the output folder", lambda w: ["--export-dir", str(w.out)], setup=_other_run,
         message="is the output folder", value=lambda w: str(w.out)),
    Case("export into a parent of the output folder", lambda w: ["--export-dir", str(w.root)],
         message="is a parent of the output folder", value=lambda w: str(w.root)),
    Case("export into the run folder", lambda w: ["--export-dir", str(w.out / RUN)],
         message="is the run folder", value=lambda w: str(w.out / RUN)),
    Case("export into the home folder", lambda w: ["--export-dir", str(w.root / "home")], setup=_home,
         message="is the home folder", value=lambda w: str(w.root / "home")),
    Case("export under a file", lambda w: ["--export-dir", str(w.root / "a-file" / "x")], setup=_a_file,
         message="cannot be created: .* is a file", value=lambda w: str(w.root / "a-file" / "x")),
    Case("export into a folder that cannot be written", lambda w: ["--export-dir", str(w.root / "ro" / "export")],
         setup=_read_only, message="cannot be created: .* is not writable",
         value=lambda w: str(w.root / "ro" / "export")),
    Case("export links over the export", lambda w: ["--export-dir", str(w.root / "e"), "--export-links",
                                                    str(w.root / "e" / "links")],
         message="must lie outside export_dir", value=lambda w: str(w.root / "e" / "links")),
    Case("export into a new folder", lambda w: ["--export-dir", str(w.root / "export")], expect="finished",
         check=_exported),
    Case("export over an earlier export", lambda w: ["--export-dir", str(w.root / "export")], expect="finished",
         setup=_earlier_export, check=_exported),
]


# ------------------------------------------------------------------ item 2: no dev examples
def _no_dev(w: World, r: dict) -> None:
    assert r["counts"] == {"train": 8, "dev": 0, "test": 4} and r["dev"]["n"] == 0 and len(r["train_loss"]) == 3
    assert [(h["step"], h["accuracy"]) for h in r["dev_history"]] == [(2, None), (3, None)]  # epoch end, last step


NO_DEV_CASES = [
    Case("no dev examples, with checkpoints", lambda w: ["--n-dev", "0", *CKPT_ARGS], expect="finished", check=_no_dev),
]


# ------------------------------------------------------------------ item 3: a restarted compare on other data
def _compare_then_flip(w: World, _mp) -> None:
    """A finished compare in the output folder (its summary kept as ``first.json``), and a copy of WSC with every
    label flipped."""
    assert _cli(base_args(w, "compare") + CKPT_ARGS) == 0
    shutil.copy(w.out / "wsc_compare_s0.json", w.root / "first.json")
    (w.root / "flipped" / "WSC").mkdir(parents=True)
    for name in ("train.jsonl", "val.jsonl"):
        rows = [json.loads(line) for line in (SUPER_GLUE / "WSC" / name).read_text().splitlines() if line.strip()]
        (w.root / "flipped" / "WSC" / name).write_text("".join(json.dumps({**r, "label": not r["label"]}) + "\n"
                                                               for r in rows))


def _ran_again(w: World, r: dict) -> None:
    first = json.loads((w.root / "first.json").read_text())["methods"]
    now = json.loads((w.out / "wsc_compare_s0.json").read_text())["methods"]
    assert all(now[m]["data_fingerprint"] != first[m]["data_fingerprint"] for m in first)  # nothing read back
    assert r["data_fingerprint"] == now["cola"]["data_fingerprint"]
    zs, zs_first = now["zero-shot"]["test"], first["zero-shot"]["test"]  # the same answers, every gold label flipped
    assert zs["predictions"] == zs_first["predictions"]
    assert zs["accuracy"] == pytest.approx(1 - zs_first["accuracy"], abs=1e-12)
    for m in ("lora", "cola"):  # the new export is written, not skipped
        assert now[m]["export_dir"] == str(w.root / "export" / m) and (w.root / "export" / m / "config.json").is_file()


STALE_CASES = [
    Case("compare restarted on flipped labels with a new export folder", lambda w: [
        *CKPT_ARGS, "--data-dir", str(w.root / "flipped"), "--export-dir", str(w.root / "export")],
        verb="compare", expect="finished", setup=_compare_then_flip, check=_ran_again),
]


# ------------------------------------------------------------------ item 4: LoRA on non-Linear layers
def _embedding_merged(w: World, r: dict) -> None:
    from safetensors.torch import load_file

    base = load_file(w.model / "model.safetensors")["model.embed_tokens.weight"]
    merged = load_file(w.root / "export" / "model.safetensors")["model.embed_tokens.weight"]
    assert float((merged - base).abs().max()) > 0  # the embedding's links are in the exported weights
    sites = [s["name"] for s in json.loads((w.root / "export" / "chain.json").read_text())["sites"]]
    assert sum(n.endswith("embed_tokens") for n in sites) == 1 and len(sites) == 5


LORA_CASES = [
    Case("LoRA on the embedding, merged and exported", lambda w: ["--target-modules", "embed_tokens,q_proj,v_proj",
                                                                 "--export-dir", str(w.root / "export"), "--lr", "1e-2"],
         expect="finished", check=_embedding_merged),
    Case("LoRA on a norm layer", lambda w: ["--target-modules", "norm"], message="which COLA cannot adapt",
         value=lambda w: "model.norm"),
]


# ------------------------------------------------------------------ item 5: quantized bases
def _declares_8bit(w: World, _mp) -> None:
    cfg = json.loads((w.model / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (w.model / "config.json").write_text(json.dumps(cfg))


def _int8_q_proj(w: World, mp) -> None:
    """The model loads with int8 q_proj weights (as a quantizer would leave them)."""
    real = trainer.load_model

    def load(*args, **kwargs):
        model, tok = real(*args, **kwargs)
        for layer in model.model.layers:
            q = layer.self_attn.q_proj
            q.weight = torch.nn.Parameter(q.weight.detach().mul(100).round().to(torch.int8), requires_grad=False)
        return model, tok

    mp.setattr(trainer, "load_model", load)


QUANT_CASES = [
    Case("a model whose config declares 8-bit", lambda w: [], setup=_declares_8bit, own_model=True,
         message=r"is quantized \(bitsandbytes 8-bit.*dequantize the model first", value=lambda w: str(w.model)),
    Case("full fine-tuning of a model whose config declares 8-bit", lambda w: ["--method", "full",
                                                                               "--chain-length", "1"],
         setup=_declares_8bit, own_model=True, message=r"is quantized \(bitsandbytes 8-bit",
         value=lambda w: str(w.model)),
    Case("a model with int8 q_proj weights", lambda w: [], setup=_int8_q_proj,
         message=r"is quantized \(.*weight dtype torch.int8\).*dequantize the model first",
         value=lambda w: "model.layers.0.self_attn.q_proj"),
]


# ------------------------------------------------------------------ item 6: damaged checkpoints, non-finite values
def _checkpoint(harm: Callable[[Path], None] | None = None, keep_previous: bool = False):
    """Copy the template's two checkpoints into the output folder, drop the previous one unless kept, harm the latest."""

    def setup(w: World, _mp) -> None:
        shutil.copytree(w.template, w.out / RUN)
        if not keep_previous:
            shutil.rmtree(w.ckpt / "step-000002")
        if harm is not None:
            harm(w.ckpt)

    return setup


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _nan_in_a_factor(ckpt: Path) -> None:
    from safetensors.torch import load_file, save_file

    file = ckpt / "step-000003" / "tensors.safetensors"
    tensors = load_file(file)
    key = next(k for k in tensors if "lora_A" in k)
    tensors[key][0, 0] = float("nan")
    save_file(tensors, file)


def _without_state(ckpt: Path) -> None:
    doc = json.loads((ckpt / "step-000003" / "state.json").read_text())
    del doc["state"]
    (ckpt / "step-000003" / "state.json").write_text(json.dumps(doc))


def _resumed(step: int):
    def check(w: World, r: dict) -> None:
        assert r["resumed_from"] == [step] and len(r["train_loss"]) == 3 and r["test"]["n"] == 4

    return check


def _nan_loss(w: World, mp) -> None:
    real = objective.classification_loss
    mp.setattr(objective, "classification_loss", lambda scores, labels: real(scores, labels) * float("nan"))


def _nan_weights(w: World, _mp) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(w.model / "model.safetensors")
    tensors["lm_head.weight"][5, 0] = float("nan")
    save_file(tensors, w.model / "model.safetensors", metadata={"format": "pt"})


TENSORS = "checkpoint/step-000003/tensors.safetensors"
STATE = "checkpoint/step-000003/state.json"
CHECKPOINT_CASES = [
    Case("truncated tensors", lambda w: CKPT_ARGS, setup=_checkpoint(lambda c: _truncate(
        c / "step-000003" / "tensors.safetensors")), message=r"cannot be read \(truncated or damaged\)",
         value=lambda w: str(w.out / RUN / TENSORS)),
    Case("truncated tensors, previous checkpoint kept", lambda w: CKPT_ARGS, expect="finished",
         setup=_checkpoint(lambda c: _truncate(c / "step-000003" / "tensors.safetensors"), keep_previous=True),
         message=r"tensors.safetensors cannot be read .*Resuming from the newest complete checkpoint, .*step-000002",
         check=_resumed(2)),
    Case("state.json without its state entry", lambda w: CKPT_ARGS, setup=_checkpoint(_without_state),
         message="has no 'state' entry", value=lambda w: str(w.out / RUN / STATE)),
    Case("garbage state.json", lambda w: CKPT_ARGS,
         setup=_checkpoint(lambda c: (c / "step-000003" / "state.json").write_text("\x00garbage")),
         message="is not valid JSON", value=lambda w: str(w.out / RUN / STATE)),
    Case("truncated state.json", lambda w: CKPT_ARGS,
         setup=_checkpoint(lambda c: _truncate(c / "step-000003" / "state.json")),
         message="is not valid JSON", value=lambda w: str(w.out / RUN / STATE)),
    Case("garbage latest.json", lambda w: CKPT_ARGS, expect="finished",
         setup=_checkpoint(lambda c: (c / "latest.json").write_text("{not json")),
         message=r"latest.json is not valid JSON.*Resuming from the newest complete checkpoint, .*step-000003",
         check=_resumed(3)),
    Case("truncated latest.json, a damaged checkpoint", lambda w: CKPT_ARGS,
         setup=_checkpoint(lambda c: (_truncate(c / "latest.json"), _without_state(c))),
         message=r"latest.json is not valid JSON.*has no 'state' entry", value=lambda w: str(w.ckpt / "latest.json")),
    Case("NaN in a saved factor, resumed with --nonfinite skip", lambda w: [*CKPT_ARGS, "--nonfinite", "skip"],
         setup=_checkpoint(_nan_in_a_factor), message=r"holds 1 NaN or inf entry",
         value=lambda w: str(w.out / RUN / TENSORS)),
    Case("NaN in a saved factor, previous checkpoint kept", lambda w: [*CKPT_ARGS, "--nonfinite", "skip"],
         expect="finished", setup=_checkpoint(_nan_in_a_factor, keep_previous=True),
         message=r"NaN or inf entry.*Resuming from the newest complete checkpoint", check=_resumed(2)),
    Case("latest.json pointing at a missing folder", lambda w: CKPT_ARGS,
         setup=_checkpoint(lambda c: shutil.rmtree(c / "step-000003")), message="which .* points at, is missing",
         value=lambda w: str(w.ckpt / "step-000003")),
    Case("non-finite every step with --nonfinite skip", lambda w: ["--nonfinite", "skip", "--max-consecutive-skips",
                                                                    "2", "--max-steps", "6"],
         expect="stopped", setup=_nan_loss, message="2 steps in a row skipped", value=lambda w: "max_consecutive_skips=2"),
    Case("an evaluation with NaN scores", lambda w: ["--method", "zero-shot", "--chain-length", "1"],
         expect="stopped", setup=_nan_weights, own_model=True, message="NaN or inf; .*no accuracy is reported",
         value=lambda w: "evaluation"),
]


# ------------------------------------------------------------------ item 7: real data
MULTIRC = SUPER_GLUE / "MultiRC"


def _val_and_test_only(w: World, _mp) -> None:
    """A BoolQ folder as the release has it without its train split: val.jsonl and an unlabelled test.jsonl."""
    folder = w.root / "boolq-data" / "BoolQ"
    folder.mkdir(parents=True)
    shutil.copy(FIXTURE_BOOLQ / "val.jsonl", folder / "val.jsonl")
    rows = [json.loads(line) for line in (FIXTURE_BOOLQ / "val.jsonl").read_text().splitlines()]
    (folder / "test.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "label"}) + "\n"
                                               for r in rows))


def _evaluated_without_train(w: World, r: dict) -> None:
    assert r["counts"] == {"train": 0, "dev": 0, "test": 4} and r["capped"]["dev"]["asked"] == 2
    assert r["dev"]["n"] == 0 and len(set(r["test"]["idx"])) == 4 and set(r["test"]["idx"]) <= {0, 1, 2, 3, 4}


def _cut_counted(w: World, r: dict) -> None:
    from transformers import AutoTokenizer

    from cola_opt.llm.tasks import get_task, sample_splits

    tok = AutoTokenizer.from_pretrained(w.model)
    splits = sample_splits(get_task("wsc"), seed=0, n_train=8, n_dev=2, n_test=4, data_dir=SUPER_GLUE)
    for name in ("train", "dev", "test"):  # " No" / " Yes" are one token each: room for 39 prompt tokens
        lengths = [len(tok(e.prompt)["input_ids"]) for e in getattr(splits, name)]
        assert r["truncation"][name] == {"n": len(lengths), "cut": sum(n > 39 for n in lengths),
                                         "tokens_lost": sum(max(0, n - 39) for n in lengths),
                                         "longest": max(lengths) + 1}
    assert r["truncation"]["max_length"] == 40 and r["truncation"]["train"]["cut"] > 0


def _multirc_by_question(w: World, r: dict) -> None:
    options = {}  # question idx -> its answer idx, from the release file
    for line in (MULTIRC / "val.jsonl").read_text().splitlines():
        for q in json.loads(line)["passage"]["questions"]:
            options[q["idx"]] = sorted(a["idx"] for a in q["answers"])
    test = r["test"]
    drawn = {}
    for idx in test["idx"]:
        drawn.setdefault(idx["question"], []).append(idx["answer"])
    assert drawn and all(sorted(a) == options[q] for q, a in drawn.items())  # whole questions only
    assert test["n"] == len(test["idx"]) <= 12 and test["questions"] == len(drawn)
    assert 0.0 <= test["f1a"] <= 1.0 and 0.0 <= test["exact_match"] <= 1.0


REAL_DATA_CASES = [
    Case("zero-shot on a BoolQ folder with only val and test", lambda w: [
        "--task", "boolq", "--data-dir", str(w.root / "boolq-data"), "--method", "zero-shot", "--chain-length", "1"],
        expect="finished", setup=_val_and_test_only, run="boolq_zero-shot_s0",
        message="n_dev=2 asked, 0 drawn: boolq has no train split", check=_evaluated_without_train),
    Case("LoRA on a BoolQ folder with only val and test", lambda w: [
        "--task", "boolq", "--data-dir", str(w.root / "boolq-data"), "--method", "lora", "--chain-length", "1"],
        setup=_val_and_test_only, message=r"is missing.*training needs it \(--method zero-shot evaluates without one\)",
        value=lambda w: str(w.root / "boolq-data" / "BoolQ" / "train.jsonl")),
    Case("prompts cut to --max-length", lambda w: ["--max-length", "40"], expect="finished",
         message=r"max_length=40 cut the start of \d+ of 8 train prompts \(\d+ tokens lost\).*--max-length \d+",
         check=_cut_counted),
    Case("MultiRC zero-shot: test by question, F1a and EM", lambda w: [
        "--task", "multirc", "--method", "zero-shot", "--chain-length", "1", "--n-test", "12"], expect="finished",
        run="multirc_zero-shot_s0", test_n=None, message="max_length=256 cut the start of 8 of 8 train prompts",
        check=_multirc_by_question),
]


# ------------------------------------------------------------------ item 8: precision by the hardware
def _no_native_bf16(w: World, mp) -> None:
    from cola_opt.llm import precision

    mp.setattr(precision, "native_low_precision", lambda kind, where: False)


def _precision(autocast: str, native: bool):
    def check(w: World, r: dict) -> None:
        assert r["config"]["autocast"] == r["precision"]["autocast"] == autocast
        assert r["precision"]["native_bf16"] is native and r["precision"]["device_type"] == "cpu"

    return check


PRECISION_CASES = [
    Case("bf16 autocast forced on a CPU without native bf16", lambda w: ["--autocast", "bf16"], expect="finished",
         setup=_no_native_bf16, message=r"--autocast bf16 on a CPU without native support .*emulated",
         check=_precision("bf16", False)),
    Case("autocast auto on a CPU without native bf16", lambda w: ["--autocast", "auto"], expect="finished",
         setup=_no_native_bf16, check=_precision("none", False)),
    Case("an unknown autocast", lambda w: ["--autocast", "bf32"], message="must be one of auto, none, bf16, fp16",
         value=lambda w: "'bf32'"),
]


# ------------------------------------------------------------------ item 9: the smaller silent cases
def _capped(w: World, r: dict) -> None:
    assert r["counts"]["train"] == 552 and r["capped"]["train"]["asked"] == 600


def _fp32_master(w: World, r: dict) -> None:
    sites = json.loads((w.root / "export" / "chain.json").read_text())["sites"]
    assert r["config"]["fp32_master"] is True and len(sites) == 4 and all(s["fp32_master"] for s in sites)


SMALL_CASES = [
    Case("LoRA with --chain-length 3", lambda w: ["--method", "lora", "--chain-length", "3"],
         message="needs method cola: method 'lora' ties no knots", value=lambda w: "chain_length 3"),
    Case("a warm-up as long as the run", lambda w: ["--warmup-steps", "3"], message="is not shorter than the run",
         value=lambda w: "warmup_steps=3"),
    Case("--n-train above the train split", lambda w: ["--n-train", "600", "--max-length", "512"], expect="finished",
         message=r"n_train=600 asked, 552 drawn: wsc's train split has 554 records", check=_capped),
    Case("bf16 weights with the fp32 master copy", lambda w: ["--dtype", "bf16", "--fp32-master", "true",
                                                            "--export-dir", str(w.root / "export")],
         expect="finished", check=_fp32_master),
    Case("the fp32 master copy of fp32 weights", lambda w: ["--fp32-master", "true"], message="needs --dtype bf16",
         value=lambda w: "fp32_master"),
    Case("the fp32 master copy with checkpoints", lambda w: ["--dtype", "bf16", "--fp32-master", "true", *CKPT_ARGS],
         message="is not in the checkpoint", value=lambda w: "checkpoint_every=1"),
    Case("a negative learning rate", lambda w: ["--lr", "-1e-3"], message="must be a finite number > 0",
         value=lambda w: "lr = -0.001"),
    Case("a learning rate that is no number", lambda w: ["--lr", "abc"], message=r"invalid float value.*--help",
         value=lambda w: "'abc'"),
    Case("a model folder that does not exist", lambda w: ["--model", str(w.root / "no-model")],
         message="no such folder", value=lambda w: str(w.root / "no-model")),
    Case("a typo of a built-in model", lambda w: ["--model", "smollm2-13m"],
         message=r"is not a built-in model \(smollm2-135m, gemma3-270m\)", value=lambda w: "'smollm2-13m'"),
]


# ------------------------------------------------------------------ issue 11, item 2: users' own data
def _pairs(w: World, _mp, rows=None, name="pairs.jsonl") -> None:
    rows = rows if rows is not None else [{"prompt": f"Question: is it {i}? Answer:", "completion": " Yes"}
                                          for i in range(12)]
    (w.root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _with(change: Callable[[list[dict]], None], name="pairs.jsonl"):
    def setup(w: World, mp) -> None:
        rows = [{"prompt": f"Question: is it {i}? Answer:", "completion": " Yes"} for i in range(12)]
        change(rows)
        _pairs(w, mp, rows, name)

    return setup


def _cls_csv(w: World, _mp) -> None:
    lines = ["premise,label"] + [f"It is {i},{'Yes' if i % 2 else 'No'}" for i in range(11)] + ["It is 11,Maybe"]
    (w.root / "cls.csv").write_text("\n".join(lines) + "\n")


def _empty_docs(w: World, _mp) -> None:
    (w.root / "docs").mkdir()
    (w.root / "docs" / "a.txt").write_text("")
    (w.root / "docs" / "b.txt").write_text("  \n")


def _at(name: str, line: int):
    return lambda w: f"{w.root / name}:{line}"


USER = ["--task", "completion", "--train-file"]
LONG_ANSWER = " The trophy does not fit into the suitcase because it is too big." * 3
USER_DATA_CASES = [
    Case("a completion record without its completion field", lambda w: [*USER, str(w.root / "pairs.jsonl")],
         setup=_with(lambda rows: rows[4].pop("completion")), message=r"no field 'completion' \(--completion-field\)",
         value=_at("pairs.jsonl", 5)),
    Case("an empty completion", lambda w: [*USER, str(w.root / "pairs.jsonl")],
         setup=_with(lambda rows: rows[2].update(completion=" ")), message="empty completion",
         value=_at("pairs.jsonl", 3)),
    Case("a label outside the candidates", lambda w: ["--task", "classification", "--train-file", str(w.root / "cls.csv"),
                                                      "--template", "{premise}\\nAnswer:", "--candidates", "No,Yes"],
         setup=_cls_csv, message=r"label 'Maybe' \(field 'label'\) is not one of the candidates \['No', 'Yes'\]",
         value=_at("cls.csv", 13)),
    Case("a file with no usable record", lambda w: [*USER, str(w.root / "pairs.jsonl")], setup=_with(lambda rows: rows.clear()),
         message="holds no usable record", value=lambda w: str(w.root / "pairs.jsonl")),
    Case("a folder of empty text files", lambda w: ["--task", "text", "--train-file", str(w.root / "docs")],
         setup=_empty_docs, message=r"holds no usable record \(2 empty documents\)", value=lambda w: str(w.root / "docs")),
    Case("a completion longer than max_length", lambda w: [*USER, str(w.root / "pairs.jsonl"), "--test-file",
                                                           str(w.root / "pairs.jsonl"), "--n-test", "12", "--max-length", "24"],
         setup=_with(lambda rows: rows[6].update(completion=LONG_ANSWER)), message="an answer is never cut: raise --max-length",
         value=_at("pairs.jsonl", 7)),
    Case("a template naming a field the records lack", lambda w: [*USER, str(w.root / "pairs.jsonl"), "--template",
                                                                  "{prompt} {context}"],
         setup=_pairs, message=r"no field 'context' \(--template\)", value=_at("pairs.jsonl", 1)),
    Case("a positional template field", lambda w: [*USER, str(w.root / "pairs.jsonl"), "--template", "Q: {}"],
         setup=_pairs, message="has the field {}", value=lambda w: "'Q: {}'"),
    Case("a line that is not JSON", lambda w: [*USER, str(w.root / "pairs.jsonl")],
         setup=lambda w, mp: (w.root / "pairs.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{prompt: a}\n'),
         message="not valid JSON", value=_at("pairs.jsonl", 2)),
    Case("a missing train file", lambda w: [*USER, str(w.root / "nowhere.jsonl")], message="does not exist",
         value=lambda w: str(w.root / "nowhere.jsonl")),
    Case("a train file with a built-in task", lambda w: ["--train-file", str(w.root / "pairs.jsonl")], setup=_pairs,
         message="is an option of your own data", value=lambda w: str(w.root / "pairs.jsonl")),
    Case("more held-out records than the file has", lambda w: [*USER, str(w.root / "pairs.jsonl"), "--n-test", "11"],
         setup=_pairs, message="leave none to train on", value=lambda w: "n_test=11"),
    Case("the chat template of a tokenizer without one", lambda w: [*USER, str(w.root / "pairs.jsonl"),
                                                                    "--chat-template", "true"],
         setup=_pairs, message="has no chat template", value=lambda w: "chat_template"),
]


CASES = (EXPORT_CASES + NO_DEV_CASES + STALE_CASES + LORA_CASES + QUANT_CASES + CHECKPOINT_CASES + REAL_DATA_CASES
         + PRECISION_CASES + SMALL_CASES + USER_DATA_CASES)


# ------------------------------------------------------------------ machinery
def _snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    """Every entry under ``root`` outside ``skip``: kind, size, mtime and content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p == skip or skip in p.parents:
            continue
        st = p.lstat()
        digest = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else None
        out[str(p.relative_to(root))] = (p.is_dir(), p.is_symlink(), st.st_size if digest else 0, st.st_mtime_ns,
                                         digest)
    return out


def _cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse
        return e.code


@pytest.fixture(scope="module")
def template(tiny_model_dir, tmp_path_factory):
    """``(run folder, model folder)``: checkpoints of steps 2 and 3 with the results deleted (what a run killed at
    its very end leaves), and the copy of the tiny model they were written with."""
    root = tmp_path_factory.mktemp("template")
    shutil.copytree(tiny_model_dir, root / "model")
    w = World(root, root / "model", root / "out", root)
    mp = pytest.MonkeyPatch()
    mp.setattr(trainer, "remove_checkpoints", lambda *a, **k: None)
    try:
        assert _cli(base_args(w) + CKPT_ARGS) == 0
    finally:
        mp.undo()
    run = w.out / RUN
    (run / "results.json").unlink()
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == ["latest.json", "lock", "step-000002",
                                                                         "step-000003"]
    return run, root / "model"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_adversarial_cli(case: Case, tiny_model_dir, template, tmp_path, monkeypatch, capsys):
    run, model = template
    if case.own_model:
        model = tmp_path / "model"
        shutil.copytree(tiny_model_dir, model)
    w = World(tmp_path, model, tmp_path / "out", run)
    if case.setup is not None:
        case.setup(w, monkeypatch)
    before = _snapshot(tmp_path, w.out)
    others = {p: _snapshot(p, p / "none") for p in (SUPER_GLUE / "WSC", template[1])}  # the data, the shared model
    capsys.readouterr()
    code = _cli(base_args(w, case.verb) + case.args(w))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("cola-opt: error:")]
    warnings = [line for line in err.splitlines() if line.startswith("cola-opt: warning:")]
    if case.expect == "finished":
        assert code == 0, err[-2000:]
        assert errors == []
        results = json.loads((w.out / case.run / "results.json").read_text())
        assert case.test_n in (None, results["test"]["n"]) and 0.0 <= results["test"]["accuracy"] <= 1.0
        if case.message:
            assert len(warnings) == 1 and re.search(case.message, warnings[0]), warnings
        if case.check is not None:
            case.check(w, results)
        assert not (w.out / case.run / "checkpoint").exists()  # a finished run leaves no checkpoint
    else:
        assert code == (2 if case.expect == "refused" else 1), err[-2000:]
        assert len(errors) == 1, err[-2000:]
        assert re.search(case.message, errors[0]), errors[0]
        assert case.value(w) in errors[0], errors[0]
    after = _snapshot(tmp_path, w.out)
    if case.expect == "finished":  # the export folder is the run's to write
        after = {k: v for k, v in after.items() if not k.startswith("export")}
        before = {k: v for k, v in before.items() if not k.startswith("export")}
    assert after == before  # nothing outside the output folder touched
    assert {p: _snapshot(p, p / "none") for p in others} == others
