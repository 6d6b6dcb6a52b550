"""One fine-tuning run, from its configuration to its ``results.json``.

:func:`finetune` reads top to bottom: the pre-flight (validate, draw the data, plan the
steps, check the LoRA targets: :func:`cola_opt.llm.plan.preflight`), the run lock and
the resume point, the model, the objective and its encoded splits, then for a trained
method the chain (:func:`build_chain`: LoRA injected through PEFT, AdamW wrapped in a
:class:`~cola_opt.chain.optimizer.ResidualLowRankOptimizer` whose knots are the chain, or
GaLore's or full fine-tuning's optimizer alone; the LR schedule) and the training loop
(:class:`cola_opt.llm.loop.TrainingLoop`), then the test evaluation, ``results.json``
and the export.

The two pieces a new kind of run changes are chosen here, once: the objective
(:func:`make_objective`: what the loss and the metrics are) and the batch order
(:func:`make_batch_order`: in which order the training items are visited). The loop
takes both as they are.
"""

from __future__ import annotations

import contextlib
import platform
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_save_json
from ..chain.lr_schedules import make_lr_schedule
from ..chain.optimizer import ResidualLowRankOptimizer
from .batching import BatchOrder, bucketed_batches, shuffled_batches
from .checkpoint import CHECKPOINT_DIR, remove_checkpoints
from .config import FinetuneConfig
from .export import export_full, export_merged
from .galore import galore_optimizer
from .lm_objective import language_objective
from .locks import run_lock
from .loop import TrainingLoop
from .lora import inject_lora, lora_sites
from .models import load_model
from .notify import warn
from .objective import CandidateClassification, Objective, evaluate_split
from .plan import preflight
from .precision import precision_facts
from .resume import resume_point
from .runlog import RunLog
from .scoring import truncation_warning
from .tasks import Example, Splits, find_task, task_metrics
from .threads import thread_policy
from .update_rank import UpdateRankRecorder

__all__ = ["FullFinetuning", "build_chain", "finetune", "make_batch_order", "make_objective", "resolve_device"]

SPLITS = ("train", "dev", "test")


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``.

    Raises:
        ValueError: if CUDA is asked for but not available.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return device


def make_objective(cfg: FinetuneConfig, tokenizer) -> Objective:
    """The objective of ``cfg``'s run: next-token loss for ``--task text`` and ``completion``
    (:func:`cola_opt.llm.lm_objective.language_objective`), else classification over the task's candidate answers."""
    return language_objective(cfg, tokenizer) or CandidateClassification(tokenizer, cfg.max_length, cfg.autocast)


def make_batch_order(cfg: FinetuneConfig, objective: Objective, train: list) -> BatchOrder:
    """The batch order of ``cfg``'s run, seeded by ``cfg.seed``: length-bucketed (``cfg.bucket_by_length``) or shuffled."""
    if cfg.bucket_by_length:
        return partial(bucketed_batches, [objective.length(item) for item in train], cfg.batch_size, cfg.seed)
    return partial(shuffled_batches, len(train), cfg.batch_size, cfg.seed)


def finetune(cfg: FinetuneConfig, splits: Splits | None = None) -> dict:
    """Run one method of ``cfg`` and return (and write) its results.

    With ``cfg.checkpoint_every > 0`` the run writes crash-safe checkpoints to its run
    folder and, by default (``cfg.resume="auto"``), a later call with the same settings
    continues from the last one: the same steps, bit for bit on a deterministic CPU set-up
    (``docs/robustness.md``). ``results.json`` is written before the export and again
    after it; the checkpoint is deleted once both are done, so a failed export is redone
    by running the same command again.

    Args:
        cfg: the configuration; ``cfg.method`` picks zero-shot, LoRA, COLA, ReLoRA, GaLore
            or full fine-tuning (:mod:`cola_opt.llm.methods`, :func:`build_chain`).
        splits: pre-sampled data (``compare`` shares one draw); ``None`` samples it.

    Returns:
        a JSON-ready dict: ``config``, ``counts``, ``data_fingerprint`` (of the examples
        drawn), ``dev_history`` (per epoch), ``dev`` and ``test`` accuracy in [0, 1]
        (``None`` for a split without examples; ``test`` also holds ``predictions``,
        the predicted candidate index per test example, in order; a language-model task
        reports loss, perplexity and exact match instead, ``docs/data.md``), ``train_loss`` (per
        step, nats; NaN or inf for a skipped step), ``skipped_steps`` (1-based steps whose
        update the non-finite guard dropped), ``trainable_parameters`` (entries the optimizer
        updates; 0 for zero-shot), ``step_seconds`` (wall time of each optimizer step of this
        process), ``update_rank`` (with ``update_rank`` on), ``knot_steps``, ``knots`` (each with its
        time in seconds), ``total_steps``, ``checkpoints`` (step, seconds, bytes of each
        checkpoint written; null seconds and bytes for the one a run resumed from),
        ``resumed_from`` (the step of each resume), ``export_dir``, and wall times in
        seconds (``train_seconds`` adds up the processes of a resumed run); ``threads`` (the
        setting, and each torch thread count this process set, with the step and the other
        runnable threads counted: :class:`cola_opt.llm.threads.ThreadPolicy`); CPU seconds
        of this process (``time.process_time``, all threads: ``train_cpu_seconds`` for
        training and its dev evaluations, ``cpu_seconds`` for the whole run); ``capped``
        (counts asked but not met, :attr:`cola_opt.llm.tasks.Splits.capped`);
        ``truncation`` (``max_length`` and, per split, prompts ``cut``, ``tokens_lost``
        and the ``longest`` length, warned about once); ``precision`` (the autocast that
        ran, ``dtype``, ``fp32_master``, and the device facts ``auto`` was decided on).
        ``test`` also holds ``idx`` (the record idx of each prediction) and the task's
        official metrics (MultiRC: ``f1a``, ``exact_match``, ``questions``). Also written
        to ``<output_dir>/<task>_<method>_s<seed>/results.json``.

    Raises:
        ValueError, FileNotFoundError: bad configuration or data, a missing checkpoint
            with ``resume="require"``, or a checkpoint written with another configuration,
            before any training.
        RuntimeError: another process is training in the same run folder.
        cola_opt.llm.models.ModelLoadError: the model cannot be loaded.
        cola_opt.llm.guard.NonFiniteError: a NaN or inf loss or gradient with
            ``nonfinite="stop"``; the last finite step is checkpointed first (if on).
        KeyboardInterrupt: Ctrl-C or SIGTERM; with checkpoints on, the first one ends the
            current step and writes a checkpoint first.
    """
    t_start, cpu_t0 = time.perf_counter(), time.process_time()
    plan = preflight(cfg, splits)
    method, run_dir = cfg.method_type, cfg.run_dir
    with contextlib.ExitStack() as stack:
        if method.trains and (cfg.checkpoint_every > 0 or (run_dir / CHECKPOINT_DIR).is_dir()):
            stack.enter_context(run_lock(run_dir))
        resume_from = resume_point(cfg, run_dir) if method.trains else None
        threads = stack.enter_context(thread_policy(cfg.threads))  # torch's count is restored at the end
        device = resolve_device(cfg.device)
        _seed_everything(cfg.seed)
        model, tok = load_model(cfg.model, dtype=cfg.dtype, device=device)
        model.config.use_cache = False
        ranks = UpdateRankRecorder(model, cfg.target_modules) if cfg.update_rank else None  # W0, before any update
        objective = make_objective(cfg, tok)
        data, truncation = _encode_splits(objective, plan.splits)
        evaluation = partial(_evaluation, cfg, objective, data)
        log, chain = RunLog(), None
        train_cpu, trainable = 0.0, 0
        if method.trains:
            model, chain, sched = build_chain(cfg, model, plan.total_steps, plan.knots)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            if ranks is not None and method.lora:
                ranks.attach(chain)
            cpu_start = time.process_time()
            TrainingLoop(cfg, run_dir, model, chain, sched, objective, data["train"], make_batch_order(cfg, objective, data["train"]),
                         plan.total_steps, partial(evaluation, "dev"), log, resume_from, threads=threads).run()
            train_cpu = time.process_time() - cpu_start
            if ranks is not None:
                log.update_rank = ranks.finish(model, chain, method.lora)
        else:
            log.dev_history.append({"epoch": 0, "step": 0, **evaluation("dev", model)})
        t_eval = time.perf_counter()
        test = _test_result(cfg, evaluation("test", model), plan.splits.test)
        result = {
            "config": cfg.to_dict(), "device": device, "host": platform.node(), "data_source": plan.splits.source,
            "data_fingerprint": plan.splits.fingerprint(), "counts": plan.splits.counts,
            "capped": plan.splits.capped, "truncation": truncation,
            "precision": {"autocast": cfg.autocast, "dtype": cfg.dtype, "fp32_master": cfg.fp32_master,
                          **precision_facts(device)},
            "steps_per_epoch": plan.steps_per_epoch, "total_steps": plan.total_steps, "knot_steps": list(plan.knots),
            "trainable_parameters": trainable, "threads": threads.to_dict(),
            **log.to_dict(), "train_cpu_seconds": train_cpu, "test": test,
            "dev": log.dev_history[-1] if log.dev_history else None,
            "test_seconds": time.perf_counter() - t_eval, "export_dir": None,
        }
        out = _write_results(result, run_dir, t_start, cpu_t0)  # before the export: a failed export loses no result
        if cfg.export_dir:
            result["export_dir"] = _export(cfg, model, chain, tok)
            _write_results(result, run_dir, t_start, cpu_t0)
        if method.trains:
            remove_checkpoints(run_dir)
    result["results_path"] = str(out)
    return result


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _evaluation(cfg: FinetuneConfig, objective: Objective, data: dict, name: str, model) -> dict:
    """The objective's evaluation of split ``name`` (test predictions kept, for paired tests across methods)."""
    return evaluate_split(objective, model, data[name], batch_size=cfg.eval_batch_size, predictions=name == "test",
                          desc=f"{cfg.method} {name} eval" if cfg.progress else None)


def _write_results(result: dict, run_dir: Path, t_start: float, cpu_start: float) -> Path:
    result["wall_seconds"] = time.perf_counter() - t_start
    result["cpu_seconds"] = time.process_time() - cpu_start
    return atomic_save_json(result, run_dir / "results.json")


def _encode_splits(objective: Objective, splits: Splits) -> tuple[dict, dict | None]:
    """Each split's items, and what cutting prompts to the length limit lost (warned about once).

    Returns ``(items per split, truncation)``: ``truncation`` is ``{"max_length", and per
    split {"n", "cut", "tokens_lost", "longest"}}`` (:class:`cola_opt.llm.scoring.Truncation`),
    or ``None`` for an objective that does not count its cuts (no ``truncation`` attribute).
    """
    data, cuts = {}, {}
    for name in SPLITS:
        data[name] = objective.encode(getattr(splits, name))
        if getattr(objective, "truncation", None) is not None:
            cuts[name] = objective.truncation
    if not cuts:
        return data, None
    line = truncation_warning(cuts)
    if line:
        warn(line)
    return data, {"max_length": next(iter(cuts.values())).max_length,
                  **{name: {k: v for k, v in t.to_dict().items() if k != "max_length"} for name, t in cuts.items()}}


def _test_result(cfg: FinetuneConfig, test: dict, examples: list) -> dict:
    """The test evaluation with each prediction's record ``idx`` and the task's official metrics (MultiRC: F1a, EM)."""
    if "predictions" not in test or not all(isinstance(e, Example) for e in examples):
        return test  # a language model's items are blocks or pairs, not release records
    return {**test, **task_metrics(find_task(cfg.task), examples, test["predictions"]), "idx": [e.idx for e in examples]}


class FullFinetuning:
    """The stand-in for a chain of the methods without LoRA (full, galore): the inner optimizer alone, with a chain's counters.

    One link, no knots: ``step()`` steps the optimizer, ``advance()`` counts a skipped
    step; ``state_dict()`` / ``load_state_dict()`` hold the optimizer state and the count.

    Args:
        optimizer: the inner optimizer over the trained weights (every weight for full
            fine-tuning; GaLore's targets, and maybe the rest, for galore).
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer, self.step_count, self.link, self.chain_length, self.knots = optimizer, 0, 0, 1, []

    def step(self) -> None:
        self.optimizer.step()
        self.step_count += 1

    def advance(self) -> None:
        self.step_count += 1

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"inner": self.optimizer.state_dict(), "step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["inner"])
        self.step_count = int(state["step_count"])


def build_chain(cfg: FinetuneConfig, model, total_steps: int, knots: tuple[int, ...]):
    """``(model, chain, scheduler)`` for a trained method (``cfg.method_type``).

    - LoRA methods (``lora``, ``cola``, ``relora``): PEFT LoRA injected, AdamW over the
      factors (and trained biases) wrapped in a
      :class:`~cola_opt.chain.optimizer.ResidualLowRankOptimizer` with the knots
      ``knots``, ``cfg.link_ranks`` and the method's reset at a knot (``cfg.knot_reset``:
      ``optimizer_reset``, or ``relora_reset`` for ReLoRA).
    - ``galore``: ``galore_torch.GaLoreAdamW`` on the 2-D weights of ``cfg.target_modules``,
      every other weight frozen unless ``cfg.galore_train_others``
      (:func:`cola_opt.llm.galore.galore_optimizer`), in a :class:`FullFinetuning` stand-in.
    - ``full``: AdamW over every weight (:class:`FullFinetuning`).

    The LR schedule is ``cfg.schedule`` (:func:`cola_opt.chain.lr_schedules.make_lr_schedule`):
    ``"linear"`` decays linearly to 0 at ``total_steps`` after ``cfg.warmup_steps`` of warm-up,
    ignoring the knots (COLA, Section 5); ``"jagged-cosine"`` is ReLoRA's cosine, re-warmed
    from 0 for ``cfg.restart_warmup_steps`` after every knot.

    Raises:
        ValueError: GaLore targets that match nothing, or a schedule that does not fit
            (both already refused by the pre-flight, :func:`cola_opt.llm.plan.preflight`).
    """
    method = cfg.method_type
    if method.lora:
        model = inject_lora(model, cfg.lora_settings())
    if method.galore:
        inner = galore_optimizer(model, target_modules=cfg.target_modules, rank=cfg.galore_rank,
                                 update_proj_gap=cfg.galore_update_proj_gap, scale=cfg.galore_scale, lr=cfg.lr,
                                 weight_decay=cfg.weight_decay, train_others=cfg.galore_train_others)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        inner = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = make_lr_schedule(cfg.schedule, inner, total_steps=total_steps, knot_steps=knots,
                             warmup_steps=cfg.warmup_steps, restart_warmup_steps=cfg.restart_warmup_steps)
    if not method.lora:
        return model, FullFinetuning(inner), sched
    chain = ResidualLowRankOptimizer(
        lora_sites(model, fp32_master=cfg.fp32_master), inner, knot_steps=knots, ranks=cfg.link_ranks,
        reset=cfg.knot_reset, seed=cfg.seed,
    )
    return model, chain, sched


def _export(cfg: FinetuneConfig, model, chain, tokenizer) -> str:
    """Write the trained model to ``cfg.export_dir`` (after the test evaluation: this consumes a PEFT model)."""
    extra = {k: getattr(cfg, k) for k in ("task", "model", "method", "seed", "lr")}
    if not cfg.method_type.lora:
        export_full(model, cfg.export_dir, tokenizer=tokenizer, extra=extra)
    else:
        export_merged(chain, model, cfg.export_dir, tokenizer=tokenizer, extra=extra)
    return str(cfg.export_dir)
