"""The capacity study's workloads and its command, end to end on the tiny random model."""

import hashlib
import json
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))
import capacity


def test_memorize_pairs_are_a_pure_function_of_the_seed(tmp_path):
    path = capacity.memorize_data(tmp_path / "a", pairs=50, hex_digits=6, seed=3)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    keys = [r["prompt"].removeprefix("Key: ").removesuffix("\nValue:") for r in rows]
    assert len(rows) == 50 and len(set(keys)) == 50
    assert all(len(k) == 6 and int(k, 16) >= 0 for k in keys)
    assert all(r["completion"].startswith(" ") and len(r["completion"]) == 7 for r in rows)
    again = capacity.memorize_data(tmp_path / "b", pairs=50, hex_digits=6, seed=3)
    assert again.read_bytes() == path.read_bytes()
    assert capacity.memorize_data(tmp_path / "c", pairs=50, hex_digits=6, seed=4).read_bytes() != path.read_bytes()
    mtime = path.stat().st_mtime_ns
    capacity.memorize_data(tmp_path / "a", pairs=50, hex_digits=6, seed=3)  # unchanged: not rewritten
    assert path.stat().st_mtime_ns == mtime


def test_cpt_split_is_by_whole_file_and_recorded(tmp_path):
    folders = capacity.cpt_data(tmp_path, every=10)
    names = {s: sorted(p.name for p in folders[s].iterdir()) for s in ("train", "dev", "test")}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    ordered = sorted(manifest["files"])
    assert names["test"] == ordered[0::10] and names["dev"] == ordered[1::10]
    assert sum(map(len, names.values())) == len(ordered) > 100
    assert not set(names["train"]) & (set(names["test"]) | set(names["dev"]))
    for split, files in names.items():
        for name in files[:5]:
            entry = manifest["files"][name]
            assert entry["split"] == split
            assert entry["sha256"] == hashlib.sha256((folders[split] / name).read_bytes()).hexdigest()


@pytest.mark.parametrize("workload,extra", [
    ("memorize", ["--pairs", "12", "--dev-pairs", "4", "--hex-digits", "4"]),
    ("cpt", ["--max-length", "32"]),
])
def test_the_study_runs_end_to_end_and_reports(workload, extra, tiny_model_dir, tmp_path, monkeypatch):
    if workload == "cpt":  # a few small files stand in for the standard library
        lib = tmp_path / "lib"
        lib.mkdir()
        for i in range(12):
            (lib / f"mod{i:02d}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 3)
        monkeypatch.setattr(capacity.sysconfig, "get_paths", lambda: {"stdlib": str(lib)})
    out = tmp_path / "study"
    capacity.main([workload, "--out", str(out), "--model", str(tiny_model_dir), "--methods", "lora-r8,cola2-r8",
                   "--seeds", "2", "--lrs", "1e-3,1e-2", "--steps", "4", "--batch-size", "2", "--eval-every", "2",
                   "--autocast", "none", *extra])
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["method"]: r for r in summary["rows"]}
    assert set(rows) == {"lora-r8", "cola2-r8"} and all(r["seeds"] == 2 for r in rows.values())
    assert rows["cola2-r8"]["rank_growth"][0] <= 8 and len(rows["cola2-r8"]["rank_growth"]) == 2
    assert "t_p" in rows["cola2-r8"] and (out / "curves.png").stat().st_size > 1000
    table = (out / "table.md").read_text()
    assert ("test loss" in table) and ("exact match" in table) == (workload == "memorize")
