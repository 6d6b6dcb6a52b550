"""Checkpoints and resume for the fine-tuning loop (:mod:`cola_opt.llm.trainer`).

- :func:`resume_point`: which checkpoint a run continues from, checked against its
  configuration before any model is loaded.
- :class:`RunCheckpoints`: when the loop writes a checkpoint, what it holds beyond the
  model, chain, scheduler and RNG states (:mod:`cola_opt.llm.checkpoint`), and the
  restore.
- :func:`stopped_error`: the non-finite guard's error, with where the last finite state is.

What a checkpoint of step ``t`` holds is the state *between* step ``t`` and ``t + 1``:
the weights, factors, optimizer and scheduler after step ``t`` (and after its knot, if
one was due), the RNG states, the data position of step ``t + 1`` (epoch, batch group),
the results so far (train losses, dev evaluations, skipped steps) and the configuration.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from .checkpoint import (
    CHECKPOINT_DIR,
    CheckpointError,
    checkpoint_bytes,
    checkpoint_path,
    config_differences,
    find_checkpoint,
    frozen_fingerprint,
    read_state,
    remove_checkpoints,
    restore_checkpoint,
    write_checkpoint,
)
from .config import RESUMABLE_CHANGES, FinetuneConfig
from .guard import NonFiniteError, NonFiniteGuard

__all__ = ["RunCheckpoints", "resume_point", "run_fingerprint", "stopped_error"]


def resume_point(cfg: FinetuneConfig, run_dir: Path) -> Path | None:
    """The checkpoint to resume from (checked against ``cfg``), or ``None`` to start at step 0.

    ``cfg.resume``: ``"auto"`` resumes if ``run_dir`` holds a checkpoint; ``"require"``
    must resume; ``"never"`` deletes any checkpoint and starts over. Fields in
    :data:`cola_opt.llm.config.RESUMABLE_CHANGES` may differ from the checkpoint's; any
    other difference is refused. A broken latest checkpoint falls back to the previous
    complete one, with a warning (:func:`cola_opt.llm.checkpoint.find_checkpoint`).

    Raises:
        FileNotFoundError: ``resume="require"`` and there is no checkpoint.
        cola_opt.llm.checkpoint.CheckpointError: (a ``ValueError``) the folder holds
            checkpoints but none is usable; the message names each file and its fault.
        ValueError: the checkpoint was written with a configuration that trains
            differently; the message lists every such field as ``name: saved -> now``.
    """
    if cfg.resume == "never":
        remove_checkpoints(run_dir, keep_lock=True)
        return None
    try:
        found = find_checkpoint(run_dir, required=RunCheckpoints.STATE)
    except CheckpointError as e:
        raise CheckpointError(f"{e}. Pass --resume never to start over (it deletes {run_dir / CHECKPOINT_DIR}), "
                              "or another --output-dir") from None
    if found is None:
        if cfg.resume == "require":
            raise FileNotFoundError(f"resume 'require': there is no checkpoint in {run_dir / CHECKPOINT_DIR}")
        return None
    diff = config_differences(read_state(found)["state"]["config"], cfg.to_dict(), RESUMABLE_CHANGES)
    if diff:
        raise ValueError(
            f"cannot resume from {found}: it was written with another configuration ({'; '.join(diff)}); "
            "pass the same settings, or --resume never to start over, or another --output-dir"
        )
    return found


def run_fingerprint(model, chain, train) -> dict[str, str]:
    """What a resume must find unchanged beyond the config: the training data and the frozen weights.

    Args:
        model, chain: as built for training (LoRA injected), before any step.
        train: the encoded training examples (:class:`cola_opt.llm.scoring.Encoded`).

    Returns:
        ``{"data": 16 hex digits of SHA-1 over token ids and labels, "frozen_weights":
        :func:`cola_opt.llm.checkpoint.frozen_fingerprint`}``.
    """
    data = hashlib.sha1(repr([(e.prompt_ids, e.candidate_ids, e.label) for e in train]).encode()).hexdigest()[:16]
    return {"data": data, "frozen_weights": frozen_fingerprint(model, chain)}


class RunCheckpoints:
    """When the loop writes a checkpoint, and the part of it that belongs to the loop.

    Args:
        cfg: the run's configuration (``checkpoint_every`` > 0 turns checkpoints on).
        run_dir: the run folder.
        model, chain, sched, guard: the loop's objects.
        result: the results dict the loop fills (``train_loss``, ``dev_history``, ...).
        fingerprint: from :func:`run_fingerprint`.
        log: prints one line (the progress bar's ``write``).

    Attributes:
        on: whether checkpoints are written.
    """

    PROGRESS = ("train_loss", "dev_history", "skipped_steps", "checkpoints", "resumed_from")
    STATE = ("config", "position", "fingerprint", "guard", "train_seconds", "result")  # what save() stores

    def __init__(self, cfg: FinetuneConfig, run_dir: Path, model, chain, sched, guard: NonFiniteGuard, result: dict,
                 fingerprint: dict[str, str], log: Callable[[str], None]) -> None:
        self.cfg, self.run_dir, self.model, self.chain, self.sched = cfg, run_dir, model, chain, sched
        self.guard, self.result, self.fingerprint, self.log = guard, result, fingerprint, log
        self.on = cfg.checkpoint_every > 0
        self.last_step: int | None = None
        self.seconds_before = 0.0  # training time of the processes before a resume
        self.t0 = time.perf_counter()

    def train_seconds(self) -> float:
        """Training wall time so far, in seconds, over this process and those it resumed."""
        return self.seconds_before + time.perf_counter() - self.t0

    def due(self, total_steps: int, interrupted: bool) -> bool:
        """Whether to checkpoint now: every ``checkpoint_every`` steps, after the last step, on an interrupt."""
        step = self.chain.step_count
        if not self.on or step == self.last_step:
            return False
        return step % self.cfg.checkpoint_every == 0 or step >= total_steps or interrupted

    def save(self, position: tuple[int, int], rng: dict | None = None) -> Path:
        """Checkpoint the state after ``chain.step_count`` steps.

        Args:
            position: ``(epoch, index)`` of the batch group the next step takes.
            rng: the RNG states to store (:func:`cola_opt.llm.checkpoint.capture_rng`);
                ``None``: now.

        Returns:
            the checkpoint directory.
        """
        step = self.chain.step_count
        if step == self.last_step:  # this state is already on disk (a step has one state)
            return checkpoint_path(self.run_dir, step)
        t = time.perf_counter()
        entry = {"step": step, "seconds": None, "bytes": None}  # in the checkpoint itself as null: not known yet
        self.result["checkpoints"].append(entry)
        state = {
            "config": self.cfg.to_dict(),
            "position": {"epoch": position[0], "index": position[1]},
            "fingerprint": self.fingerprint,
            "guard": {"skipped": self.guard.skipped, "consecutive": self.guard.consecutive},
            "train_seconds": self.train_seconds(),
            "result": {k: self.result[k] for k in self.PROGRESS},
        }
        path = write_checkpoint(self.run_dir, step=step, model=self.model, chain=self.chain, scheduler=self.sched,
                                state=state, rng=rng)
        seconds, size = time.perf_counter() - t, checkpoint_bytes(path)
        entry.update(seconds=seconds, bytes=size)
        self.last_step = step
        self.log(f"checkpoint of step {step} written in {seconds:.2f} s ({size / 1e6:.1f} MB): {path}")
        return path

    def restore(self, path: Path) -> tuple[int, int]:
        """Load ``path`` into the model, chain, scheduler, guard and results; return the data position.

        Raises:
            ValueError: if the training data or the frozen weights differ from the checkpoint's.
        """
        t = time.perf_counter()
        state = restore_checkpoint(path, model=self.model, chain=self.chain, scheduler=self.sched)
        for key, value in state["fingerprint"].items():
            if self.fingerprint.get(key) != value:
                raise ValueError(f"cannot resume from {path}: the {key.replace('_', ' ')} differ from those of the "
                                 "run that wrote it (same settings, but other data or another model)")
        self.result.update(state["result"])
        self.result["resumed_from"].append(self.chain.step_count)
        self.guard.skipped, self.guard.consecutive = state["guard"]["skipped"], state["guard"]["consecutive"]
        self.seconds_before, self.t0 = state["train_seconds"], time.perf_counter()
        self.last_step = self.chain.step_count
        self.log(f"resumed from {path}: step {self.chain.step_count} (loaded in {time.perf_counter() - t:.2f} s)")
        return state["position"]["epoch"], state["position"]["index"]


def stopped_error(err: NonFiniteError, path: Path | None) -> NonFiniteError:
    """The guard's ``"stop"`` error, with where the state of the last finite step is and what to do."""
    if path is not None and err.diverged:
        saved = (f"The state after step {err.step - 1} is checkpointed in {path}; lower --lr and start over, or "
                 "rerun with a higher --max-consecutive-skips to go on skipping")
    elif path is not None:
        saved = (f"The state after step {err.step - 1} is checkpointed in {path}; rerun with --nonfinite skip "
                 f"to skip step {err.step}")
    else:
        saved = "Checkpointing is off (--checkpoint-every 0): nothing was saved"
    return NonFiniteError(
        f"{err}. {saved}. Too high a learning rate (--lr) or an fp16 overflow (--autocast) are the usual causes",
        err.step,
        err.what,
        diverged=err.diverged,
    )
