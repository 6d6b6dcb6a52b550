"""--threads: its values, the auto policy against counted neighbours, and what a run records."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cola_opt.llm import threads as threads_module
from cola_opt.llm.cli import main
from cola_opt.llm.config import RESUMABLE_CHANGES, FinetuneConfig
from cola_opt.llm.grid_plan import GridConfig
from cola_opt.llm.threads import ThreadPolicy, check_threads, fair_threads, other_runnable, thread_policy
from cola_opt.llm.trainer import finetune


@pytest.mark.parametrize("value", [0, -1, "x", "0", "", True, 1.5, None, "Auto"])
def test_bad_thread_settings_are_refused_by_name(value):
    with pytest.raises(ValueError, match=rf"threads {value!r} must be an integer >= 1 or 'auto'"):
        check_threads(value)
    with pytest.raises(ValueError, match=r"threads .* must be an integer >= 1 or 'auto'"):
        FinetuneConfig(threads=value, model="smollm2-135m").validate()


def test_good_thread_settings():
    assert check_threads("auto") == "auto" and check_threads(3) == 3 and check_threads("2") == 2
    cfg = FinetuneConfig(threads="2")
    cfg.validate()
    assert cfg.threads == 2  # the command line's digits become the number


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_cli_refuses_a_bad_thread_count_in_one_line(value, capsys, tmp_path):
    code = main(["finetune", "--threads", value, "--output-dir", str(tmp_path / "o"), "--progress", "false"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"threads {int(value) if value != 'x' else value!r}" in err, err
    assert not (tmp_path / "o").exists()  # before any work


def test_threads_change_no_fingerprint_and_may_change_on_resume():
    base = FinetuneConfig(model="x", autocast="none")
    assert GridConfig(base=base.replace(threads=1)).fingerprint() == GridConfig(base=base).fingerprint()
    assert "threads" in RESUMABLE_CHANGES and "threads" not in base.shared_settings()


@pytest.mark.parametrize("others,cores,ceiling,expected", [
    (0, 2, 2, 2), (1, 2, 2, 1), (3, 2, 2, 1), (5, 2, 2, 1),  # the machine: any neighbour, one thread
    (0, 2, 1, 1),  # never above the ceiling (OMP_NUM_THREADS=1)
    (2, 8, 8, 6), (0, 8, 4, 4), (9, 8, 8, 1),
])
def test_fair_threads(others, cores, ceiling, expected):
    assert fair_threads(others, cores, ceiling) == expected


def test_auto_rechecks_after_the_interval_and_records_each_change():
    before = torch.get_num_threads()
    counts, now = iter([0, 3, 3, 0]), [0.0]
    with thread_policy("auto", ceiling=2, cores=2, sample=lambda: next(counts), clock=lambda: now[0],
                       recheck_seconds=30) as p:
        assert torch.get_num_threads() == 2
        now[0] = 10.0
        p.after_step(5)  # too early: no count
        assert torch.get_num_threads() == 2
        now[0] = 31.0
        p.after_step(9)  # 3 others: 1 thread
        assert torch.get_num_threads() == 1
        now[0] = 62.0
        p.after_step(14)  # still 3 others: no change recorded
        now[0] = 93.0
        p.after_step(20)  # the neighbours left: back to 2
        assert torch.get_num_threads() == 2
    assert p.history == [{"step": 0, "threads": 2, "others": 0}, {"step": 9, "threads": 1, "others": 3},
                         {"step": 20, "threads": 2, "others": 0}]
    assert p.used == [2, 1] and p.to_dict()["setting"] == "auto"
    assert torch.get_num_threads() == before  # restored after the block


def test_fixed_setting_never_counts_and_unreadable_proc_keeps_the_ceiling():
    def boom():
        raise AssertionError("a fixed setting counted the other work")

    with thread_policy(1, sample=boom, ceiling=2, cores=2, recheck_seconds=0) as p:
        p.after_step(1)
        assert torch.get_num_threads() == 1 and p.history == [{"step": 0, "threads": 1, "others": None}]
    with thread_policy("auto", sample=lambda: None, ceiling=2, cores=2) as p:
        assert p.used == [2]


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="counts runnable threads in /proc/stat (Linux)")
def test_a_busy_neighbour_is_counted_and_auto_takes_one_of_two_cores(tmp_path):
    """A real neighbour: a process spinning in a loop is always runnable, whatever else the machine runs."""
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        stat = Path(f"/proc/{spin.pid}/stat")
        deadline = time.time() + 30
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "R":
            assert time.time() < deadline
            time.sleep(0.01)
        assert other_runnable(samples=9) >= 1
        assert ThreadPolicy("auto", ceiling=2, cores=2).to_dict()["ceiling"] == 2
        with thread_policy("auto", ceiling=2, cores=2) as p:
            assert p.used == [1] and p.history[0]["others"] >= 1
    finally:
        spin.kill()
        spin.wait()


def test_own_running_threads_are_not_counted_as_others(monkeypatch):
    monkeypatch.setattr(threads_module, "_procs_running", lambda: 3)
    monkeypatch.setattr(threads_module, "_own_running", lambda: 2)
    assert other_runnable(samples=3, interval=0) == 1


def test_run_records_its_threads_and_restores_torchs_count(tiny_model_dir, super_glue_dir, tmp_path):
    before = torch.get_num_threads()
    common = dict(task="wsc", model=str(tiny_model_dir), data_dir=str(super_glue_dir), n_train=8, n_dev=2, n_test=4,
                  epochs=1, batch_size=4, method="lora", autocast="none", progress=False)
    r = finetune(FinetuneConfig(**common, threads=1, output_dir=str(tmp_path / "one")))
    saved = json.loads((tmp_path / "one" / "wsc_lora_s0" / "results.json").read_text())
    assert saved["threads"]["used"] == [1] and saved["config"]["threads"] == 1 and r["threads"]["setting"] == 1
    r = finetune(FinetuneConfig(**common, output_dir=str(tmp_path / "auto")))
    assert r["config"]["threads"] == "auto" and r["threads"]["ceiling"] == before
    assert set(r["threads"]["used"]) <= set(range(1, before + 1)) and r["threads"]["history"][0]["step"] == 0
    assert torch.get_num_threads() == before
