"""Atomic checkpoint files: old or new, never torn, even after kill -9."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from cola_opt.atomic import (
    atomic_directory,
    atomic_save_json,
    atomic_save_tensors,
    atomic_write,
    load_json,
    load_tensors,
)


def test_tensors_round_trip_bitwise_with_shared_storage_and_metadata(tmp_path):
    w = torch.randn(5, 3)
    tensors = {"w": w, "tied": w, "view": w[1:3], "bf16": torch.randn(4).bfloat16(), "step": torch.tensor(7)}
    atomic_save_tensors(tensors, tmp_path / "c.safetensors", metadata={"link": "2"})
    back = load_tensors(tmp_path / "c.safetensors")
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    from safetensors import safe_open

    with safe_open(tmp_path / "c.safetensors", "pt") as f:
        assert f.metadata() == {"link": "2"}
    assert os.listdir(tmp_path) == ["c.safetensors"]


def test_files_and_directories_get_the_usual_permissions(tmp_path):
    """Like open() and mkdir(): 0666 and 0777 less the umask, not tempfile's private 0600 and 0700."""
    mask = os.umask(0o022)
    os.umask(mask)
    from safetensors.torch import save_file

    atomic_save_json({"a": 1}, tmp_path / "r.json")
    atomic_save_tensors({"a": torch.zeros(2)}, tmp_path / "t.safetensors")
    with atomic_directory(tmp_path / "d") as tmp:
        save_file({"a": torch.zeros(2)}, tmp / "model.safetensors")  # as save_pretrained does
    for f in ("r.json", "t.safetensors", "d/model.safetensors"):
        assert (tmp_path / f).stat().st_mode & 0o777 == 0o666 & ~mask, f
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~mask


def test_bad_input_is_refused_before_any_file_is_touched(tmp_path):
    with pytest.raises(ValueError, match="not tensors"):
        atomic_save_tensors({"a": [1.0]}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="str to str"):
        atomic_save_tensors({"a": torch.zeros(1)}, tmp_path / "x.safetensors", metadata={"k": 1})
    with pytest.raises(TypeError):
        atomic_save_json({"a": object()}, tmp_path / "x.json")
    assert os.listdir(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    atomic_save_json({"step": 1}, target)

    def torn(tmp):
        with open(tmp, "w") as f:
            f.write('{"step": 2, "half')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, torn)
    assert load_json(target) == {"step": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_atomic_directory_appears_complete_or_not_at_all(tmp_path):
    out = tmp_path / "ckpt"
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        (tmp / "a.json").write_text("{}")
        raise RuntimeError("crash while writing")
    assert os.listdir(tmp_path) == []
    with atomic_directory(out) as tmp:
        (tmp / "a.json").write_text('{"v": 1}')
    with atomic_directory(out, may_replace=lambda p: None) as tmp:  # replaces the old one: the caller vouches
        (tmp / "b.json").write_text('{"v": 2}')
    assert os.listdir(out) == ["b.json"] and os.listdir(tmp_path) == ["ckpt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"), atomic_directory(tmp_path / "file"):
        pass


def test_atomic_directory_never_replaces_a_folder_nobody_vouched_for(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "mine.txt").write_text("the user's notes")
    with pytest.raises(FileExistsError, match="notes exists and is not empty"), atomic_directory(out) as tmp:
        (tmp / "x").write_text("never")
    assert os.listdir(out) == ["mine.txt"] and (out / "mine.txt").read_text() == "the user's notes"

    def refuse(path):
        raise ValueError(f"{path.name} is not ours")

    with pytest.raises(ValueError, match="notes is not ours"), atomic_directory(out, may_replace=refuse):
        pass
    assert os.listdir(tmp_path) == ["notes"] and os.listdir(out) == ["mine.txt"]  # no temporary left either

    # a file that appears while the block runs is seen before the swap
    calls = []
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty is not ours"), atomic_directory(empty, may_replace=refuse) as tmp:
        calls.append(1)
        (empty / "late.txt").write_text("written meanwhile")
    assert calls == [1] and os.listdir(empty) == ["late.txt"]
    with atomic_directory(tmp_path / "fresh") as tmp:  # an empty or missing folder needs no vouching
        (tmp / "a").write_text("1")
    assert os.listdir(tmp_path / "fresh") == ["a"]


_WRITER = textwrap.dedent("""
    import sys, torch
    from cola_opt.atomic import atomic_save_tensors, atomic_save_json
    out = sys.argv[1]
    i = 0
    while True:
        atomic_save_tensors({"x": torch.full((1 << 18,), float(i))}, out + "/t.safetensors", metadata={"i": str(i)})
        atomic_save_json({"i": i, "pad": "y" * 100000}, out + "/s.json")
        print(i, flush=True)
        i += 1
""")


@pytest.mark.parametrize("delay", [0.0, 0.013, 0.031])
def test_kill_minus_nine_never_leaves_a_torn_file(tmp_path, delay):
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        for _ in range(3):  # at least three complete rounds, then kill at some point of a write
            assert proc.stdout.readline(), "the writer died"
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    from safetensors import safe_open

    with safe_open(tmp_path / "t.safetensors", "pt") as f:
        i = int(f.metadata()["i"])
        x = f.get_tensor("x")
    assert torch.equal(x, torch.full((1 << 18,), float(i)))
    j = load_json(tmp_path / "s.json")["i"]
    assert j in (i - 1, i) and j >= 2
