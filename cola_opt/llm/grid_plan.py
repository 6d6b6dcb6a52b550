"""The experiment grid's plan: tasks x methods x seeds (x learning rates), and each cell's configuration.

One :class:`GridConfig` describes the paper's suite (Xia, Qin and Hazan 2024, Section 5;
MeZO sampling). This module says what the grid runs (:func:`search_runs`,
:func:`main_runs`, :func:`choose_lrs`) and with which settings (:func:`run_config`);
:mod:`cola_opt.llm.grid` runs it and :mod:`cola_opt.llm.report` tabulates it.

Grid methods (:func:`cola_opt.llm.methods.grid_method`; each a
:class:`~cola_opt.llm.config.FinetuneConfig` change):

====================  =====================================================================
``zero-shot``         no training
``lora``              one link (LoRA)
``cola<N>``           COLA, ``N >= 2`` links, knots evenly spaced (the paper: 2 and 3)
``relora<N>``         ReLoRA's settings on ``N >= 2`` links: the optimizer state pruned at
                      each knot (``relora_reset``), the LR a jagged cosine
``galore``            GaLore on the target weights (rank ``--galore-rank``), no LoRA
``stepdown-r<K>``     COLA, 2 links: rank ``--rank`` for the first ``stepdown_at`` of the
                      steps, then rank ``K`` (the paper: r = 8 for 3 of 5 epochs, then
                      K in {2, 4, 6, 8})
``full``              full fine-tuning (every weight, no LoRA)
====================  =====================================================================

A ``-r<R>`` suffix on ``lora``, ``cola<N>``, ``relora<N>`` and ``galore`` fixes the rank of
that method: ``lora-r64``, ``cola4-r8``, ``cola8-r1``, ``relora4-r8``, ``galore-r8``. For
the LoRA methods it sets ``rank = R`` and ``lora_alpha = R * (lora_alpha / rank)`` of the
grid, so the scaling ``alpha / r`` is the grid's at every rank (2 with the defaults,
``alpha = 2r``: COLA's r = 8, alpha = 16; rsLoRA's ``alpha / sqrt(r)`` is not used). For
``galore`` it sets ``galore_rank = R``. Without a suffix a method runs at the grid's
``--rank`` (``--galore-rank``).

Learning rate (optional selection on dev): with several ``lrs``, each trained method
(``lr_select="method"``) or LoRA alone, whose choice all methods then share
(``lr_select="task"``), is first run at the first seed for every LR; the LR with the
best final dev result is used for all seeds: the highest accuracy or exact match, the
lowest loss of a text task (:func:`cola_opt.llm.metrics.selection_key`; the dev loss
breaks a tie of exact match; remaining ties: the earlier LR in ``lrs``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import FinetuneConfig
from .lm_objective import task_metric
from .lm_plan import train_items
from .methods import grid_method
from .metrics import selection_key
from .plan import plan_steps
from .tasks import Splits, dev_cap, task_name

__all__ = ["ALL_TASKS", "DEFAULT_METHODS", "LR_JUDGE", "PAPER_LRS", "GridConfig", "Run", "choose_lrs",
           "main_runs", "method_changes", "parse_method_lrs", "run_config", "search_runs"]

PAPER_LRS = (1e-3, 8e-4, 5e-4, 1e-4, 5e-5)
ALL_TASKS = ("sst2", "rte", "cb", "wic", "wsc", "boolq", "multirc")
DEFAULT_METHODS = ("zero-shot", "lora", "cola2", "cola3", "stepdown-r2", "stepdown-r4", "stepdown-r6", "stepdown-r8")
LR_JUDGE = "lora"  # with lr_select "task", the grid method whose dev accuracy picks every method's LR


@dataclass
class GridConfig:
    """A grid of runs. ``base`` carries every shared setting (model, budget, LoRA, precision).

    Attributes:
        base: shared :class:`FinetuneConfig`; its task, method, seed and lr are replaced per run.
        tasks: task names (see :data:`cola_opt.llm.tasks.TASKS`).
        methods: grid method names (module docstring).
        seeds: number of seeds; seeds are ``0 .. seeds-1``.
        lrs: learning rates; more than one selects on dev (needs ``base.n_dev >= 1``).
        method_lrs: per grid method, its own learning rates in place of ``lrs`` (full
            fine-tuning and GaLore train on other LR scales than LoRA); only with
            ``lr_select="method"``. Empty: every method uses ``lrs``.
        lr_select: ``"method"`` or ``"task"`` (module docstring).
        stepdown_at: fraction of the optimizer steps trained by the first link of a
            ``stepdown-r<K>`` run (the paper: 3/5).
        out: output folder (``runs.jsonl``, ``table.md``, ``plot.png``, one folder per run).
        progress: show the grid's progress bar.
        jobs: cells run at once, each in a process of its own (:func:`cola_opt.llm.grid.run_grid`);
            1 runs them one after another in this process. Not fingerprinted: the records
            and the table are the same for any number.

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
    method_lrs: dict[str, tuple[float, ...]] = field(default_factory=dict)
    stepdown_at: float = 0.6
    out: str = "runs/grid"
    progress: bool = True
    jobs: int = 1

    def validate(self) -> None:
        """Check everything that needs no data and no model.

        Raises:
            ValueError: naming the first bad value.
        """
        if not self.tasks:
            raise ValueError("tasks is empty")
        self.tasks = tuple(task_name(t) for t in self.tasks)
        metrics = {t: task_metric(t) for t in self.tasks}
        if len(set(metrics.values())) > 1:
            raise ValueError(f"tasks {list(self.tasks)} report different metrics ({metrics}): a grid's table and paired "
                             "tests need one; run them as separate grids")
        if not self.methods:
            raise ValueError("methods is empty")
        for m in self.methods:
            grid_method(m)
        if len(set(self.methods)) != len(self.methods) or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks {list(self.tasks)} and methods {list(self.methods)} must not repeat")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"seeds must be an integer >= 1 (the number of seeds), got {self.seeds!r}")
        if not self.lrs or any(not (isinstance(x, (int, float)) and 0 < x < float("inf")) for x in self.lrs):
            raise ValueError(f"lrs {list(self.lrs)} must be finite numbers > 0")
        if len(set(self.lrs)) != len(self.lrs):
            raise ValueError(f"lrs {list(self.lrs)} must not repeat")
        for m, lrs in self.method_lrs.items():
            if m not in self.methods or not grid_method(m).method.trains:
                raise ValueError(f"method_lrs names {m!r}, which is not a trained method of this grid "
                                 f"({self.trained_methods})")
            if not lrs or any(not (isinstance(x, (int, float)) and 0 < x < float("inf")) for x in lrs) \
                    or len(set(lrs)) != len(lrs):
                raise ValueError(f"method_lrs of {m!r}: {list(lrs)} must be distinct finite numbers > 0")
        if self.method_lrs and self.lr_select != "method":
            raise ValueError(f"method_lrs needs lr_select 'method' (each method chooses its own LR), got "
                             f"{self.lr_select!r}")
        self.method_lrs = {m: tuple(v) for m, v in self.method_lrs.items()}
        if self.lr_select not in ("method", "task"):
            raise ValueError(f"lr_select {self.lr_select!r} must be 'method' or 'task'")
        if any(len(self.lrs_of(m)) > 1 for m in self.methods) and self.base.n_dev < 1:
            raise ValueError(f"choosing among lrs {list(self.lrs)} needs dev examples, but n_dev is {self.base.n_dev}")
        if len(self.lrs) > 1 and self.lr_select == "task" and LR_JUDGE not in self.methods:
            raise ValueError(f"lr_select 'task' chooses the LR with LoRA: add {LR_JUDGE!r} to methods")
        if not 0 < self.stepdown_at < 1:
            raise ValueError(f"stepdown_at {self.stepdown_at!r} must be in (0, 1)")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"jobs {self.jobs!r} must be an integer >= 1 (cells run at once)")
        if self.base.export_dir or self.base.export_links:
            raise ValueError("export_dir and export_links are per run; a grid does not export (use cola-opt finetune)")
        self.base.replace(method="lora", task=self.tasks[0]).validate()

    @property
    def trained_methods(self) -> list[str]:
        """The grid methods that train (all but ``zero-shot``), in order."""
        return [m for m in self.methods if grid_method(m).method.trains]

    def lrs_of(self, method: str) -> tuple[float, ...]:
        """The learning rates that ``method`` chooses among (``method_lrs``, else ``lrs``)."""
        return self.method_lrs.get(method, self.lrs)

    def fingerprint(self) -> str:
        """Hash of the shared settings that change a run's result (12 hex digits).

        The fields of :meth:`FinetuneConfig.shared_settings`, and ``stepdown_at``. The
        data drawn is fingerprinted per run (``data_fingerprint`` in ``runs.jsonl``).
        """
        shared = {**self.base.shared_settings(), "stepdown_at": self.stepdown_at}
        return hashlib.sha1(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, saved: dict) -> GridConfig:
        """The grid of a :meth:`to_dict` (or of a grid folder's ``grid.json``; its ``fingerprint`` key is ignored).

        Raises:
            ValueError: naming a key that is not a field.
        """
        d = {k: v for k, v in saved.items() if k != "fingerprint"}
        names = {f.name for f in dataclasses.fields(cls)}
        if set(d) - names:
            raise ValueError(f"not GridConfig fields: {sorted(set(d) - names)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        d["method_lrs"] = {m: tuple(v) for m, v in d.get("method_lrs", {}).items()}
        return cls(**{**d, "base": FinetuneConfig.from_dict(saved["base"])})

    def to_dict(self) -> dict:
        """Plain JSON-ready dict: the grid's fields, ``base`` as :meth:`FinetuneConfig.to_dict`."""
        d = {k: v for k, v in vars(self).items() if k != "base"}
        return {**{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}, "base": self.base.to_dict()}


def parse_method_lrs(text: str) -> dict[str, tuple[float, ...]]:
    """``'full=1e-5,1e-4;galore=1e-3'`` -> ``{'full': (1e-5, 1e-4), 'galore': (1e-3,)}`` (``method_lrs``).

    Raises:
        ValueError: naming a part that is not ``METHOD=LR[,LR...]``.
    """
    out = {}
    for part in (p.strip() for p in text.split(";") if p.strip()):
        name, sep, values = part.partition("=")
        try:
            lrs = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            lrs = ()
        if not sep or not name.strip() or not lrs:
            raise ValueError(f"{part!r} is not METHOD=LR[,LR...]")
        out[name.strip()] = lrs
    return out


def method_changes(method: str, rank: int, lora_alpha: float | None = None) -> dict:
    """The :class:`FinetuneConfig` fields that grid method ``method`` sets, given the grid's rank and alpha.

    See :meth:`cola_opt.llm.methods.GridMethod.changes` (``lora_alpha=None``: ``2 * rank``).

    Raises:
        ValueError: on an unknown name, listing the accepted forms.
    """
    return grid_method(method).changes(rank, lora_alpha)


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


def choose_lrs(grid: GridConfig, records: list[dict]) -> dict[tuple[str, str], float] | None:
    """The LR of every (task, trained method), from the first seed's dev result (its metric's direction).

    Returns:
        ``{(task, method): lr}``, or ``None`` while a search run is missing.
    """
    done = {r["run_id"]: r for r in records}
    chosen = {}
    for t in grid.tasks:
        for m in grid.trained_methods:
            judge = LR_JUDGE if grid.lr_select == "task" else m
            lrs = grid.lrs_of(judge)
            if len(lrs) == 1:
                chosen[(t, m)] = lrs[0]
                continue
            devs = []
            for lr in lrs:
                rec = done.get(Run(t, judge, 0, lr).run_id)
                if rec is None:
                    return None
                devs.append(selection_key(rec))
            chosen[(t, m)] = lrs[max(range(len(devs)), key=lambda i: (*devs[i], -i))]
    return chosen


def search_runs(grid: GridConfig) -> list[Run]:
    """The LR-search runs (seed 0, every LR, every judging method); none for a method with a single LR."""
    judges = [LR_JUDGE] if grid.lr_select == "task" else grid.trained_methods
    return [Run(t, m, 0, lr) for t in grid.tasks for m in judges if len(grid.lrs_of(m)) > 1 for lr in grid.lrs_of(m)]


def main_runs(grid: GridConfig, chosen: dict) -> list[Run]:
    """The grid's runs at the chosen LRs, seed-major (an unfinished grid still has whole seeds)."""
    runs = []
    for seed in range(grid.seeds):
        for t in grid.tasks:
            for m in grid.methods:
                trains = grid_method(m).method.trains
                runs.append(Run(t, m, seed, chosen[(t, m)] if trains else None))
    return runs


def run_config(grid: GridConfig, run: Run, splits: Splits) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of one cell, run on ``splits``.

    A ``stepdown-r<K>`` cell ties its knot after ``round(stepdown_at * total)`` steps
    (at least 1, at most ``total - 1``).

    Raises:
        ValueError: a step-down run with fewer than 2 optimizer steps.
    """
    gm = grid_method(run.method)
    cfg = grid.base.replace(
        task=run.task,
        seed=run.seed,
        lr=run.lr if run.lr is not None else grid.base.lr,
        n_dev=min(grid.base.n_dev, dev_cap(run.task)),
        output_dir=str(Path(grid.out) / "runs" / run.run_id.replace("/", "_")),
        progress=False,
        **gm.changes(grid.base.rank, grid.base.lora_alpha),
    )
    if gm.stepdown:
        _, total, _ = plan_steps(cfg.replace(method="lora", link_ranks=None), train_items(cfg, splits))
        if total < 2:
            raise ValueError(f"{run.method} on {run.task} needs at least 2 optimizer steps, the run has {total}")
        cfg = cfg.replace(knot_steps=(min(total - 1, max(1, round(grid.stepdown_at * total))),))
    return cfg
