"""The experiment grid: tasks x methods x seeds (x learning rates), resumable.

One :class:`GridConfig` describes the paper's suite (Xia, Qin and Hazan 2024, Section 5;
MeZO sampling). :func:`run_grid` runs every cell through the one trainer
(:func:`cola_opt.llm.trainer.finetune`) and appends one JSON line per finished run to
``<out>/runs.jsonl``. On a restart, runs whose line is there (same run id, same shared
settings) are skipped, so a killed grid continues where it stopped. The table and the
plot are built from that file alone (:mod:`cola_opt.llm.report`), so a resumed grid
gives the same table as an uninterrupted one.

Grid methods (each a :class:`~cola_opt.llm.config.FinetuneConfig` change):

==================  =====================================================================
``zero-shot``       no training
``lora``            one link (LoRA)
``cola<N>``         COLA, ``N >= 2`` links, knots evenly spaced (the paper: 2 and 3)
``stepdown-r<K>``   COLA, 2 links: rank ``--rank`` for the first ``stepdown_at`` of the
                    steps, then rank ``K`` (the paper: r = 8 for 3 of 5 epochs, then
                    K in {2, 4, 6, 8})
``full``            full fine-tuning (every weight, no LoRA)
==================  =====================================================================

Learning rate (optional selection on dev): with several ``lrs``, each trained method
(``lr_select="method"``) or LoRA alone, whose choice all methods then share
(``lr_select="task"``), is first run at the first seed for every LR; the LR with the
best final dev accuracy is used for all seeds (ties: the earlier LR in ``lrs``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_save_json, atomic_write
from .config import FinetuneConfig, plan_steps
from .lora import check_targets
from .tasks import Splits, get_task, sample_splits

__all__ = ["ALL_TASKS", "PAPER_LRS", "GridConfig", "Run", "choose_lrs", "method_changes", "read_records", "run_grid"]

PAPER_LRS = (1e-3, 8e-4, 5e-4, 1e-4, 5e-5)
ALL_TASKS = ("sst2", "rte", "cb", "wic", "wsc", "boolq", "multirc")
DEFAULT_METHODS = ("zero-shot", "lora", "cola2", "cola3", "stepdown-r2", "stepdown-r4", "stepdown-r6", "stepdown-r8")
# FinetuneConfig fields that identify a cell, or that do not change its result
_PER_RUN = ("task", "method", "seed", "lr", "chain_length", "knot_steps", "link_ranks", "output_dir", "progress")
_NO_EFFECT = ("data_dir", "device", "eval_batch_size", "checkpoint_every", "resume", "export_dir", "export_links")
# fields added after grids were fingerprinted: left out of the fingerprint at their old behaviour
_LATER_DEFAULTS = {"nonfinite": "stop", "max_consecutive_skips": 10}


@dataclass
class GridConfig:
    """A grid of runs. ``base`` carries every shared setting (model, budget, LoRA, precision).

    Attributes:
        base: shared :class:`FinetuneConfig`; its task, method, seed and lr are replaced per run.
        tasks: task names (see :data:`cola_opt.llm.tasks.TASKS`).
        methods: grid method names (module docstring).
        seeds: number of seeds; seeds are ``0 .. seeds-1``.
        lrs: learning rates; more than one selects on dev (needs ``base.n_dev >= 1``).
        lr_select: ``"method"`` or ``"task"`` (module docstring).
        stepdown_at: fraction of the optimizer steps trained by the first link of a
            ``stepdown-r<K>`` run (the paper: 3/5).
        out: output folder (``runs.jsonl``, ``table.md``, ``plot.png``, one folder per run).
        progress: show the grid's progress bar.

    Per task, ``n_dev`` is ``min(base.n_dev, task.max_dev)`` (MeZO: 500, CB 100).

    Raises:
        ValueError: from :meth:`validate`, naming the bad value.
    """

    base: FinetuneConfig = field(default_factory=FinetuneConfig)
    tasks: tuple[str, ...] = ALL_TASKS
    methods: tuple[str, ...] = DEFAULT_METHODS
    seeds: int = 5
    lrs: tuple[float, ...] = (5e-4,)
    lr_select: str = "method"
    stepdown_at: float = 0.6
    out: str = "runs/grid"
    progress: bool = True

    def validate(self) -> None:
        """Check everything that needs no data and no model.

        Raises:
            ValueError: naming the first bad value.
        """
        if not self.tasks:
            raise ValueError("tasks is empty")
        self.tasks = tuple(get_task(t).name for t in self.tasks)
        if not self.methods:
            raise ValueError("methods is empty")
        for m in self.methods:
            method_changes(m, self.base.rank)
        if len(set(self.methods)) != len(self.methods) or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks {list(self.tasks)} and methods {list(self.methods)} must not repeat")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"seeds must be an integer >= 1 (the number of seeds), got {self.seeds!r}")
        if not self.lrs or any(not (isinstance(x, (int, float)) and 0 < x < float("inf")) for x in self.lrs):
            raise ValueError(f"lrs {list(self.lrs)} must be finite numbers > 0")
        if len(set(self.lrs)) != len(self.lrs):
            raise ValueError(f"lrs {list(self.lrs)} must not repeat")
        if self.lr_select not in ("method", "task"):
            raise ValueError(f"lr_select {self.lr_select!r} must be 'method' or 'task'")
        if len(self.lrs) > 1 and self.base.n_dev < 1:
            raise ValueError(f"choosing among lrs {list(self.lrs)} needs dev examples, but n_dev is {self.base.n_dev}")
        if len(self.lrs) > 1 and self.lr_select == "task" and "lora" not in self.methods:
            raise ValueError("lr_select 'task' chooses the LR with LoRA: add 'lora' to methods")
        if not 0 < self.stepdown_at < 1:
            raise ValueError(f"stepdown_at {self.stepdown_at!r} must be in (0, 1)")
        if self.base.export_dir or self.base.export_links:
            raise ValueError("export_dir and export_links are per run; a grid does not export (use cola-opt finetune)")
        self.base.replace(method="lora").validate()

    def fingerprint(self) -> str:
        """Hash of the shared settings that change a run's result (12 hex digits)."""
        shared = {k: v for k, v in self.base.to_dict().items()
                  if k not in _PER_RUN + _NO_EFFECT and _LATER_DEFAULTS.get(k, object()) != v}
        shared["stepdown_at"] = self.stepdown_at
        return hashlib.sha1(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:12]


def method_changes(method: str, rank: int) -> dict:
    """The :class:`FinetuneConfig` fields that grid method ``method`` sets.

    ``stepdown-r<K>`` returns ``link_ranks = (rank, K)``; its knot step is set per run
    (it depends on the run's length).

    Raises:
        ValueError: on an unknown name, listing the accepted forms.
    """
    if method in ("zero-shot", "lora", "full"):
        return {"method": method, "link_ranks": None, "knot_steps": None}
    m = re.fullmatch(r"cola(\d+)", method)
    if m and int(m.group(1)) >= 2:
        return {"method": "cola", "chain_length": int(m.group(1)), "link_ranks": None, "knot_steps": None}
    m = re.fullmatch(r"stepdown-r(\d+)", method)
    if m and int(m.group(1)) >= 1:
        return {"method": "cola", "chain_length": 2, "link_ranks": (rank, int(m.group(1)))}
    raise ValueError(
        f"unknown grid method {method!r}; use zero-shot, lora, full, cola<N> (N >= 2) or stepdown-r<K> (K >= 1)"
    )


@dataclass(frozen=True)
class Run:
    """One cell of the grid: a task, a grid method, a seed and a learning rate (``None`` for zero-shot)."""

    task: str
    method: str
    seed: int
    lr: float | None

    @property
    def run_id(self) -> str:
        lr = "-" if self.lr is None else f"{self.lr:g}"
        return f"{self.task}/{self.method}/s{self.seed}/lr{lr}"


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


# ----------------------------------------------------------------------------- LR choice
def choose_lrs(grid: GridConfig, records: list[dict]) -> dict[tuple[str, str], float] | None:
    """The LR of every (task, trained method), from the first seed's dev accuracy.

    Returns:
        ``{(task, method): lr}``, or ``None`` while a search run is missing.
    """
    if len(grid.lrs) == 1:
        return {(t, m): grid.lrs[0] for t in grid.tasks for m in grid.methods if m != "zero-shot"}
    done = {r["run_id"]: r for r in records}
    chosen = {}
    for t in grid.tasks:
        for m in grid.methods:
            if m == "zero-shot":
                continue
            judge = "lora" if grid.lr_select == "task" else m
            devs = []
            for lr in grid.lrs:
                rec = done.get(Run(t, judge, 0, lr).run_id)
                if rec is None:
                    return None
                acc = rec.get("dev_accuracy")
                devs.append(-1.0 if acc is None else acc)
            chosen[(t, m)] = grid.lrs[max(range(len(devs)), key=lambda i: (devs[i], -i))]
    return chosen


def _search_runs(grid: GridConfig) -> list[Run]:
    if len(grid.lrs) == 1:
        return []
    judges = ["lora"] if grid.lr_select == "task" else [m for m in grid.methods if m != "zero-shot"]
    return [Run(t, m, 0, lr) for t in grid.tasks for m in judges for lr in grid.lrs]


def _main_runs(grid: GridConfig, chosen: dict) -> list[Run]:
    runs = []
    for seed in range(grid.seeds):  # seed-major: an unfinished grid still has whole seeds
        for t in grid.tasks:
            for m in grid.methods:
                runs.append(Run(t, m, seed, None if m == "zero-shot" else chosen[(t, m)]))
    return runs


# ----------------------------------------------------------------------------- running
def _run_config(grid: GridConfig, run: Run, splits: Splits) -> FinetuneConfig:
    changes = method_changes(run.method, grid.base.rank)
    cfg = grid.base.replace(
        task=run.task,
        seed=run.seed,
        lr=run.lr if run.lr is not None else grid.base.lr,
        n_dev=min(grid.base.n_dev, get_task(run.task).max_dev),
        output_dir=str(Path(grid.out) / "runs" / run.run_id.replace("/", "_")),
        progress=False,
        **changes,
    )
    if run.method.startswith("stepdown-"):
        _, total, _ = plan_steps(cfg.replace(method="lora", link_ranks=None), len(splits.train))
        if total < 2:
            raise ValueError(f"{run.method} on {run.task} needs at least 2 optimizer steps, the run has {total}")
        cfg = cfg.replace(knot_steps=(min(total - 1, max(1, round(grid.stepdown_at * total))),))
    return cfg


def _record(grid: GridConfig, run: Run, cfg: FinetuneConfig, splits: Splits, res: dict | None, err: str | None) -> dict:
    from .trainer import majority_accuracy

    rec = {"run_id": run.run_id, "fingerprint": grid.fingerprint(), **dataclasses.asdict(run),
           "majority": majority_accuracy(splits), "counts": splits.counts, "error": err}
    if res is None:
        return {**rec, "dev_accuracy": None, "test_accuracy": None, "test_correct": None}
    labels = [e.label for e in splits.test]
    loss = res["train_loss"]
    tenth = max(1, len(loss) // 10)
    rec.update(
        dev_accuracy=res["dev"]["accuracy"] if res["dev"] and res["dev"]["n"] else None,
        test_accuracy=res["test"]["accuracy"],
        test_correct="".join(str(int(p == y)) for p, y in zip(res["test"]["predictions"], labels)),
        total_steps=res["total_steps"],
        knot_steps=res["knot_steps"],
        link_ranks=list(cfg.link_ranks) if cfg.link_ranks else None,
        train_loss_first=sum(loss[:tenth]) / tenth if loss else None,
        train_loss_last=sum(loss[-tenth:]) / tenth if loss else None,
        train_seconds=res["train_seconds"],
        wall_seconds=res["wall_seconds"],
    )
    return rec


def run_grid(grid: GridConfig) -> list[dict]:
    """Run (or finish) the grid; write ``runs.jsonl``, ``table.md``, ``summary.json`` and ``plot.png``.

    Every task's data is sampled, and every run's configuration checked, before the
    first run starts. A run whose loss becomes NaN/inf is recorded with its error (it
    loses any LR selection) and the grid goes on.

    Returns:
        the records of the runs in the grid (search runs included), in run order.

    Raises:
        ValueError, FileNotFoundError: bad settings or data, before any run.
        RuntimeError: if another process is running a grid in the same folder.
        cola_opt.llm.models.ModelLoadError: the model cannot be loaded.
    """
    from tqdm.auto import tqdm

    from .report import write_report
    from .trainer import finetune

    grid.validate()
    splits: dict[tuple[str, int], Splits] = {}

    def data(task: str, seed: int) -> Splits:
        if (task, seed) not in splits:
            b = grid.base
            n_dev = min(b.n_dev, get_task(task).max_dev)
            splits[(task, seed)] = sample_splits(get_task(task), seed=seed, n_train=b.n_train, n_dev=n_dev,
                                                 n_test=b.n_test, data_dir=b.data_dir)
        return splits[(task, seed)]

    for t in grid.tasks:  # check every cell's data, plan and LoRA targets; train none, write nothing
        for m in grid.methods:
            cfg = _run_config(grid, Run(t, m, 0, grid.lrs[0]), data(t, 0))
            cfg.validate()
            plan_steps(cfg, len(data(t, 0).train))
            if cfg.method in ("lora", "cola"):
                check_targets(cfg.model, cfg.lora_settings(), cfg.link_ranks or ())
    out = Path(grid.out)
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / "grid.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RuntimeError(f"another grid runner is using {out} (grid.lock is held)") from None
    try:
        path = out / "runs.jsonl"
        _repair_tail(path)
        atomic_save_json({"fingerprint": grid.fingerprint(), **_grid_dict(grid)}, out / "grid.json")

        done = {r["run_id"]: r for r in read_records(path, grid.fingerprint())}
        search = _search_runs(grid)
        n_total = len({r.run_id for r in search}) + len(grid.tasks) * len(grid.methods) * grid.seeds
        n_total -= len({(r.task, r.method) for r in search})  # the chosen LR's search run is also a seed-0 run
        bar = tqdm(total=n_total, desc="grid", unit="run", disable=not grid.progress)
        t0 = time.perf_counter()

        def run_all(runs: list[Run]) -> None:
            for run in runs:
                if run.run_id in done:
                    continue
                bar.set_postfix_str(run.run_id)
                cfg = _run_config(grid, run, data(run.task, run.seed))
                try:
                    res, err = finetune(cfg, data(run.task, run.seed)), None
                except FloatingPointError as e:
                    res, err = None, str(e)
                rec = _record(grid, run, cfg, data(run.task, run.seed), res, err)
                _append(path, rec)
                done[run.run_id] = rec
                bar.update(1)
                acc = rec["test_accuracy"]
                bar.write(f"{run.run_id}: test {'-' if acc is None else f'{acc * 100:.1f}%'}"
                          f"{'' if err is None else ' (' + err.split(';')[0] + ')'}")

        resumed = sum(1 for r in dict.fromkeys(search) if r.run_id in done)
        bar.update(resumed)
        run_all(search)
        chosen = choose_lrs(grid, list(done.values()))
        main = _main_runs(grid, chosen)
        late = sum(1 for r in main if r.run_id in done and r not in search)
        bar.update(late)
        if resumed + late:
            bar.write(f"[grid] resumed: {resumed + late} of {n_total} runs were already done in {path}")
        run_all(main)
        bar.close()
        ordered = [done[r.run_id] for r in dict.fromkeys(search + main)]
        write_report(grid, ordered, chosen, seconds=time.perf_counter() - t0)
        return ordered
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _grid_dict(grid: GridConfig) -> dict:
    d = {k: v for k, v in vars(grid).items() if k != "base"}
    return {**{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}, "base": grid.base.to_dict()}
