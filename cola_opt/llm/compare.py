"""Zero-shot vs LoRA vs COLA (vs ReLoRA, GaLore, full fine-tuning) on one data draw and seed, as a table.

:func:`compare` checks every method's configuration first (:func:`cola_opt.llm.plan.preflight`),
then runs each through the one trainer (:func:`cola_opt.llm.trainer.finetune`) on the
same examples, and prints :func:`format_table`. With checkpoints on, a method that
finished earlier with the same settings, on the same examples and with every output it
asks for in place, is read back instead of trained again
(:func:`cola_opt.llm.resume.finished_result`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_save_json
from .config import FinetuneConfig
from .methods import get_method
from .metrics import cell, headline, table_columns
from .plan import preflight
from .resume import finished_result
from .trainer import finetune

__all__ = ["compare", "format_table", "method_config"]


def compare(cfg: FinetuneConfig, methods=("zero-shot", "lora", "cola")) -> dict:
    """Run several methods on the same data draw and seed; print a table.

    LoRA is the chain with one link; COLA uses ``cfg.chain_length`` (or ``knot_steps``).
    All other settings are shared. Writes ``<output_dir>/<task>_compare_s<seed>.json``.
    Each trained method exports to ``<export_dir>/<method>`` and its links to
    ``<export_links>/<method>`` when those are set; each resumes from its own checkpoint.
    With checkpoints on (``checkpoint_every > 0``, ``resume`` not ``"never"``), a method
    whose ``results.json`` was written with the same settings (outside
    :data:`~cola_opt.llm.config.RESUMABLE_CHANGES`), from the same examples, and whose
    export (if asked for) is in place, is not run again: its result is read back, so a
    killed ``compare`` restarted with the same command goes on where it stopped.

    Returns:
        ``{"methods": {method: result}, "majority": accuracy (``None`` without labels), "table": str}``.

    Raises:
        as :func:`cola_opt.llm.trainer.finetune`, before any training, for every
        method's configuration.
    """
    splits = preflight(cfg).splits
    cfgs = {m: method_config(cfg, m) for m in methods}
    for c in cfgs.values():  # every method's plan and LoRA targets are checked before any run
        preflight(c, splits)
    drawn = splits.fingerprint()
    results = {m: finished_result(c, drawn) or finetune(c, splits) for m, c in cfgs.items()}
    majority = splits.majority_accuracy()
    table = format_table(cfg, results, majority)
    print(table)
    config = {**cfg.to_dict(), "method": list(methods)}
    summary = {"config": config, "counts": splits.counts, "majority": majority, "methods": results, "table": table}
    path = atomic_save_json(summary, Path(cfg.output_dir) / f"{cfg.task}_compare_s{cfg.seed}.json")
    print(f"\nresults: {path} (all methods); each run's results.json under {cfg.output_dir}/")
    return summary


def method_config(cfg: FinetuneConfig, method: str) -> FinetuneConfig:
    """``cfg`` for one method of :func:`compare`: knots and link ranks for the methods with knots (COLA, ReLoRA) only,
    exports in a folder per method.

    Raises:
        ValueError: on an unknown method name.
    """
    kind = get_method(method)
    export_dir = str(Path(cfg.export_dir) / method) if cfg.export_dir and kind.trains else None
    export_links = str(Path(cfg.export_links) / method) if cfg.export_links and kind.lora else None
    return cfg.replace(method=method, link_ranks=cfg.link_ranks if kind.knots else None,
                       knot_steps=cfg.knot_steps if kind.knots else None, export_dir=export_dir,
                       export_links=export_links)


def format_table(cfg: FinetuneConfig, results: dict, majority: float | None) -> str:
    """A markdown table per method: dev and test headline metric (accuracy or exact match in percent, or loss in nats;
    a language model's test loss and perplexity too, :func:`cola_opt.llm.metrics.table_columns`) and times (seconds).

    ``majority`` (the majority class's test accuracy) adds its row; ``None`` (a task without labels) adds none.
    ``train time (s)`` is the wall time of training (dev evaluations included); ``train CPU (s)`` the CPU seconds
    of it, over all threads (``train_cpu_seconds``; "-" for a result written before it was recorded): the cost,
    where wall time also shows the load of a shared machine.
    """
    cols = table_columns(headline(next(iter(results.values()))["test"]))
    rows = [
        f"task {cfg.task}, model {cfg.model}, seed {cfg.seed}",
        "",
        "| method | links | " + " | ".join(h for h, _, _ in cols) + " | train time (s) | train CPU (s) | mean knot time (ms) |",
        "|---" * (len(cols) + 5) + "|",
    ]
    for m, r in results.items():
        links = str(len(r["knot_steps"]) + 1) if get_method(m).trains else "-"
        knot = f"{np.mean([k['seconds'] for k in r['knots']]) * 1e3:.1f}" if r["knots"] else "-"
        cpu = "-" if r.get("train_cpu_seconds") is None else f"{r['train_cpu_seconds']:.0f}"
        values = " | ".join(cell(r, split, key) for _, split, key in cols)
        rows.append(f"| {m} | {links} | {values} | {r['train_seconds']:.0f} | {cpu} | {knot} |")
    if majority is not None:
        rows.append(f"| majority class | - | - | {majority * 100:.1f} | - | - | - |")
    return "\n".join(rows)
