"""The fine-tuning loop: one method, or zero-shot vs LoRA vs COLA on the same data.

The loop reads top to bottom: sample data, load the model, inject LoRA through PEFT,
wrap AdamW in a :class:`~cola_opt.chain.optimizer.ResidualLowRankOptimizer` whose knots are the
chain, train as classification with a linear LR schedule, evaluate on dev each
epoch and on test at the end, export if asked, and write ``results.json``.

Each step checks the loss and gradients (:class:`~cola_opt.llm.guard.NonFiniteGuard`:
stop or skip) and, every ``checkpoint_every`` steps, writes a crash-safe checkpoint
from which a later call resumes (:mod:`cola_opt.llm.resume`, ``docs/robustness.md``).
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_save_json
from ..chain.optimizer import ResidualLowRankOptimizer
from .checkpoint import CHECKPOINT_DIR, DeferredInterrupt, capture_rng, config_differences, remove_checkpoints, run_lock
from .config import RESUMABLE_CHANGES, FinetuneConfig, plan_steps
from .export import LinkAdapterWriter, export_full, export_merged
from .guard import NonFiniteError, NonFiniteGuard
from .lora import check_targets, inject_lora, lora_sites
from .models import check_float_model, load_model
from .resume import RunCheckpoints, resume_point, run_fingerprint, stopped_error
from .scoring import autocast_context, candidate_scores, classification_loss, encode_examples, evaluate
from .tasks import Splits, get_task, sample_splits

__all__ = ["compare", "finetune", "majority_accuracy", "resolve_device", "run_dir_of"]


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


def majority_accuracy(splits: Splits) -> float:
    """Test accuracy of always answering the most frequent training label."""
    labels = [e.label for e in splits.train]
    top = max(set(labels), key=labels.count)
    return sum(e.label == top for e in splits.test) / len(splits.test)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _prepare(cfg: FinetuneConfig, splits: Splits | None):
    """Validate and sample: everything that can fail before a model is loaded."""
    cfg.validate()
    task = get_task(cfg.task)
    if splits is None:
        splits = sample_splits(
            task, seed=cfg.seed, n_train=cfg.n_train, n_dev=cfg.n_dev, n_test=cfg.n_test, data_dir=cfg.data_dir
        )
    per_epoch, total, knots = plan_steps(cfg, len(splits.train))
    if cfg.method in ("lora", "cola"):
        check_targets(cfg.model, cfg.lora_settings(), cfg.link_ranks or ())
    elif cfg.method == "full":
        check_float_model(cfg.model)  # a quantized base cannot be trained in full either
    return splits, per_epoch, total, knots


def run_dir_of(cfg: FinetuneConfig) -> Path:
    """The run folder ``<output_dir>/<task>_<method>_s<seed>``: results, checkpoint."""
    return Path(cfg.output_dir) / f"{cfg.task}_{cfg.method}_s{cfg.seed}"


def finetune(cfg: FinetuneConfig, splits: Splits | None = None) -> dict:
    """Run one method of ``cfg`` and return (and write) its results.

    With ``cfg.checkpoint_every > 0`` the run writes crash-safe checkpoints to its run
    folder and, by default (``cfg.resume="auto"``), a later call with the same settings
    continues from the last one: the same steps, bit for bit on a deterministic CPU set-up
    (``docs/robustness.md``). The checkpoint is deleted once ``results.json`` is
    written.

    Args:
        cfg: the configuration; ``cfg.method`` picks zero-shot, LoRA, COLA or full
            fine-tuning (every weight trained by AdamW, no LoRA, no knots).
        splits: pre-sampled data (``compare`` shares one draw); ``None`` samples it.

    Returns:
        a JSON-ready dict: ``config``, ``counts``, ``dev_history`` (per epoch),
        ``dev`` and ``test`` accuracy in [0, 1] (``test`` also holds ``predictions``,
        the predicted candidate index per test example, in order), ``train_loss`` (per
        step, nats; NaN or inf for a skipped step), ``skipped_steps`` (1-based steps whose
        update the non-finite guard dropped), ``knot_steps``, ``knots`` (each with its
        time in seconds), ``total_steps``, ``checkpoints`` (step, seconds, bytes of each
        checkpoint written; null seconds and bytes for the one a run resumed from),
        ``resumed_from`` (the step of each resume), ``export_dir``, and wall times in
        seconds (``train_seconds`` adds up the processes of a resumed run). Also written
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
    t_start = time.perf_counter()
    splits, per_epoch, total_steps, knots = _prepare(cfg, splits)
    run_dir = run_dir_of(cfg)
    trains = cfg.method != "zero-shot"
    with contextlib.ExitStack() as stack:
        if trains and (cfg.checkpoint_every > 0 or (run_dir / CHECKPOINT_DIR).is_dir()):
            stack.enter_context(run_lock(run_dir))
        resume_from = resume_point(cfg, run_dir) if trains else None
        device = resolve_device(cfg.device)
        _seed_everything(cfg.seed)
        model, tok = load_model(cfg.model, dtype=cfg.dtype, device=device)
        model.config.use_cache = False
        enc = {k: encode_examples(tok, getattr(splits, k), cfg.max_length) for k in ("train", "dev", "test")}
        pad = tok.pad_token_id
        result: dict = {
            "config": cfg.to_dict(),
            "device": device,
            "host": platform.node(),
            "data_source": splits.source,
            "counts": splits.counts,
            "steps_per_epoch": per_epoch,
            "total_steps": total_steps if trains else 0,
            "knot_steps": list(knots),
            "dev_history": [],
            "train_loss": [],
            "skipped_steps": [],
            "knots": [],
            "checkpoints": [],
            "resumed_from": [],
            "train_seconds": 0.0,
        }

        def run_eval(name: str, model) -> dict:
            if not enc[name]:
                return {"accuracy": None, "loss": None, "n": 0}  # JSON null, not NaN
            r = evaluate(model, enc[name], pad_id=pad, batch_size=cfg.eval_batch_size, autocast=cfg.autocast,
                         desc=f"{cfg.method} {name} eval" if cfg.progress else None)
            if name != "test":  # test predictions stay, for paired tests across methods
                r.pop("predictions")
            return r

        chain = None
        if trains:
            model, chain = _train(cfg, model, enc, pad, total_steps, knots, result, run_eval, run_dir, resume_from)
        t_eval = time.perf_counter()
        if not trains:
            result["dev_history"].append({"epoch": 0, "step": 0, **run_eval("dev", model)})
        result["test"] = run_eval("test", model)
        result["dev"] = result["dev_history"][-1] if result["dev_history"] else None
        result["test_seconds"] = time.perf_counter() - t_eval
        result["export_dir"] = None
        result["wall_seconds"] = time.perf_counter() - t_start
        out = run_dir / "results.json"
        atomic_save_json(result, out)  # before the export: a failed export never loses a finished run
        if cfg.export_dir:
            result["export_dir"] = _export(cfg, model, chain, tok)
            result["wall_seconds"] = time.perf_counter() - t_start
            atomic_save_json(result, out)
        if trains:
            remove_checkpoints(run_dir)
    result["results_path"] = str(out)
    return result


def _export(cfg: FinetuneConfig, model, chain, tokenizer) -> str:
    """Write the trained model to ``cfg.export_dir`` (after the test evaluation: this consumes a PEFT model)."""
    extra = {k: getattr(cfg, k) for k in ("task", "model", "method", "seed", "lr")}
    if cfg.method == "full":
        export_full(model, cfg.export_dir, tokenizer=tokenizer, extra=extra)
    else:
        export_merged(chain, model, cfg.export_dir, tokenizer=tokenizer, extra=extra)
    return str(cfg.export_dir)


class _NoChain:
    """Full fine-tuning: the inner optimizer alone, with a chain's counters (one link, no knots)."""

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


def _step_groups(n_train: int, cfg: FinetuneConfig, epoch: int = 0, index: int = 0):
    """Yield ``(epoch, index, micro_batches, last_of_epoch)`` per optimizer step, from position ``(epoch, index)``.

    Epoch ``e`` visits the training examples in ``torch.randperm`` order from a generator
    seeded with ``seed * 7919 + e``, cut into micro-batches of ``batch_size`` and groups of
    ``grad_accum``; a position is therefore re-derived from ``(epoch, index)`` alone.
    """
    while True:
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
        batches = [order[i : i + cfg.batch_size].tolist() for i in range(0, n_train, cfg.batch_size)]
        groups = [batches[i : i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
        for i in range(index, len(groups)):
            yield epoch, i, groups[i], i == len(groups) - 1
        epoch, index = epoch + 1, 0


def _forward_backward(model, train, group, pad, autocast: str, device) -> float:
    """Accumulate one optimizer step's gradients over its micro-batches; return its loss (nats per example)."""
    n_ex = sum(len(b) for b in group)
    step_loss = 0.0
    for idx in group:
        batch = [train[i] for i in idx]
        labels = torch.tensor([e.label for e in batch], device=device)
        with autocast_context(device, autocast):
            scores = candidate_scores(model, batch, pad)
        loss = classification_loss(scores, labels)
        (loss * len(idx) / n_ex).backward()
        step_loss += loss.item() * len(idx) / n_ex
        # Free this graph now: a knot that changes the rank resizes the factors, and a
        # live old graph keeps their gradient accumulators with the old shape.
        del scores, loss
    return step_loss


def _build(cfg: FinetuneConfig, model, total_steps: int, knots):
    """``(model, chain, scheduler)``: LoRA injected (unless full), AdamW wrapped in the chain, linear LR."""
    from transformers import get_linear_schedule_with_warmup

    if cfg.method != "full":
        model = inject_lora(model, cfg.lora_settings())
    params = [p for p in model.parameters() if p.requires_grad]
    inner = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_linear_schedule_with_warmup(inner, cfg.warmup_steps, total_steps)
    if cfg.method == "full":
        return model, _NoChain(inner), sched
    chain = ResidualLowRankOptimizer(
        lora_sites(model), inner, knot_steps=knots, ranks=cfg.link_ranks, reset=cfg.optimizer_reset, seed=cfg.seed
    )
    return model, chain, sched


def _train(cfg, model, enc, pad, total_steps, knots, result, run_eval, run_dir, resume_from):
    """Train in place from step 0 or from ``resume_from``; return ``(model, chain)``."""
    from tqdm.auto import tqdm

    model, chain, sched = _build(cfg, model, total_steps, knots)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    guard = NonFiniteGuard(cfg.nonfinite, cfg.max_consecutive_skips)
    links = LinkAdapterWriter(chain, model, cfg.export_links) if cfg.export_links else None
    bar = tqdm(total=total_steps, desc=f"{cfg.method} {cfg.task}", disable=not cfg.progress, unit="step")
    saves = cfg.checkpoint_every > 0 or resume_from is not None
    fingerprint = run_fingerprint(model, chain, enc["train"]) if saves else {}
    ckpt = RunCheckpoints(cfg, run_dir, model, chain, sched, guard, result, fingerprint, bar.write)
    position = ckpt.restore(resume_from) if resume_from is not None else (0, 0)
    bar.update(chain.step_count)
    chatter = bar.write if cfg.progress else (lambda _line: None)  # knot and epoch lines; warnings always print
    train = enc["train"]
    device = next(model.parameters()).device
    model.train()
    ema = None
    with DeferredInterrupt(enabled=ckpt.on, notify=bar.write) as interrupt:
        for epoch, index, group, epoch_ends in _step_groups(len(train), cfg, *position):
            if chain.step_count >= total_steps:
                break
            rng = capture_rng() if ckpt.on else None  # for a checkpoint of the state before this step
            step_loss = _forward_backward(model, train, group, pad, cfg.autocast, device)
            try:
                finite = guard.check(step_loss, named, step=chain.step_count + 1)
            except NonFiniteError as e:  # policy "stop": nothing of this step was applied
                raise stopped_error(e, ckpt.save((epoch, index), rng) if ckpt.on else None) from e
            lr_now = sched.get_last_lr()[0]
            if finite:
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                knot = chain.step()  # a knot, when scheduled after this step, is tied inside
            else:  # policy "skip": no update, but the step counts (LR schedule, knots, data)
                knot = chain.advance()
                result["skipped_steps"].append(chain.step_count)
                bar.write(f"step {chain.step_count}: non-finite loss or gradient ({step_loss}); update skipped")
            sched.step()
            chain.zero_grad()
            result["train_loss"].append(step_loss)
            ema = step_loss if ema is None or not math.isfinite(ema) else 0.9 * ema + 0.1 * step_loss
            bar.set_postfix(loss=f"{ema:.3f}", link=f"{chain.link + 1}/{chain.chain_length}", lr=f"{lr_now:.1e}")
            bar.update(1)
            if knot is not None:
                chatter(f"knot {knot.link + 1} tied at step {knot.step} in {knot.seconds * 1e3:.1f} ms")
            if epoch_ends or chain.step_count >= total_steps:
                result["dev_history"].append({"epoch": epoch + 1, "step": chain.step_count, **run_eval("dev", model)})
                chatter(f"epoch {epoch + 1}: dev accuracy {result['dev_history'][-1]['accuracy']:.4f}")
            if ckpt.due(total_steps, interrupt.requested is not None):
                ckpt.save((epoch + 1, 0) if epoch_ends else (epoch, index + 1))
            if interrupt.requested:
                raise KeyboardInterrupt(f"{interrupt.requested} after step {chain.step_count}; run the same command "
                                        f"again to resume from the checkpoint in {run_dir / CHECKPOINT_DIR}")
    bar.close()
    if links is not None and not cfg.export_dir:
        links(chain)  # the last link (an export would merge it, and save it through the hook)
    result["knots"] = [vars(k) for k in chain.knots]
    result["train_seconds"] = ckpt.train_seconds()
    return model, chain


def compare(cfg: FinetuneConfig, methods=("zero-shot", "lora", "cola")) -> dict:
    """Run several methods on the same data draw and seed; print a table.

    LoRA is the chain with one link; COLA uses ``cfg.chain_length`` (or ``knot_steps``).
    All other settings are shared. Writes ``<output_dir>/<task>_compare_s<seed>.json``.
    Each trained method exports to ``<export_dir>/<method>`` and its links to
    ``<export_links>/<method>`` when those are set; each resumes from its own checkpoint.
    With checkpoints on (``checkpoint_every > 0``, ``resume`` not ``"never"``), a method
    whose ``results.json`` was written with the same settings (outside
    :data:`~cola_opt.llm.config.RESUMABLE_CHANGES`) is not run again: its result is
    read back, so a killed ``compare`` restarted with the same command goes on where it
    stopped.

    Returns:
        ``{"methods": {method: result}, "majority": accuracy, "table": str}``.

    Raises:
        as :func:`finetune`, before any training, for every method's configuration.
    """
    cfg.validate()
    splits, *_ = _prepare(cfg, None)
    cfgs = {m: _method_config(cfg, m) for m in methods}
    for c in cfgs.values():  # every method's plan and LoRA targets are checked before any run
        c.validate()
        plan_steps(c, len(splits.train))
        if c.method in ("lora", "cola"):
            check_targets(c.model, c.lora_settings(), c.link_ranks or ())
    results = {m: _finished(c) or finetune(c, splits) for m, c in cfgs.items()}
    majority = majority_accuracy(splits)
    table = format_table(cfg, results, majority)
    print(table)
    config = {**cfg.to_dict(), "method": list(methods)}
    summary = {"config": config, "counts": splits.counts, "majority": majority, "methods": results, "table": table}
    path = atomic_save_json(summary, Path(cfg.output_dir) / f"{cfg.task}_compare_s{cfg.seed}.json")
    print(f"\nresults: {path} (all methods); each run's results.json under {cfg.output_dir}/")
    return summary


def _finished(cfg: FinetuneConfig) -> dict | None:
    """The result a resumable run of ``cfg`` already wrote with the same settings, else ``None``."""
    path = run_dir_of(cfg) / "results.json"
    if cfg.checkpoint_every <= 0 or cfg.resume == "never" or not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or "test" not in saved or not isinstance(saved.get("config"), dict):
        return None
    if config_differences(saved["config"], cfg.to_dict(), RESUMABLE_CHANGES):
        return None
    print(f"[compare] {cfg.method}: finished earlier with these settings; using {path}")
    saved["results_path"] = str(path)
    return saved


def _method_config(cfg: FinetuneConfig, method: str) -> FinetuneConfig:
    """``cfg`` for one method of :func:`compare`: link ranks for COLA only, exports in a folder per method."""
    export_dir = str(Path(cfg.export_dir) / method) if cfg.export_dir and method != "zero-shot" else None
    export_links = str(Path(cfg.export_links) / method) if cfg.export_links and method in ("lora", "cola") else None
    cola = method == "cola"
    return cfg.replace(method=method, link_ranks=cfg.link_ranks if cola else None,
                       knot_steps=cfg.knot_steps if cola else None, export_dir=export_dir, export_links=export_links)


def format_table(cfg: FinetuneConfig, results: dict, majority: float) -> str:
    """A markdown table of dev/test accuracy (percent) and times (seconds) per method."""
    rows = [
        f"task {cfg.task}, model {cfg.model}, seed {cfg.seed}",
        "",
        "| method | links | dev acc (%) | test acc (%) | train time (s) | mean knot time (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for m, r in results.items():
        links = "-" if m == "zero-shot" else str(len(r["knot_steps"]) + 1)
        dev_acc = r["dev"]["accuracy"] if r["dev"] else None
        dev = "-" if dev_acc is None else f"{dev_acc * 100:.1f}"
        knot = f"{np.mean([k['seconds'] for k in r['knots']]) * 1e3:.1f}" if r["knots"] else "-"
        rows.append(
            f"| {m} | {links} | {dev} | {r['test']['accuracy'] * 100:.1f} | {r['train_seconds']:.0f} | {knot} |"
        )
    rows.append(f"| majority class | - | - | {majority * 100:.1f} | - | - |")
    return "\n".join(rows)
