"""Checkpoints and resume for the fine-tuning loop (:mod:`cola_opt.llm.trainer`).

- :func:`resume_point`: which checkpoint a run continues from, checked against its
  configuration before any model is loaded.
- :class:`RunCheckpoints`: when the loop writes a checkpoint, what it holds beyond the
  model, chain, scheduler and RNG states (:mod:`cola_opt.llm.checkpoint`), and the
  restore.
- :func:`stopped_error`: the non-finite guard's error, with where the last finite state is.
- :func:`finished_result`: the ``results.json`` of an earlier run with the same settings
  and the same data, if every output the run asks for is there (``compare`` reads it
  back instead of training again).

What a checkpoint of step ``t`` holds is the state *between* step ``t`` and ``t + 1``:
the weights, factors, optimizer and scheduler after step ``t`` (and after its knot, if
one was due), the RNG states, the data position of step ``t + 1`` (epoch, batch group),
the results so far (train losses, dev evaluations, skipped steps) and the configuration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
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
from .config import RESUMABLE_CHANGES, FinetuneConfig, with_late_defaults
from .guard import NonFiniteError, NonFiniteGuard
from .runlog import RunLog

__all__ = ["RunCheckpoints", "finished_result", "resume_point", "run_fingerprint", "stopped_error"]


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
    diff = config_differences(with_late_defaults(read_state(found)["state"]["config"]), cfg.to_dict(), RESUMABLE_CHANGES)
    if diff:
        raise ValueError(
            f"cannot resume from {found}: it was written with another configuration ({'; '.join(diff)}); "
            "pass the same settings, or --resume never to start over, or another --output-dir"
        )
    return found


def run_fingerprint(model, chain, train: Sequence) -> dict[str, str]:
    """What a resume must find unchanged beyond the config: the training data and the frozen weights.

    Args:
        model, chain: as built for training (LoRA injected), before any step.
        train: the encoded training items (dataclasses, such as
            :class:`cola_opt.llm.scoring.Encoded`), in order.

    Returns:
        ``{"data": 16 hex digits of SHA-1 over every field of every item (token ids and
        labels), "frozen_weights": :func:`cola_opt.llm.checkpoint.frozen_fingerprint`}``.
    """
    data = hashlib.sha1(repr([dataclasses.astuple(e) for e in train]).encode()).hexdigest()[:16]
    return {"data": data, "frozen_weights": frozen_fingerprint(model, chain)}


class RunCheckpoints:
    """When the loop writes a checkpoint, and the part of it that belongs to the loop.

    Args:
        cfg: the run's configuration (``checkpoint_every`` > 0 turns checkpoints on).
        run_dir: the run folder.
        model, chain, sched, guard: the loop's objects.
        log: the run log the loop fills; a checkpoint holds its :meth:`RunLog.progress`.
        fingerprint: from :func:`run_fingerprint`.
        say: prints one line (the progress bar's ``write``).

    Attributes:
        on: whether checkpoints are written.
    """

    STATE = ("config", "position", "fingerprint", "guard", "train_seconds", "result")  # what save() stores

    def __init__(self, cfg: FinetuneConfig, run_dir: Path, model, chain, sched, guard: NonFiniteGuard, log: RunLog,
                 fingerprint: dict[str, str], say: Callable[[str], None]) -> None:
        self.cfg, self.run_dir, self.model, self.chain, self.sched = cfg, run_dir, model, chain, sched
        self.guard, self.log, self.fingerprint, self.say = guard, log, fingerprint, say
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
        self.log.checkpoints.append(entry)
        state = {
            "config": self.cfg.to_dict(),
            "position": {"epoch": position[0], "index": position[1]},
            "fingerprint": self.fingerprint,
            "guard": {"skipped": self.guard.skipped, "consecutive": self.guard.consecutive},
            "train_seconds": self.train_seconds(),
            "result": self.log.progress(),
        }
        path = write_checkpoint(self.run_dir, step=step, model=self.model, chain=self.chain, scheduler=self.sched,
                                state=state, rng=rng)
        seconds, size = time.perf_counter() - t, checkpoint_bytes(path)
        entry.update(seconds=seconds, bytes=size)
        self.last_step = step
        self.say(f"checkpoint of step {step} written in {seconds:.2f} s ({size / 1e6:.1f} MB): {path}")
        return path

    def restore(self, path: Path) -> tuple[int, int]:
        """Load ``path`` into the model, chain, scheduler, guard and run log; return the data position.

        Raises:
            ValueError: if the training data or the frozen weights differ from the checkpoint's.
        """
        t = time.perf_counter()
        state = restore_checkpoint(path, model=self.model, chain=self.chain, scheduler=self.sched)
        for key, value in state["fingerprint"].items():
            if self.fingerprint.get(key) != value:
                raise ValueError(f"cannot resume from {path}: the {key.replace('_', ' ')} differ from those of the "
                                 "run that wrote it (same settings, but other data or another model)")
        self.log.restore_progress(state["result"])
        self.log.resumed_from.append(self.chain.step_count)
        self.guard.skipped, self.guard.consecutive = state["guard"]["skipped"], state["guard"]["consecutive"]
        self.seconds_before, self.t0 = state["train_seconds"], time.perf_counter()
        self.last_step = self.chain.step_count
        self.say(f"resumed from {path}: step {self.chain.step_count} (loaded in {time.perf_counter() - t:.2f} s)")
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


def finished_result(cfg: FinetuneConfig, data_fingerprint: str, say: Callable[[str], None] = print) -> dict | None:
    """The result an earlier run of ``cfg`` wrote, if it may stand for a new run; else ``None``.

    It stands only with checkpoints on (``checkpoint_every > 0``, ``resume`` not
    ``"never"``), and only if all of these hold:

    - ``<run folder>/results.json`` is there, whole, with a test result;
    - its configuration differs at most in :data:`~cola_opt.llm.config.RESUMABLE_CHANGES`;
    - it was trained and evaluated on the same examples: its ``data_fingerprint`` is
      ``data_fingerprint`` (:meth:`cola_opt.llm.tasks.Splits.fingerprint`); a result
      without one is never reused;
    - every output ``cfg`` asks for exists: ``export_dir`` was written by that run to
      the same folder and still holds a model (``config.json``), and ``export_links``
      still holds its links. The weights of a finished run are not kept elsewhere (its
      checkpoint is deleted), so an export it did not write means training again.

    ``say`` prints one line: the reuse, or why a result that is there is not reused.
    """
    path = cfg.run_dir / "results.json"
    if cfg.checkpoint_every <= 0 or cfg.resume == "never" or not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or "test" not in saved or not isinstance(saved.get("config"), dict):
        return None
    why = _not_reusable(cfg, saved, data_fingerprint)
    if why:
        say(f"[compare] {cfg.method}: {path} is not reused ({why}); training again")
        return None
    say(f"[compare] {cfg.method}: finished earlier with these settings; using {path}")
    saved["results_path"] = str(path)
    return saved


def _not_reusable(cfg: FinetuneConfig, saved: dict, data_fingerprint: str) -> str | None:
    """Why ``saved`` cannot stand for a run of ``cfg`` on data with ``data_fingerprint``; ``None`` if it can."""
    diff = config_differences(with_late_defaults(saved["config"]), cfg.to_dict(), RESUMABLE_CHANGES)
    if diff:
        return f"other settings: {'; '.join(diff)}"
    if saved.get("data_fingerprint") != data_fingerprint:
        return f"other data: fingerprint {saved.get('data_fingerprint')} -> {data_fingerprint}"
    if cfg.export_dir and (saved.get("export_dir") != cfg.export_dir
                           or not (Path(cfg.export_dir) / "config.json").is_file()):
        return f"export_dir {cfg.export_dir!r} was not written by it"
    if cfg.export_links and not Path(cfg.export_links).is_dir():
        return f"export_links {cfg.export_links!r} is gone"
    return None
