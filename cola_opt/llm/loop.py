"""The training loop: one optimizer step after another, read top to bottom in :meth:`TrainingLoop.run`.

Per step: take the step's micro-batches from the batch order, accumulate their
gradients (the objective's loss), let the non-finite guard look at the loss and the
gradients, clip and step the chain (which ties a knot when one is due) or skip the
update, move the LR schedule, log, evaluate on dev at the end of an epoch, write a
checkpoint when due, and stop cleanly on Ctrl-C or SIGTERM.

The loop is the same for every objective and every batch order: both are given to it
(:mod:`cola_opt.llm.objective`, :mod:`cola_opt.llm.batching`). Building the model,
chain and schedule, and writing the results, are the trainer's
(:func:`cola_opt.llm.trainer.finetune`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .batching import BatchOrder, StepBatches, optimizer_steps
from .checkpoint import CHECKPOINT_DIR, DeferredInterrupt, capture_rng
from .config import FinetuneConfig
from .export import LinkAdapterWriter
from .guard import NonFiniteError, NonFiniteGuard
from .objective import Objective
from .resume import RunCheckpoints, run_fingerprint, stopped_error
from .runlog import RunLog
from .threads import ThreadPolicy

__all__ = ["TrainingLoop"]


class TrainingLoop:
    """Train ``model`` in place for ``total_steps`` optimizer steps (or the rest of them, after a resume).

    Args:
        cfg: the run's configuration (batching, clipping, guard, checkpoints, progress).
        run_dir: the run folder (its ``checkpoint/`` subfolder).
        model: the model to train (a ``PeftModel`` for LoRA methods), on its device.
        chain: the :class:`~cola_opt.chain.optimizer.ResidualLowRankOptimizer` over its
            LoRA sites (or the stand-in for full fine-tuning): ``step()``, ``advance()``,
            ``zero_grad()``, ``step_count``, ``link``, ``chain_length``, ``knots``.
        sched: the LR scheduler over the chain's inner optimizer, stepped once per step.
        objective: gives each micro-batch's loss (:class:`~cola_opt.llm.objective.Objective`).
        train: the encoded training items.
        order: the batch order, ``epoch -> micro-batches`` of item indices
            (:mod:`cola_opt.llm.batching`).
        total_steps: optimizer steps of the whole run.
        evaluate_dev: ``model -> dev result`` (with the objective's ``metric``).
        log: the run log to fill (:class:`~cola_opt.llm.runlog.RunLog`).
        resume_from: a checkpoint directory to continue from, or ``None``.
        threads: the run's thread policy, told after each step (``auto`` re-counts the
            other work now and then, :mod:`cola_opt.llm.threads`); ``None``: none.
    """

    def __init__(self, cfg: FinetuneConfig, run_dir: Path, model: torch.nn.Module, chain, sched,
                 objective: Objective, train: Sequence, order: BatchOrder, total_steps: int,
                 evaluate_dev: Callable[[torch.nn.Module], dict], log: RunLog, resume_from: Path | None = None,
                 threads: ThreadPolicy | None = None) -> None:
        from tqdm.auto import tqdm

        self.cfg, self.run_dir, self.model, self.chain, self.sched = cfg, run_dir, model, chain, sched
        self.objective, self.train, self.order, self.total_steps = objective, train, order, total_steps
        self.evaluate_dev, self.log, self.resume_from, self.threads = evaluate_dev, log, resume_from, threads
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named]
        self.guard = NonFiniteGuard(cfg.nonfinite, cfg.max_consecutive_skips)
        self.links = LinkAdapterWriter(chain, model, cfg.export_links) if cfg.export_links else None
        self.bar = tqdm(total=total_steps, desc=f"{cfg.method} {cfg.task}", disable=not cfg.progress, unit="step")
        fingerprint = run_fingerprint(model, chain, train) if cfg.checkpoint_every > 0 or resume_from else {}
        self.ckpt = RunCheckpoints(cfg, run_dir, model, chain, sched, self.guard, log, fingerprint, self.bar.write)
        self.ema: float | None = None  # the loss shown on the bar: an exponential moving average
        self.lr_now = 0.0  # the LR of the step being taken

    @property
    def done(self) -> bool:
        return self.chain.step_count >= self.total_steps

    def run(self) -> None:
        """Train to ``total_steps``; fill the log.

        Raises:
            cola_opt.llm.guard.NonFiniteError: a non-finite loss or gradient under
                ``nonfinite="stop"`` (the last finite step is checkpointed first, if on).
            ValueError: the checkpoint resumed from holds other data or frozen weights.
            KeyboardInterrupt: after the step in which a SIGINT or SIGTERM arrived
                (with checkpoints on, a checkpoint is written first).
        """
        start = self.ckpt.restore(self.resume_from) if self.resume_from is not None else (0, 0)
        self.bar.update(self.chain.step_count)
        self.model.train()
        with DeferredInterrupt(enabled=self.ckpt.on, notify=self.bar.write) as interrupt:
            for step in optimizer_steps(self.order, self.cfg.grad_accum, *start):
                if self.done:
                    break
                rng = capture_rng() if self.ckpt.on else None  # the state before this step, for a "stop"
                t_step = time.perf_counter()
                loss = self.forward_backward(step.batches)
                knot = self.update(loss, step, rng)
                self.log.step_seconds.append(time.perf_counter() - t_step)
                if self.threads is not None:
                    self.threads.after_step(self.chain.step_count)
                self.report(loss, knot)
                if (step.last_of_epoch and self.cfg.dev_each_epoch) or self.done or self.eval_due():
                    self.dev_evaluation(step.epoch)
                if self.ckpt.due(self.total_steps, interrupt.requested is not None):
                    self.ckpt.save(step.next_position())
                if interrupt.requested:
                    raise KeyboardInterrupt(f"{interrupt.requested} after step {self.chain.step_count}; run the same "
                                            f"command again to resume from the checkpoint in {self.run_dir / CHECKPOINT_DIR}")
        self.bar.close()
        if self.links is not None and not self.cfg.export_dir:
            self.links(self.chain)  # the last link (an export would merge it, and save it through the hook)
        self.log.knots = [vars(k) for k in self.chain.knots]
        self.log.train_seconds = self.ckpt.train_seconds()

    def forward_backward(self, batches: list[list[int]]) -> float:
        """Accumulate one optimizer step's gradients over its micro-batches; return its loss (nats per item).

        Each micro-batch's mean loss is weighted by its share of the step's items.
        """
        n_items = sum(len(b) for b in batches)
        step_loss = 0.0
        for idx in batches:
            loss = self.objective.loss(self.model, [self.train[i] for i in idx])
            (loss * len(idx) / n_items).backward()
            step_loss += loss.item() * len(idx) / n_items
            # Free this graph now: a knot that changes the rank resizes the factors, and a
            # live old graph keeps their gradient accumulators with the old shape.
            del loss
        return step_loss

    def update(self, loss: float, step: StepBatches, rng: dict | None):
        """The guard, then clip and step the chain (a knot, if due, is tied inside) or skip the update.

        A skipped step still counts (LR schedule, knots, data). Returns the knot record
        if a knot was tied after this step, else ``None``.
        """
        try:
            finite = self.guard.check(loss, self.named, step=self.chain.step_count + 1)
        except NonFiniteError as e:  # policy "stop": nothing of this step was applied
            raise stopped_error(e, self.ckpt.save((step.epoch, step.index), rng) if self.ckpt.on else None) from e
        self.lr_now = self.sched.get_last_lr()[0]
        if finite:
            if self.cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
            knot = self.chain.step()
        else:  # policy "skip"
            knot = self.chain.advance()
            self.log.skipped_steps.append(self.chain.step_count)
            self.bar.write(f"step {self.chain.step_count}: non-finite loss or gradient ({loss}); update skipped")
        self.sched.step()
        self.chain.zero_grad()
        return knot

    def report(self, loss: float, knot) -> None:
        """Log the step's loss; update the progress bar (loss EMA, link, LR); a line per knot."""
        self.log.train_loss.append(loss)
        self.ema = loss if self.ema is None or not math.isfinite(self.ema) else 0.9 * self.ema + 0.1 * loss
        self.bar.set_postfix(loss=f"{self.ema:.3f}", link=f"{self.chain.link + 1}/{self.chain.chain_length}",
                             lr=f"{self.lr_now:.1e}")
        self.bar.update(1)
        if knot is not None:
            self.chatter(f"knot {knot.link + 1} tied at step {knot.step} in {knot.seconds * 1e3:.1f} ms")

    def eval_due(self) -> bool:
        """Whether ``cfg.eval_every`` asks for a dev evaluation after this step."""
        return self.cfg.eval_every > 0 and self.chain.step_count % self.cfg.eval_every == 0

    def dev_evaluation(self, epoch: int) -> None:
        """Evaluate on dev after epoch ``epoch`` (0-based) and log it, with a line."""
        result = self.evaluate_dev(self.model)
        self.log.dev_history.append({"epoch": epoch + 1, "step": self.chain.step_count, **result})
        value = result[self.objective.metric]
        if value is None:
            self.chatter(f"epoch {epoch + 1}: no dev examples (n_dev = 0)")
        else:
            self.chatter(f"epoch {epoch + 1}: dev {self.objective.metric} {value:.4f}")

    def chatter(self, line: str) -> None:
        """A knot or epoch line: printed with ``progress`` on (warnings print either way)."""
        if self.cfg.progress:
            self.bar.write(line)
