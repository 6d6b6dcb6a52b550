"""The experiment grid's runner: every cell of a :class:`~cola_opt.llm.grid_plan.GridConfig`, resumable.

:func:`run_grid` runs every cell through the one trainer
(:func:`cola_opt.llm.trainer.finetune`) and appends one JSON line per finished run to
``<out>/runs.jsonl``. On a restart, a run whose line is there is skipped if the line
has the same run id, the same shared settings (:meth:`GridConfig.fingerprint`) and the
same examples (``data_fingerprint``, :meth:`cola_opt.llm.tasks.Splits.fingerprint` of
that task and seed's draw), so a killed grid continues where it stopped, and a grid
pointed at other data runs again. The table and the plot are built from that file alone
(:mod:`cola_opt.llm.report`), so a resumed grid gives the same table as an
uninterrupted one. What the grid runs, and with which settings: :mod:`cola_opt.llm.grid_plan`.

With ``GridConfig.jobs = N > 1``, up to ``N`` cells train at once, each in a worker
process of its own (:class:`_CellPool`) with :func:`cell_threads` torch threads (1 each
on a 2-core machine): the LR-search runs first, all of them finished before the LRs are
chosen, then the main runs. Only the grid's process appends to ``runs.jsonl`` (one line
per cell, in the order the cells finish), and the workers die with it, so a killed
parallel grid resumes as a serial one does; the records and the table do not depend on
``N`` (the lines' order in the file does).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..atomic import atomic_save_json, atomic_write
from .config import FinetuneConfig
from .grid_plan import (
    ALL_TASKS,
    DEFAULT_METHODS,
    PAPER_LRS,
    GridConfig,
    Run,
    choose_lrs,
    main_runs,
    method_changes,
    run_config,
    search_runs,
)
from .locks import exclusive_lock
from .metrics import headline, lm_record_fields, record_metric, record_value
from .plan import draw, preflight
from .report import write_report
from .tasks import Splits, dev_cap
from .threads import usable_cores
from .trainer import finetune
from .update_rank import summarise_records

__all__ = [
    "ALL_TASKS",
    "DEFAULT_METHODS",
    "PAPER_LRS",
    "GridConfig",
    "GridDraws",
    "Run",
    "cell_threads",
    "choose_lrs",
    "load_folder",
    "method_changes",
    "read_records",
    "report_folder",
    "run_grid",
]


# ----------------------------------------------------------------------------- the record file
def read_records(path: str | os.PathLike, fingerprint: str | None = None) -> list[dict]:
    """The finished runs in a ``runs.jsonl`` (only those with ``fingerprint``, if given).

    A last line cut short by a kill is ignored (and removed by :func:`run_grid`).
    """
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if fingerprint is None or rec.get("fingerprint") == fingerprint:
            out.append(rec)
    return out


def _repair_tail(path: Path) -> None:
    """Drop a partial last line (the process was killed while appending)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(keep))
        print(f"[grid] dropped a partial last line of {path} ({len(data) - len(keep)} bytes)", file=sys.stderr)


def _append(path: Path, rec: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _record(grid: GridConfig, run: Run, cfg: FinetuneConfig, splits: Splits, res: dict | None, err: str | None) -> dict:
    """The ``runs.jsonl`` line of one run (``res`` is ``None`` for a run whose loss became non-finite)."""
    rec = {"run_id": run.run_id, "fingerprint": grid.fingerprint(), "data_fingerprint": splits.fingerprint(),
           **dataclasses.asdict(run), "majority": splits.majority_accuracy(),
           "dev_majority": splits.majority_accuracy("dev"), "counts": splits.counts, "error": err}
    if res is None:
        return {**rec, "dev_accuracy": None, "test_accuracy": None, "test_correct": None}
    loss = res["train_loss"]
    tenth = max(1, len(loss) // 10)
    if headline(res["test"]).name == "accuracy":
        labels = [e.label for e in splits.test]
        rec.update(
            dev_accuracy=res["dev"]["accuracy"] if res["dev"] and res["dev"]["n"] else None,
            test_accuracy=res["test"]["accuracy"],
            test_correct="".join(str(int(p == y)) for p, y in zip(res["test"]["predictions"], labels)),
        )
        official = {k: res["test"][k] for k in OFFICIAL_METRICS if k in res["test"]}
        if official:  # a task's official metrics beside accuracy (MultiRC: F1a, EM per question)
            rec["test_official"] = official
    else:  # a language-model task: its headline metric, losses, and per-item values for the paired tests
        rec.update(lm_record_fields(res))
    rec.update(
        total_steps=res["total_steps"],
        knot_steps=res["knot_steps"],
        link_ranks=list(cfg.link_ranks) if cfg.link_ranks else None,
        train_loss_first=sum(loss[:tenth]) / tenth if loss else None,
        train_loss_last=sum(loss[-tenth:]) / tenth if loss else None,
        train_seconds=res["train_seconds"],
        train_cpu_seconds=res.get("train_cpu_seconds"),  # this process only: a paused run's wall time overstates
        wall_seconds=res["wall_seconds"],
        trainable_parameters=res.get("trainable_parameters"),
        step_seconds_median=float(np.median(res["step_seconds"])) if res.get("step_seconds") else None,
        threads=(res.get("threads") or {}).get("used"),
        dev_curve=[[d["step"], d.get(headline(res["test"]).name)] for d in res["dev_history"]],
        update_rank=summarise_records(res["update_rank"]) if res.get("update_rank") else None,
    )
    return rec


OFFICIAL_METRICS = ("f1a", "exact_match", "questions")  # what cola_opt.llm.tasks.task_metrics may add


class GridDraws:
    """Each (task, seed)'s examples, drawn once (MeZO sampling; ``n_dev`` capped per task): ``draws(task, seed)``.

    Raises (on a call): ValueError, FileNotFoundError from :func:`cola_opt.llm.plan.draw` (bad task or data).
    """

    def __init__(self, base: FinetuneConfig) -> None:
        self.base, self.splits = base, {}

    def __call__(self, task: str, seed: int) -> Splits:
        if (task, seed) not in self.splits:
            n_dev = min(self.base.n_dev, dev_cap(task))
            self.splits[(task, seed)] = draw(self.base.replace(task=task, seed=seed, n_dev=n_dev))
        return self.splits[(task, seed)]


def run_grid(grid: GridConfig) -> list[dict]:
    """Run (or finish) the grid; write ``runs.jsonl``, ``table.md``, ``summary.json`` and ``plot.png``.

    Every task's data is sampled, and every run's configuration checked, before the
    first run starts. A run whose loss becomes NaN/inf is recorded with its error (it
    loses any LR selection) and the grid goes on. ``grid.jobs`` cells run at once (module
    docstring).

    Returns:
        the records of the runs in the grid (search runs included), in run order.

    Raises:
        ValueError, FileNotFoundError: bad settings or data, before any run.
        RuntimeError: if another process is running a grid in the same folder.
        cola_opt.llm.models.ModelLoadError: the model cannot be loaded.
    """
    grid.validate()
    data = GridDraws(grid.base)
    for t in grid.tasks:  # check every cell's data, plan and LoRA targets; train none, write nothing
        for m in grid.methods:
            preflight(run_config(grid, Run(t, m, 0, grid.lrs[0]), data(t, 0)), data(t, 0))
    out = Path(grid.out)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out / "grid.lock", f"another grid runner is using {out} (grid.lock is held)"):
        path = out / "runs.jsonl"
        _repair_tail(path)
        atomic_save_json({"fingerprint": grid.fingerprint(), **grid.to_dict()}, out / "grid.json")
        t0 = time.perf_counter()
        done = {r["run_id"]: r for r in read_records(path, grid.fingerprint()) if _same_data(grid, r, data)}
        ordered, chosen = _GridProgress(grid, path, data, done).run_all()
        write_report(grid, ordered, chosen, seconds=time.perf_counter() - t0)
        return ordered


def _same_data(grid: GridConfig, rec: dict, data: GridDraws) -> bool:
    """Whether a record is of a cell of ``grid`` and was run on the examples that cell draws now."""
    task, seed = rec.get("task"), rec.get("seed")
    if task not in grid.tasks or not isinstance(seed, int) or not 0 <= seed < grid.seeds:
        return False
    return rec.get("data_fingerprint") == data(task, seed).fingerprint()


class _GridProgress:
    """The runs still to do, run one by one (or ``grid.jobs`` at once), each line appended as it finishes; the bar."""

    def __init__(self, grid: GridConfig, path: Path, data: GridDraws, done: dict[str, dict]) -> None:
        self.grid, self.path, self.data, self.done = grid, path, data, done
        self.pool: _CellPool | None = None
        self.chosen: dict | None = None  # the LRs, once the search is done: the table is rewritten after each run

    def run_all(self) -> tuple[list[dict], dict]:
        """The LR search, the LR choice, then the main runs: the records of all, in run order, and the LRs chosen.

        Every search run has finished before the LRs are chosen and the first main run starts.
        """
        from tqdm.auto import tqdm

        grid, done = self.grid, self.done
        search = search_runs(grid)
        n_total = len({r.run_id for r in search}) + len(grid.tasks) * len(grid.methods) * grid.seeds
        n_total -= len({(r.task, r.method) for r in search})  # the chosen LR's search run is also a seed-0 run
        self.bar = tqdm(total=n_total, desc="grid", unit="run", disable=not grid.progress)
        resumed = sum(1 for r in dict.fromkeys(search) if r.run_id in done)
        self.bar.update(resumed)
        try:
            self.run(search)
            chosen = self.chosen = choose_lrs(grid, list(done.values()))
            main = main_runs(grid, chosen)
            late = sum(1 for r in main if r.run_id in done and r not in search)
            self.bar.update(late)
            if resumed + late:
                self.bar.write(f"[grid] resumed: {resumed + late} of {n_total} runs were already done in {self.path}")
            self.run(main)
        finally:
            if self.pool is not None:
                self.pool.close()
            self.bar.close()
        return [done[r.run_id] for r in dict.fromkeys(search + main)], chosen

    def run(self, runs: list[Run]) -> None:
        """Run every run not yet done; a non-finite stop is recorded with its error."""
        todo = [(run, self.data(run.task, run.seed)) for run in dict.fromkeys(runs) if run.run_id not in self.done]
        cells = {run.run_id: (run, run_config(self.grid, run, splits), splits) for run, splits in todo}
        if self.grid.jobs == 1:
            for run, cfg, splits in cells.values():
                self.bar.set_postfix_str(run.run_id)
                self.finish(run, cfg, splits, *_train_cell(cfg, splits))
            return
        if not cells:
            return
        if self.pool is None:
            self.pool = _CellPool(self.grid.jobs)
        threads = cell_threads(self.grid.base.threads, self.grid.jobs)
        jobs = [(run_id, cfg.replace(threads=threads), splits) for run_id, (_, cfg, splits) in cells.items()]
        self.bar.set_postfix_str(f"{min(len(jobs), self.grid.jobs)} at once")
        for run_id, res, err in self.pool.results(jobs):
            self.finish(*cells[run_id], res, err)

    def finish(self, run: Run, cfg: FinetuneConfig, splits: Splits, res: dict | None, err: str | None) -> None:
        """Append a finished run's line (this process alone appends, so lines never interleave) and report it."""
        rec = _record(self.grid, run, cfg, splits, res, err)
        _append(self.path, rec)
        self.done[run.run_id] = rec
        self.bar.update(1)
        metric = record_metric(rec)
        value = metric.text(record_value(rec, "test"))
        self.bar.write(f"{run.run_id}: test {metric.name} {value}{'%' if metric.percent and value != '-' else ''}"
                       f"{'' if err is None else ' (' + err.split(';')[0] + ')'}")
        if self.chosen is not None:  # every finished cell lands in the table at once ("(n=k)" while seeds are missing)
            write_report(self.grid, list(self.done.values()), self.chosen)


def report_folder(out: str | os.PathLike) -> str | None:
    """Write the report of a grid folder from its ``grid.json`` and ``runs.jsonl`` alone: a running or stopped grid.

    Records are those with the grid's fingerprint (the last line of a run id wins);
    missing seeds show as ``(n=k)``. Returns the table, or ``None`` while an LR-search run
    is missing.

    Raises:
        FileNotFoundError: ``out`` holds no ``grid.json``.
    """
    grid, records, chosen = load_folder(out)
    return None if chosen is None else write_report(grid, records, chosen)


def load_folder(out: str | os.PathLike) -> tuple[GridConfig, list[dict], dict | None]:
    """A grid folder's grid (``grid.json``), its records (``runs.jsonl``, the grid's fingerprint only, the
    last line of a run id wins) and the LRs chosen (:func:`choose_lrs`; ``None`` while a search run is missing).

    Raises:
        FileNotFoundError: ``out`` holds no ``grid.json``.
    """
    out = Path(out)
    saved = json.loads((out / "grid.json").read_text(encoding="utf-8"))
    grid = GridConfig.from_dict({**saved, "out": str(out)})
    records = list({r["run_id"]: r for r in read_records(out / "runs.jsonl", grid.fingerprint())}.values())
    return grid, records, choose_lrs(grid, records)


# ----------------------------------------------------------------------------- cells in parallel
def cell_threads(threads: int | str, jobs: int) -> int | str:
    """The torch threads of each cell of a grid that runs ``jobs`` cells at once.

    ``threads`` itself if it is a number; with ``auto``, one run alone keeps ``auto``
    and ``jobs`` runs share the usable cores evenly (at least 1 each: 1 on a 2-core
    machine with 2 jobs), so that no run waits for a thread its sibling holds.
    """
    if threads != "auto" or jobs == 1:
        return threads
    return max(1, usable_cores() // jobs)


def _train_cell(cfg: FinetuneConfig, splits: Splits) -> tuple[dict | None, str | None]:
    """``(results, None)`` of one cell, or ``(None, error)`` if its loss became non-finite."""
    try:
        return finetune(cfg, splits), None
    except FloatingPointError as e:
        return None, str(e)


def _train_cell_job(job: tuple[str, FinetuneConfig, Splits]) -> tuple[str, dict | None, str | None]:
    run_id, cfg, splits = job
    return (run_id, *_train_cell(cfg, splits))


def _worker_init() -> None:
    """In each worker: die with the grid's process (SIGTERM: a checkpointing run saves first); Ctrl-C is the grid's."""
    import signal
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


class _CellPool:
    """``jobs`` worker processes (spawned: a fork would inherit torch's thread pools) that train cells.

    Each worker trains one cell at a time with :func:`cola_opt.llm.trainer.finetune` and
    sends its results back; the grid's process writes them. A worker dies with the grid's
    process, so a killed grid leaves no run going, and a resumed one redoes only the cells
    that had not finished.
    """

    def __init__(self, jobs: int) -> None:
        import multiprocessing

        self.pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_worker_init)

    def results(self, jobs: list[tuple[str, FinetuneConfig, Splits]]):
        """Yield ``(run_id, results or None, error or None)`` of each job as it finishes (jobs start in their order).

        Raises:
            whatever a cell raised other than a non-finite stop (the other cells are then stopped).
        """
        try:
            yield from self.pool.imap_unordered(_train_cell_job, jobs, chunksize=1)
        except BaseException:
            self.pool.terminate()
            raise

    def close(self) -> None:
        """Let the workers exit (they are idle once every result is in; after an error they are already stopped)."""
        self.pool.close()
        self.pool.join()
