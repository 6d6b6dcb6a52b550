"""A restarted compare or grid reuses a finished run only for the same data and with its outputs in place.

Issue 9, item 3: the "finished earlier with these settings" check ignored the data and the
export. Each test goes through the CLI, as a user would: a first run, then the same
command with ``--data-dir`` pointing at a copy with every label flipped, or with a new
``--export-dir``.
"""

import json
from pathlib import Path

import pytest

from cola_opt.llm.cli import main


def _flipped_copy(src: Path, dst: Path, folder: str) -> Path:
    """``dst/<folder>``: the release files of ``src/<folder>`` with every (boolean) label flipped."""
    (dst / folder).mkdir(parents=True)
    for f in [src / folder / "train.jsonl", src / folder / "val.jsonl"]:
        recs = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        (dst / folder / f.name).write_text("".join(json.dumps({**r, "label": not r["label"]}) + "\n" for r in recs))
    return dst


def _compare(model_dir, data_dir, out, *extra) -> int:
    return main(["compare", "--model", str(model_dir), "--task", "wsc", "--data-dir", str(data_dir),
                 "--n-train", "16", "--n-dev", "4", "--n-test", "16", "--max-steps", "4", "--batch-size", "4",
                 "--chain-length", "2", "--lr", "1e-3", "--autocast", "none", "--progress", "false",
                 "--checkpoint-every", "2", "--output-dir", str(out), *extra])


def _test_accuracy(out: Path) -> dict:
    summary = json.loads((out / "wsc_compare_s0.json").read_text())
    return {m: r["test"]["accuracy"] for m, r in summary["methods"].items()}


def test_compare_restarted_on_other_data_runs_again(tiny_model_dir, super_glue_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _compare(tiny_model_dir, super_glue_dir, out) == 0
    before = _test_accuracy(out)
    flipped = _flipped_copy(super_glue_dir, tmp_path / "flipped", "WSC")
    assert _compare(tiny_model_dir, flipped, out) == 0
    after = _test_accuracy(out)
    # zero-shot predicts the same candidates; every gold label flipped: accuracy a becomes 1 - a
    assert after["zero-shot"] == pytest.approx(1 - before["zero-shot"], abs=1e-12)
    assert before["zero-shot"] != pytest.approx(0.5)  # else the check above could not tell
    assert capsys.readouterr().out.count("(other data: fingerprint") == 3
    fresh = tmp_path / "fresh"
    assert _compare(tiny_model_dir, flipped, fresh) == 0
    assert after == _test_accuracy(fresh)  # the same table as a first run on the flipped copy


def test_compare_restarted_with_a_new_export_dir_exports(tiny_model_dir, super_glue_dir, tmp_path, capsys):
    out, export = tmp_path / "out", tmp_path / "export"
    assert _compare(tiny_model_dir, super_glue_dir, out) == 0
    first = _test_accuracy(out)
    capsys.readouterr()
    assert _compare(tiny_model_dir, super_glue_dir, out, "--export-dir", str(export)) == 0
    assert sorted(p.name for p in export.iterdir()) == ["cola", "lora"]
    for m in ("cola", "lora"):
        assert (export / m / "config.json").is_file()
        saved = json.loads((out / f"wsc_{m}_s0" / "results.json").read_text())
        assert saved["export_dir"] == str(export / m)
    printed = capsys.readouterr().out
    assert "zero-shot: finished earlier with these settings" in printed  # nothing to export: read back
    assert "was not written by it" in printed
    assert _test_accuracy(out) == first  # trained again from the same seed: the same numbers

    capsys.readouterr()  # the same command again: everything is in place, nothing trains
    assert _compare(tiny_model_dir, super_glue_dir, out, "--export-dir", str(export)) == 0
    assert capsys.readouterr().out.count("finished earlier with these settings") == 3


def _grid(model_dir, data_dir, out) -> int:
    return main(["grid", "--model", str(model_dir), "--data-dir", str(data_dir), "--tasks", "boolq",
                 "--methods", "zero-shot,lora", "--seeds", "1", "--n-train", "8", "--n-dev", "3", "--n-test", "100",
                 "--epochs", "1", "--batch-size", "4", "--lrs", "1e-2", "--autocast", "none", "--progress", "false",
                 "--out", str(out)])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]


def test_grid_restarted_on_other_data_runs_again(tiny_model_dir, fixtures_dir, tmp_path):
    out = tmp_path / "grid"
    assert _grid(tiny_model_dir, fixtures_dir, out) == 0
    first = {r["method"]: r for r in _records(out)}
    flipped = _flipped_copy(fixtures_dir, tmp_path / "flipped", "BoolQ")
    assert _grid(tiny_model_dir, flipped, out) == 0
    lines = _records(out)
    assert len(lines) == 4  # both runs ran again; the old lines stay, unused
    again = {r["method"]: r for r in lines[2:]}
    assert again["zero-shot"]["test_accuracy"] == pytest.approx(1 - first["zero-shot"]["test_accuracy"], abs=1e-12)
    assert first["zero-shot"]["test_accuracy"] != pytest.approx(0.5)
    assert again["lora"]["data_fingerprint"] != first["lora"]["data_fingerprint"]
    fresh = tmp_path / "fresh"
    assert _grid(tiny_model_dir, flipped, fresh) == 0
    assert (out / "table.md").read_text() == (fresh / "table.md").read_text()
    assert _grid(tiny_model_dir, fixtures_dir, out) == 0  # back on the first data: its lines are reused
    assert len(_records(out)) == 4
