"""The product's own training pieces, for the throughput benchmarks (bucketing.py, threads.py, vs_trainer.py).

:func:`build_run` builds what :func:`cola_opt.llm.trainer.finetune` builds for a
:class:`~cola_opt.llm.config.FinetuneConfig` (the pre-flight's draw, the model, the
objective and its encoded training items, the chain and LR schedule of
:func:`~cola_opt.llm.trainer.build_chain`, the :class:`~cola_opt.llm.loop.TrainingLoop`),
and :meth:`ProductRun.step` takes one optimizer step exactly as the loop does
(:meth:`TrainingLoop.forward_backward`, then :meth:`TrainingLoop.update`: the guard,
clipping, the chain's step, the scheduler, ``zero_grad``), timed. The batches come from
the product's batch orders (:func:`cola_opt.llm.trainer.make_batch_order`), so a
benchmark measures what a user's run computes. No checkpoints, no evaluation.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from cola_opt.llm.batching import StepBatches, optimizer_steps
from cola_opt.llm.config import FinetuneConfig
from cola_opt.llm.loop import TrainingLoop
from cola_opt.llm.models import load_model
from cola_opt.llm.plan import draw
from cola_opt.llm.runlog import RunLog
from cola_opt.llm.threads import usable_cores
from cola_opt.llm.trainer import build_chain, make_batch_order, make_objective

PLANNED_STEPS = 1_000_000  # the LR schedule's horizon: the LR stays at its peak over a benchmark's few steps


@dataclass
class ProductRun:
    """A LoRA run's model, objective, encoded training items and loop, ready to step."""

    cfg: FinetuneConfig
    model: torch.nn.Module
    tokenizer: object
    objective: object
    items: list
    loop: TrainingLoop

    @property
    def lengths(self) -> list[int]:
        """Tokens of each training item's forward pass (what a batch pads to)."""
        return [self.objective.length(x) for x in self.items]

    def batches(self, bucket_by_length: bool) -> Iterator[StepBatches]:
        """The optimizer steps of the run's batch order with bucketing on or off, from epoch 0, without end."""
        order = make_batch_order(self.cfg.replace(bucket_by_length=bucket_by_length), self.objective, self.items)
        return optimizer_steps(order, self.cfg.grad_accum)

    def step(self, step: StepBatches) -> dict:
        """One optimizer step as the loop takes it: ``{"seconds", "cpu_seconds", "tokens", "padded", "examples", "loss"}``.

        ``tokens``: the real (non-pad) tokens of the step's forward passes; ``padded``: the
        tokens computed, each micro-batch padded to its longest item.
        """
        lengths = [[self.objective.length(self.items[i]) for i in b] for b in step.batches]
        t0, c0 = time.perf_counter(), time.process_time()
        loss = self.loop.forward_backward(step.batches)
        self.loop.update(loss, step, None)
        return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                "tokens": sum(sum(b) for b in lengths), "padded": sum(len(b) * max(b) for b in lengths),
                "examples": sum(len(b) for b in step.batches), "loss": loss}


def run_config(task: str, *, model: str = "smollm2-135m", n_train: int = 1000, batch_size: int = 8,
               autocast: str = "auto", data_dir: str | None = None, rank: int = 8) -> FinetuneConfig:
    """The benchmarks' LoRA run: r = ``rank`` (alpha = 2r) on q_proj and v_proj, AdamW at 5e-4, MeZO's draw."""
    cfg = FinetuneConfig(task=task, model=model, method="lora", rank=rank, lora_alpha=2.0 * rank, n_train=n_train,
                         n_dev=0, n_test=1, batch_size=batch_size, max_steps=PLANNED_STEPS, autocast=autocast,
                         data_dir=data_dir, progress=False, output_dir=tempfile.gettempdir())
    cfg.validate()
    return cfg


def build_run(cfg: FinetuneConfig) -> ProductRun:
    """The pieces of ``cfg``'s run, as :func:`cola_opt.llm.trainer.finetune` builds them (seeded by ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    splits = draw(cfg)
    model, tok = load_model(cfg.model, dtype=cfg.dtype, device="cpu")
    model.config.use_cache = False
    objective = make_objective(cfg, tok)
    items = objective.encode(splits.train)
    model, chain, sched = build_chain(cfg, model, PLANNED_STEPS, ())
    loop = TrainingLoop(cfg, Path(tempfile.gettempdir()), model, chain, sched, objective, items,
                        make_batch_order(cfg, objective, items), PLANNED_STEPS, lambda m: {}, RunLog())
    model.train()
    return ProductRun(cfg, model, tok, objective, items, loop)


def median(xs: list[float]) -> float:
    """The median (``nan`` of nothing)."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def run_meta(args, load_before: float, t0: float, **extra) -> dict:
    """A benchmark run's record: threads, cores, batch, steps, ``extra``, host, CPU, load before and after, seconds."""
    return {"threads": args.threads, "cores": usable_cores(), "batch_size": args.batch_size, "steps": args.steps,
            **extra, "host": platform.node(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_before": load_before, "load_after": os.getloadavg()[0], "seconds": time.perf_counter() - t0}


def write_json(path: str | None, record: dict) -> None:
    """Write ``record`` to ``path`` (folders made as needed); nothing when ``path`` is empty."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(record, f, indent=1)
