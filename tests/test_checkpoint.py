"""The checkpoint folder: one pointer, complete directories, bitwise round trips."""

import json
import math
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cola_opt.llm import checkpoint
from cola_opt.llm.checkpoint import (
    CheckpointError,
    find_checkpoint,
    frozen_fingerprint,
    read_state,
    remove_checkpoints,
    restore_checkpoint,
    write_checkpoint,
)


def _objects(seed: int):
    """A model with one frozen weight, AdamW over the rest, a LambdaLR; the optimizer stands in for the chain."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    model[0].weight.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (t + 1))
    return model, opt, sched


def _step(model, opt, sched):
    model(torch.randn(5, 4)).pow(2).sum().backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def _write(tmp_path, step, model, opt, sched, state=None):
    return write_checkpoint(tmp_path, step=step, model=model, chain=opt, scheduler=sched, state=state or {})


def test_a_write_killed_before_the_pointer_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    model, opt, sched = _objects(0)
    _step(model, opt, sched)
    _write(tmp_path, 1, model, opt, sched)
    _step(model, opt, sched)

    real_save = checkpoint.atomic_save_json

    def killed_at_the_pointer(doc, path, *a, **k):
        if Path(path).name == "latest.json":
            raise KeyboardInterrupt("killed between the new directory and the pointer")
        return real_save(doc, path, *a, **k)

    monkeypatch.setattr(checkpoint, "atomic_save_json", killed_at_the_pointer)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path, 2, model, opt, sched)
    root = tmp_path / "checkpoint"
    assert find_checkpoint(tmp_path) == root / "step-000001"
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step-000001", "step-000002"]  # 2: unread
    monkeypatch.undo()
    (root / ".step-000003.abc.tmp").mkdir()  # what a kill inside atomic_directory leaves
    _step(model, opt, sched)
    assert _write(tmp_path, 3, model, opt, sched) == root / "step-000003"
    # the unread step-2 and the temporary are gone; step-1 stays as the previous checkpoint
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step-000001", "step-000003"]
    assert read_state(root / "step-000003")["step"] == 3
    _step(model, opt, sched)
    _write(tmp_path, 4, model, opt, sched)
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step-000003", "step-000004"]  # the last two
    remove_checkpoints(tmp_path)
    assert find_checkpoint(tmp_path) is None and not root.exists()


def test_restore_is_bitwise_and_sets_the_rng(tmp_path):
    model, opt, sched = _objects(0)
    for _ in range(3):
        _step(model, opt, sched)
    state = {"position": (1, 4), "loss": [0.5, float("nan")], "ids": torch.arange(3), "np": np.arange(4.0),
             7: "an int key"}
    _write(tmp_path, 3, model, opt, sched, state)
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    after = (torch.rand(3), np.random.rand(), random.random())
    _step(model, opt, sched)  # the uninterrupted run goes on (its batch comes from the global RNG)

    model2, opt2, sched2 = _objects(1)  # other initial weights, other RNG state
    back = restore_checkpoint(find_checkpoint(tmp_path), model=model2, chain=opt2, scheduler=sched2)
    assert torch.equal(torch.rand(3), after[0]) and (np.random.rand(), random.random()) == after[1:]
    for n, p in model2.named_parameters():
        if n == "0.weight":  # frozen: not in the checkpoint
            assert not torch.equal(p, trained[n])
        else:
            assert torch.equal(p, trained[n]), n
    assert sched2.last_epoch == 3 and opt2.param_groups[0]["lr"] == 0.1 / 4
    assert back["position"] == (1, 4) and back[7] == "an int key" and torch.equal(back["ids"], torch.arange(3))
    assert back["loss"][0] == 0.5 and math.isnan(back["loss"][1]) and back["np"].tolist() == [0.0, 1.0, 2.0, 3.0]
    # with the same frozen weight (the same model loaded), the resumed step is the uninterrupted one, bit for bit
    with torch.no_grad():
        model2[0].weight.copy_(model[0].weight)
    _step(model2, opt2, sched2)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(opt.param_groups[0]["params"], opt2.param_groups[0]["params"]):
        assert all(torch.equal(opt2.state[q][k], v) for k, v in opt.state[p].items())


def test_restore_refuses_a_model_that_trains_other_parameters(tmp_path):
    model, opt, sched = _objects(0)
    _write(tmp_path, 1, model, opt, sched)
    model2, opt2, sched2 = _objects(0)
    model2[0].weight.requires_grad_(True)
    with pytest.raises(ValueError, match=r"holds other parameters than this model trains: \['0.weight'\]"):
        restore_checkpoint(find_checkpoint(tmp_path), model=model2, chain=opt, scheduler=sched2)


def test_frozen_fingerprint_sees_a_changed_frozen_weight():
    model, opt, _ = _objects(0)
    before = frozen_fingerprint(model, opt)
    with torch.no_grad():
        model[1].weight.add_(1.0)  # trainable: not part of it
    assert frozen_fingerprint(model, opt) == before
    with torch.no_grad():
        model[0].weight[0, 0] += 1e-3
    assert frozen_fingerprint(model, opt) != before


def test_state_that_is_not_json_or_tensors_is_refused_before_any_file(tmp_path):
    model, opt, sched = _objects(0)
    with pytest.raises(TypeError, match="cannot store object at 'state.bad'"):
        _write(tmp_path, 1, model, opt, sched, {"bad": object()})
    assert not (tmp_path / "checkpoint").exists()


# ------------------------------------------------------------------ damaged checkpoints (issue 9, item 6)
def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _nan_in_factor(path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "tensors.safetensors")
    tensors["model/1.weight"][0, 0] = float("nan")
    save_file(tensors, path / "tensors.safetensors")


def _drop_state_entry(path):
    doc = json.loads((path / "state.json").read_text())
    del doc["state"]
    (path / "state.json").write_text(json.dumps(doc))


DAMAGE = {
    "truncated tensors": (lambda p: _truncate(p / "tensors.safetensors"),
                          r"tensors\.safetensors cannot be read \(truncated or damaged\)"),
    "state.json without 'state'": (_drop_state_entry, r"state\.json has no 'state' entry"),
    "garbage state.json": (lambda p: (p / "state.json").write_text("}{ not json"), r"state\.json is not valid JSON"),
    "truncated state.json": (lambda p: _truncate(p / "state.json", 0.7), r"state\.json is not valid JSON"),
    "NaN in a saved factor": (_nan_in_factor, r"tensor 'model/1\.weight' holds 1 NaN or inf entry"),
    "missing folder": (lambda p: shutil.rmtree(p), r"step-000002, which .*latest\.json points at, is missing"),
}


def _two_checkpoints(tmp_path):
    model, opt, sched = _objects(0)
    _step(model, opt, sched)
    _write(tmp_path, 1, model, opt, sched, {"at": 1})
    _step(model, opt, sched)
    _write(tmp_path, 2, model, opt, sched, {"at": 2})
    return model, opt, sched, tmp_path / "checkpoint"


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_broken_latest_checkpoint_falls_back_to_the_previous_one_and_says_so(damage, tmp_path):
    model, opt, sched, root = _two_checkpoints(tmp_path)
    harm, fault = DAMAGE[damage]
    harm(root / "step-000002")
    said = []
    found = find_checkpoint(tmp_path, warn=said.append)
    assert found == root / "step-000001"
    assert len(said) == 1 and re.search(fault, said[0]) and "Resuming from the newest complete checkpoint" in said[0]
    assert json.loads((root / "latest.json").read_text())["dir"] == "step-000001"  # repaired
    if damage != "missing folder":
        assert (root / "broken-step-000002").is_dir()  # kept for inspection, never read again
    model2, opt2, sched2 = _objects(1)
    assert restore_checkpoint(found, model=model2, chain=opt2, scheduler=sched2) == {"at": 1}
    assert find_checkpoint(tmp_path, warn=said.append) == found and len(said) == 1  # quiet once repaired
    _step(model2, opt2, sched2)
    assert _write(tmp_path, 2, model2, opt2, sched2, {"at": 2}) == root / "step-000002"  # the step is written again
    assert read_state(root / "step-000002")["state"] == {"at": 2}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_broken_only_checkpoint_is_an_error_naming_the_file_never_a_fresh_start(damage, tmp_path):
    model, opt, sched, root = _two_checkpoints(tmp_path)
    shutil.rmtree(root / "step-000001")
    harm, fault = DAMAGE[damage]
    harm(root / "step-000002")
    with pytest.raises(CheckpointError, match=fault) as info:
        find_checkpoint(tmp_path, warn=pytest.fail)
    assert str(info.value).startswith(f"no usable checkpoint in {root}")
    if damage != "missing folder":
        assert (root / "step-000002").is_dir()  # nothing renamed or deleted when nothing is usable
        with pytest.raises(CheckpointError, match=fault):
            restore_checkpoint(root / "step-000002", model=model, chain=opt, scheduler=sched)


@pytest.mark.parametrize("pointer", ["", "{\"format\": \"cola_opt.checkpoint/1\", \"dir\": \"step-0000", "[1, 2]",
                                     "{\"dir\": \"../../etc\"}"], ids=["empty", "truncated", "a list", "outside"])
def test_a_broken_pointer_names_latest_json_and_uses_the_newest_complete_checkpoint(pointer, tmp_path):
    _, _, _, root = _two_checkpoints(tmp_path)
    (root / "latest.json").write_text(pointer)
    said = []
    assert find_checkpoint(tmp_path, warn=said.append) == root / "step-000002"
    assert len(said) == 1 and "latest.json" in said[0]
    assert json.loads((root / "latest.json").read_text())["dir"] == "step-000002"


def test_a_missing_pointer_with_checkpoints_left_is_said(tmp_path):
    _, _, _, root = _two_checkpoints(tmp_path)
    (root / "latest.json").unlink()
    said = []
    assert find_checkpoint(tmp_path, warn=said.append) == root / "step-000002"
    assert "latest.json is missing" in said[0]
    shutil.rmtree(root / "step-000001")
    shutil.rmtree(root / "step-000002")
    (root / "latest.json").unlink()
    assert find_checkpoint(tmp_path) is None  # nothing there at all: a fresh start is right
