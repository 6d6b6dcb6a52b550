"""The grid runner: plan, LR choice on dev, resume after a kill, and its report."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from cola_opt.llm import grid as grid_module
from cola_opt.llm.cli import main
from cola_opt.llm.config import FinetuneConfig
from cola_opt.llm.grid import GridConfig, Run, choose_lrs, method_changes, read_records, run_grid
from cola_opt.llm.report import paired_tests, results_table
from cola_opt.llm.tasks import get_task, sample_splits

REPO = Path(__file__).resolve().parents[1]
TIMING = ("train_seconds", "train_cpu_seconds", "wall_seconds", "step_seconds_median")


def _grid_args(model_dir, data_dir):
    return ["--model", str(model_dir), "--data-dir", str(data_dir), "--tasks", "boolq,multirc",
            "--methods", "zero-shot,lora,cola2", "--seeds", "2", "--lrs", "5e-2,1e-2", "--lr-select", "task",
            "--n-train", "8", "--n-dev", "3", "--n-test", "100", "--epochs", "2", "--batch-size", "2",
            "--autocast", "none", "--threads", "1", "--progress", "false"]


def _grid(model_dir, data_dir, out, **kw):
    base = FinetuneConfig(model=str(model_dir), data_dir=str(data_dir), n_train=8, n_dev=3, n_test=100, epochs=2,
                          batch_size=2, autocast="none", threads=1)  # auto would depend on the load
    args = dict(base=base, tasks=("boolq", "multirc"), methods=("zero-shot", "lora", "cola2"), seeds=2,
                lrs=(5e-2, 1e-2), lr_select="task", out=str(out), progress=False)
    args.update(kw)
    return GridConfig(**args)


def _strip(rec):
    return {k: v for k, v in rec.items() if k not in TIMING}


@pytest.mark.slow  # a subprocess start and 30 runs: about 15-35 s
def test_grid_killed_mid_run_resumes_without_redoing(tiny_model_dir, fixtures_dir, tmp_path, monkeypatch):
    """Kill the CLI grid after its first finished runs; a restart runs only the rest; same table."""
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(REPO / "experiments" / "superglue.py"),
                             *_grid_args(tiny_model_dir, fixtures_dir), "--out", str(out)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    jsonl = out / "runs.jsonl"
    deadline = time.time() + 300
    while not (jsonl.is_file() and jsonl.read_bytes().count(b"\n") >= 2):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "the grid wrote no line in 300 s"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    before = jsonl.read_bytes()
    complete = before[: before.rfind(b"\n") + 1]
    n_before = complete.count(b"\n")
    total = 4 + 12 - 2  # LR search (2 tasks x 2 LRs) + grid (2 tasks x 3 methods x 2 seeds) - shared runs
    assert 2 <= n_before < total, "the kill came too late to test a resume"

    calls = []
    real = grid_module.finetune
    monkeypatch.setattr(grid_module, "finetune", lambda cfg, splits=None: calls.append(cfg) or real(cfg, splits))
    resumed = run_grid(_grid(tiny_model_dir, fixtures_dir, out))
    assert len(calls) == total - n_before  # finished runs are not redone
    after = jsonl.read_bytes()
    assert after.startswith(complete) and after.count(b"\n") == total
    ids = [r["run_id"] for r in read_records(jsonl)]
    assert len(ids) == len(set(ids)) == total

    calls.clear()
    fresh = run_grid(_grid(tiny_model_dir, fixtures_dir, tmp_path / "fresh"))
    assert len(calls) == total
    assert [_strip(r) for r in resumed] == [_strip(r) for r in fresh]
    table = (out / "table.md").read_text()
    assert table == (tmp_path / "fresh" / "table.md").read_text()
    assert "| LoRA |" in table and "| majority class |" in table and (out / "plot.png").stat().st_size > 1000

    calls.clear()  # a third start finds everything done
    run_grid(_grid(tiny_model_dir, fixtures_dir, out))
    assert calls == [] and jsonl.read_bytes() == after


def test_partial_last_line_is_dropped_and_rerun(tiny_model_dir, fixtures_dir, tmp_path):
    grid = _grid(tiny_model_dir, fixtures_dir, tmp_path, lrs=(1e-2,), seeds=1, methods=("zero-shot", "lora"))
    first = run_grid(grid)
    jsonl = tmp_path / "runs.jsonl"
    lines = jsonl.read_bytes().splitlines(keepends=True)
    jsonl.write_bytes(b"".join(lines[:-1]) + lines[-1][:25])  # as if killed while appending
    again = run_grid(grid)
    assert [_strip(r) for r in again] == [_strip(r) for r in first]
    assert jsonl.read_bytes().count(b"\n") == len(first) == 4
    draw = sample_splits(get_task("boolq"), seed=0, n_train=8, n_dev=3, n_test=100, data_dir=fixtures_dir)
    assert {r["dev_majority"] for r in first if r["task"] == "boolq"} == {draw.majority_accuracy("dev")}
    cpu = {r["method"]: r["train_cpu_seconds"] for r in first}  # this process's CPU time, not wall time
    assert cpu["zero-shot"] == 0.0 and cpu["lora"] > 0.0
    summary = json.loads((tmp_path / "summary.json").read_text())  # of the second call, which reran the last run
    assert summary["sum_train_cpu_seconds"] == pytest.approx(sum(r["train_cpu_seconds"] for r in again))


def test_changed_settings_do_not_reuse_old_runs(tiny_model_dir, fixtures_dir, tmp_path):
    grid = _grid(tiny_model_dir, fixtures_dir, tmp_path, lrs=(1e-2,), seeds=1, methods=("lora",), tasks=("boolq",))
    run_grid(grid)
    grid.base = grid.base.replace(epochs=1)
    recs = run_grid(grid)
    assert len(read_records(tmp_path / "runs.jsonl")) == 2 and recs[0]["total_steps"] == 4


def test_fingerprint_ignores_the_checkpoint_and_export_fields():
    """Grids fingerprinted before those fields existed still resume: the hash is unchanged at their defaults."""
    base = FinetuneConfig(model="x", n_train=8, n_dev=3, epochs=2, batch_size=2, autocast="none",
                          bucket_by_length=False)  # the batch order of that time
    assert GridConfig(base=base.replace(bucket_by_length=True)).fingerprint() != "036cb5624ca0"
    recorded = "036cb5624ca0"  # GridConfig(base=base).fingerprint() before checkpoint_every ... existed
    assert GridConfig(base=base).fingerprint() == recorded
    assert GridConfig(base=base.replace(checkpoint_every=5, resume="never")).fingerprint() == recorded
    assert GridConfig(base=base.replace(nonfinite="skip")).fingerprint() != recorded  # skipping changes results


def test_lr_choice_takes_best_dev_and_earlier_on_ties():
    grid = GridConfig(tasks=("cb",), methods=("zero-shot", "lora", "cola2"), lrs=(1e-3, 5e-4, 1e-4))
    recs = [{"run_id": Run("cb", m, 0, lr).run_id, "dev_accuracy": acc}
            for m, lr, acc in [("lora", 1e-3, 0.5), ("lora", 5e-4, 0.7), ("lora", 1e-4, 0.7),
                               ("cola2", 1e-3, 0.9), ("cola2", 5e-4, 0.2), ("cola2", 1e-4, None)]]
    assert choose_lrs(grid, recs) == {("cb", "lora"): 5e-4, ("cb", "cola2"): 1e-3}
    grid.lr_select = "task"
    assert choose_lrs(grid, recs) == {("cb", "lora"): 5e-4, ("cb", "cola2"): 5e-4}
    assert choose_lrs(grid, recs[:2]) is None  # a search run is missing


def test_method_lrs_give_a_method_its_own_candidates():
    """full fine-tuning searches its own LRs; a method with one candidate has no search run."""
    from cola_opt.llm.grid_plan import search_runs

    grid = GridConfig(tasks=("cb",), methods=("lora", "full", "cola2"), lrs=(1e-3, 5e-4),
                      method_lrs={"full": (1e-5, 1e-4), "cola2": (2e-3,)})
    grid.validate()
    assert [(r.method, r.lr) for r in search_runs(grid)] == [("lora", 1e-3), ("lora", 5e-4), ("full", 1e-5),
                                                             ("full", 1e-4)]
    recs = [{"run_id": Run("cb", m, 0, lr).run_id, "dev_accuracy": acc}
            for m, lr, acc in [("lora", 1e-3, 0.5), ("lora", 5e-4, 0.7), ("full", 1e-5, 0.8), ("full", 1e-4, 0.6)]]
    assert choose_lrs(grid, recs) == {("cb", "lora"): 5e-4, ("cb", "full"): 1e-5, ("cb", "cola2"): 2e-3}
    assert choose_lrs(grid, recs[:3]) is None


@pytest.mark.parametrize("change,message", [
    ({"method_lrs": {"cola3": (1e-3,)}}, "method_lrs names 'cola3', which is not a trained method"),
    ({"method_lrs": {"zero-shot": (1e-3,)}}, "method_lrs names 'zero-shot'"),
    ({"method_lrs": {"full": (1e-5, 1e-5)}}, r"method_lrs of 'full': \[1e-05, 1e-05\] must be distinct"),
    ({"method_lrs": {"full": ()}}, "method_lrs of 'full'"),
    ({"method_lrs": {"full": (1e-5,)}, "lr_select": "task"}, "method_lrs needs lr_select 'method'"),
])
def test_bad_method_lrs(change, message):
    with pytest.raises(ValueError, match=message):
        GridConfig(tasks=("cb",), methods=("zero-shot", "lora", "full"), lrs=(1e-3,), **change).validate()


def test_method_lrs_from_the_cli(capsys):
    from cola_opt.llm.cli import build_parser

    args = build_parser().parse_args(["grid", "--method-lrs", "full=1e-5,1e-4; galore-r8=3e-4"])
    assert args.method_lrs == {"full": (1e-5, 1e-4), "galore-r8": (3e-4,)}
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["grid", "--method-lrs", "full"])
    assert e.value.code == 2 and "'full' is not METHOD=LR[,LR...]" in capsys.readouterr().err


def test_method_names():
    assert method_changes("cola3", 8)["chain_length"] == 3
    assert method_changes("stepdown-r4", 8)["link_ranks"] == (8, 4)
    assert method_changes("full", 8)["method"] == "full"
    with pytest.raises(ValueError, match="unknown grid method 'cola1'"):
        method_changes("cola1", 8)


def test_stepdown_knot_at_three_fifths(tiny_model_dir, fixtures_dir, tmp_path):
    recs = run_grid(_grid(tiny_model_dir, fixtures_dir, tmp_path, tasks=("boolq",), methods=("stepdown-r2",),
                          seeds=1, lrs=(1e-2,)))
    assert recs[0]["total_steps"] == 8 and recs[0]["knot_steps"] == [5] and recs[0]["link_ranks"] == [8, 2]


@pytest.mark.parametrize("change,message", [
    ({"methods": ("lora", "nope")}, "unknown grid method 'nope'"),
    ({"seeds": 0}, "seeds must be an integer >= 1"),
    ({"lrs": (1e-3, -1.0)}, r"lrs \[0.001, -1.0\] must be finite numbers > 0"),
    ({"lr_select": "seed"}, "lr_select 'seed' must be"),
    ({"lr_select": "task", "methods": ("cola2",)}, "lr_select 'task' chooses the LR with LoRA"),
    ({"tasks": ("boolq", "copa")}, "unknown task 'copa'"),
    ({"stepdown_at": 1.0}, r"stepdown_at 1.0 must be in \(0, 1\)"),
    ({"base": FinetuneConfig(export_dir="out")}, "export_dir and export_links are per run; a grid does not export"),
])
def test_bad_grid_fails_before_any_run(change, message, tiny_model_dir, fixtures_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(grid_module, "finetune", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(ValueError, match=message):
        run_grid(_grid(tiny_model_dir, fixtures_dir, tmp_path / "g", **change))
    assert not (tmp_path / "g").exists()


def test_missing_task_data_fails_before_any_run(tiny_model_dir, fixtures_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(grid_module, "finetune", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(FileNotFoundError, match="no RTE/ folder"):
        run_grid(_grid(tiny_model_dir, fixtures_dir, tmp_path, tasks=("boolq", "rte")))
    assert not (tmp_path / "runs.jsonl").exists()


def test_second_runner_on_one_folder_is_refused(tiny_model_dir, fixtures_dir, tmp_path, capsys):
    from filelock import FileLock

    with FileLock(tmp_path / "grid.lock"):
        code = main(["grid", *_grid_args(tiny_model_dir, fixtures_dir), "--out", str(tmp_path)])
    assert code == 2 and "another grid runner is using" in capsys.readouterr().err


# ------------------------------------------------------------------ the report, against independent numbers
def _fake_records(grid, acc):
    """Records with given per-example correctness ``acc[(task, method, seed)] -> 0/1 array``."""
    recs = []
    for (t, m, s), v in acc.items():
        recs.append({"run_id": Run(t, m, s, None if m == "zero-shot" else 1e-3).run_id, "test_accuracy": v.mean(),
                     "test_correct": "".join(map(str, v)), "majority": 0.5, "dev_accuracy": 0.5})
    return recs


def test_table_and_paired_tests_match_scipy_and_numpy():
    grid = GridConfig(tasks=("sst2", "cb"), methods=("lora", "cola3"), seeds=3, lrs=(1e-3,))
    rng = np.random.default_rng(1)
    acc = {}
    for t in grid.tasks:
        for s in range(3):  # COLA = LoRA plus about a quarter of LoRA's errors fixed: a paired gain
            acc[(t, "lora", s)] = (rng.random(200) < 0.6 + 0.02 * s).astype(int)
            acc[(t, "cola3", s)] = acc[(t, "lora", s)] | (rng.random(200) < 0.25).astype(int)
    recs = _fake_records(grid, acc)
    chosen = choose_lrs(grid, recs)
    table = results_table(grid, recs, chosen)
    lora_sst2 = [100 * acc[("sst2", "lora", s)].mean() for s in range(3)]
    assert f"| LoRA | {np.mean(lora_sst2):.1f} ± {np.std(lora_sst2, ddof=1):.1f} |" in table
    assert "| majority class | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 |" in table
    partial = results_table(grid, [r for r in recs if r["run_id"] != Run("cb", "cola3", 2, 1e-3).run_id], chosen)
    cola_cb = [100 * acc[("cb", "cola3", s)].mean() for s in range(2)]
    assert f"| {np.mean(cola_cb):.1f} ± {np.std(cola_cb, ddof=1):.1f} (n=2) | " in partial
    tests = {r["task"]: r for r in paired_tests(grid, recs, chosen)}
    a = np.array([100 * acc[("cb", "cola3", s)].mean() for s in range(3)])
    b = np.array([100 * acc[("cb", "lora", s)].mean() for s in range(3)])
    assert tests["cb"]["diff"] == pytest.approx((a - b).mean())
    assert tests["cb"]["t_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert tests["cb"]["wins"] == int((a > b).sum()) and tests["cb"]["n"] == 3
    # a ~9-point paired gain on 3 x 200 examples: the bootstrap interval excludes 0
    assert 0 < tests["cb"]["boot_lo"] < tests["cb"]["diff"] < tests["cb"]["boot_hi"]
    assert tests["cb"]["boot_p"] < 0.01
    avg = tests["avg"]
    per_seed = [np.mean([100 * (acc[(t, "cola3", s)].mean() - acc[(t, "lora", s)].mean()) for t in grid.tasks])
                for s in range(3)]
    assert avg["diff"] == pytest.approx(np.mean(per_seed))


def test_identical_methods_give_no_difference():
    grid = GridConfig(tasks=("rte",), methods=("lora", "cola2"), seeds=2, lrs=(1e-3,))
    v = np.array([1, 0, 1, 1, 0])
    recs = _fake_records(grid, {("rte", m, s): v for m in grid.methods for s in range(2)})
    (t,) = paired_tests(grid, recs, choose_lrs(grid, recs))
    assert t["diff"] == 0 and t["ties"] == 2 and np.isnan(t["t_p"]) and t["boot_p"] == 1.0
    assert (t["boot_lo"], t["boot_hi"]) == (0.0, 0.0)


# ------------------------------------------------------------------ cells in parallel
def test_two_jobs_give_the_records_and_table_of_one_job_and_resume_exactly(tiny_model_dir, fixtures_dir, tmp_path):
    """Two worker processes, one thread each: the same records (metrics, losses, steps) and table as a serial grid;
    killed after some lines, a 2-job grid redoes none of them.

    With two LRs the LR search runs first; every main run depends on its choice.
    """
    kw = dict(tasks=("boolq",), methods=("zero-shot", "lora", "cola2"), seeds=2, lrs=(5e-2, 1e-2), lr_select="method")
    serial_grid = _grid(tiny_model_dir, fixtures_dir, tmp_path / "serial", **kw)
    serial_grid.base = serial_grid.base.replace(threads=1)  # float sums in the same order as the 1-thread cells
    serial = run_grid(serial_grid)
    parallel = run_grid(_grid(tiny_model_dir, fixtures_dir, tmp_path / "two", jobs=2, **kw))  # auto: 1 thread each
    assert len(serial) == 4 + 6 - 2  # search (2 methods x 2 LRs) + main (3 methods x 2 seeds) - shared
    assert [_strip(r) for r in parallel] == [_strip(r) for r in serial]
    assert all(r["threads"] == [1] for r in parallel if r["method"] != "zero-shot")
    table = (tmp_path / "two" / "table.md").read_text()
    assert table == (tmp_path / "serial" / "table.md").read_text()

    jsonl = tmp_path / "two" / "runs.jsonl"
    kept = b"".join(jsonl.read_bytes().splitlines(keepends=True)[:3])
    jsonl.write_bytes(kept + b'{"run_id": "boolq/lo')  # killed: three lines and a partial one
    again = run_grid(_grid(tiny_model_dir, fixtures_dir, tmp_path / "two", jobs=2, **kw))
    after = jsonl.read_bytes()
    assert after.startswith(kept) and after.count(b"\n") == len(serial)  # the 3 finished cells were not redone
    assert sorted(r["run_id"] for r in read_records(jsonl)) == sorted(r["run_id"] for r in serial)
    assert [_strip(r) for r in again] == [_strip(r) for r in serial]
    assert (tmp_path / "two" / "table.md").read_text() == table
    run_grid(_grid(tiny_model_dir, fixtures_dir, tmp_path / "two", jobs=2, **kw))  # all done: nothing to start
    assert jsonl.read_bytes() == after


def test_cell_threads_share_the_cores_under_auto():
    from cola_opt.llm.grid import cell_threads
    from cola_opt.llm.threads import usable_cores

    assert cell_threads("auto", 1) == "auto" and cell_threads(3, 2) == 3
    assert cell_threads("auto", 2) == max(1, usable_cores() // 2) and cell_threads("auto", 64) == 1


def test_bad_jobs_fail_before_any_run(tiny_model_dir, fixtures_dir, tmp_path, capsys):
    for bad in ("0", "-1"):
        code = main(["grid", *_grid_args(tiny_model_dir, fixtures_dir), "--out", str(tmp_path / "g"), "--jobs", bad])
        err = capsys.readouterr().err
        assert code == 2 and f"jobs {bad} must be an integer >= 1" in err and err.count("\n") == 1, err
    assert not (tmp_path / "g").exists()


def test_multirc_records_carry_its_official_metrics(tiny_model_dir, fixtures_dir, tmp_path):
    """The grid's line of a MultiRC run holds F1a and per-question EM beside accuracy; other tasks' lines do not."""
    recs = run_grid(_grid(tiny_model_dir, fixtures_dir, tmp_path, methods=("zero-shot",), seeds=1, lrs=(1e-2,)))
    by_task = {r["task"]: r for r in recs}
    official = by_task["multirc"]["test_official"]
    assert set(official) == {"f1a", "exact_match", "questions"} and 0 <= official["f1a"] <= 1
    assert official["questions"] >= 1 and "test_official" not in by_task["boolq"]


def test_a_grid_config_round_trips_through_grid_json():
    base = FinetuneConfig(task="cb", target_modules=("q_proj", "k_proj"), knot_steps=(3, 6), n_dev=7)
    grid = GridConfig(base=base, tasks=("cb", "rte"), methods=("lora", "full"), lrs=(1e-3, 5e-4),
                      method_lrs={"full": (1e-5,)}, seeds=2, jobs=2)
    back = GridConfig.from_dict(json.loads(json.dumps({"fingerprint": grid.fingerprint(), **grid.to_dict()})))
    assert back == grid and back.fingerprint() == grid.fingerprint()
    with pytest.raises(ValueError, match=r"not GridConfig fields: \['colour'\]"):
        GridConfig.from_dict({**grid.to_dict(), "colour": 1})


def test_report_folder_tabulates_a_stopped_grid_and_the_grid_tables_as_it_goes(tiny_model_dir, fixtures_dir,
                                                                                tmp_path, monkeypatch):
    from cola_opt.llm.grid import report_folder

    grid = _grid(tiny_model_dir, fixtures_dir, tmp_path, tasks=("boolq",), methods=("zero-shot", "lora"), seeds=2,
                 lrs=(1e-2,))
    written = []
    real = grid_module.write_report
    monkeypatch.setattr(grid_module, "write_report", lambda g, recs, *a, **k: written.append(len(recs)) or real(
        g, recs, *a, **k))
    run_grid(grid)
    assert written == [1, 2, 3, 4, 4]  # after each of the 4 runs, then the final report
    monkeypatch.undo()
    full_table = (tmp_path / "table.md").read_text()
    assert report_folder(tmp_path) == full_table  # the records alone give the grid's own table
    lines = (tmp_path / "runs.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "runs.jsonl").write_text("".join(lines[:-1]))  # stopped before its last run (lora, seed 1)
    partial = report_folder(tmp_path)
    assert "(n=1)" in partial and partial != full_table and (tmp_path / "table.md").read_text() == partial


def test_a_grid_run_killed_mid_run_resumes_from_its_checkpoint(tiny_model_dir, fixtures_dir, tmp_path, monkeypatch):
    """With checkpoint_every, a grid run killed after a checkpoint continues from it: the record of one clean run."""
    from cola_opt.llm.resume import RunCheckpoints

    kw = dict(tasks=("boolq",), methods=("cola2",), seeds=1, lrs=(1e-2,))
    clean = run_grid(_grid(tiny_model_dir, fixtures_dir, tmp_path / "clean", **kw))
    grid = _grid(tiny_model_dir, fixtures_dir, tmp_path / "killed", **kw)
    grid.base = grid.base.replace(checkpoint_every=3)
    save = RunCheckpoints.save

    def save_then_die(self, *a, **k):
        path = save(self, *a, **k)
        if self.chain.step_count == 6:  # after the knot at step 4 of 8
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(RunCheckpoints, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid)
    assert not (tmp_path / "killed" / "runs.jsonl").exists()
    monkeypatch.setattr(RunCheckpoints, "save", save)
    again = run_grid(grid)
    assert [_strip(r) for r in again] == [_strip(r) for r in clean] and again[0]["knot_steps"] == [4]
    results = json.loads(next((tmp_path / "killed" / "runs").rglob("results.json")).read_text())
    assert results["resumed_from"] == [6]
    assert not list((tmp_path / "killed" / "runs").rglob("checkpoint"))  # removed once the run finished
