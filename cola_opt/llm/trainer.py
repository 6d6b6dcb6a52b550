"""The fine-tuning loop: one method, or zero-shot vs LoRA vs COLA on the same data.

The loop reads top to bottom: sample data, load the model, inject LoRA through PEFT,
wrap AdamW in a :class:`~cola_opt.core.ResidualLowRankOptimizer` whose knots are the
chain, train as classification with a linear LR schedule, evaluate on dev each
epoch and on test at the end, and write ``results.json``.
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_save_json
from ..core import ResidualLowRankOptimizer
from .config import FinetuneConfig, plan_steps
from .lora import inject_lora, lora_sites
from .models import load_model
from .scoring import autocast_context, candidate_scores, classification_loss, encode_examples, evaluate
from .tasks import Splits, get_task, sample_splits

__all__ = ["finetune", "compare", "resolve_device", "majority_accuracy"]


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
    return splits, per_epoch, total, knots


def finetune(cfg: FinetuneConfig, splits: Splits | None = None) -> dict:
    """Run one method of ``cfg`` and return (and write) its results.

    Args:
        cfg: the configuration; ``cfg.method`` picks zero-shot, LoRA, COLA or full
            fine-tuning (every weight trained by AdamW, no LoRA, no knots).
        splits: pre-sampled data (``compare`` shares one draw); ``None`` samples it.

    Returns:
        a JSON-ready dict: ``config``, ``counts``, ``dev_history`` (per epoch),
        ``dev`` and ``test`` accuracy in [0, 1] (``test`` also holds ``predictions``,
        the predicted candidate index per test example, in order), ``train_loss`` (per step, nats),
        ``knot_steps``, ``knots`` (each with its time in seconds), ``total_steps`` and
        wall times in seconds. Also written to ``<output_dir>/<task>_<method>_s<seed>/results.json``.

    Raises:
        ValueError, FileNotFoundError: bad configuration or data, before any training.
        cola_opt.llm.models.ModelLoadError: the model cannot be loaded.
        FloatingPointError: the training loss became NaN or inf.
    """
    t_start = time.perf_counter()
    splits, per_epoch, total_steps, knots = _prepare(cfg, splits)
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
        "total_steps": total_steps if cfg.method != "zero-shot" else 0,
        "knot_steps": list(knots),
        "dev_history": [],
        "train_loss": [],
        "knots": [],
    }

    def run_eval(name: str, model) -> dict:
        if not enc[name]:
            return {"accuracy": float("nan"), "loss": float("nan"), "n": 0}
        r = evaluate(model, enc[name], pad_id=pad, batch_size=cfg.eval_batch_size, autocast=cfg.autocast)
        if name != "test":  # test predictions stay, for paired tests across methods
            r.pop("predictions")
        return r

    t_train = time.perf_counter()
    if cfg.method != "zero-shot":
        model = _train(cfg, model, enc, pad, per_epoch, total_steps, knots, result, run_eval)
    result["train_seconds"] = time.perf_counter() - t_train
    t_eval = time.perf_counter()
    if cfg.method == "zero-shot":
        result["dev_history"].append({"epoch": 0, "step": 0, **run_eval("dev", model)})
    result["test"] = run_eval("test", model)
    result["dev"] = result["dev_history"][-1] if result["dev_history"] else None
    result["test_seconds"] = time.perf_counter() - t_eval
    result["wall_seconds"] = time.perf_counter() - t_start
    out = Path(cfg.output_dir) / f"{cfg.task}_{cfg.method}_s{cfg.seed}" / "results.json"
    atomic_save_json(result, out)
    result["results_path"] = str(out)
    return result


class _NoChain:
    """Full fine-tuning: the inner optimizer alone, with a chain's counters (one link, no knots)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer, self.step_count, self.link, self.chain_length, self.knots = optimizer, 0, 0, 1, []

    def step(self) -> None:
        self.optimizer.step()
        self.step_count += 1

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)


def _train(cfg, model, enc, pad, per_epoch, total_steps, knots, result, run_eval):
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    if cfg.method != "full":
        model = inject_lora(model, cfg.lora_settings())
    params = [p for p in model.parameters() if p.requires_grad]
    inner = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_linear_schedule_with_warmup(inner, cfg.warmup_steps, total_steps)
    if cfg.method == "full":
        chain = _NoChain(inner)
    else:
        chain = ResidualLowRankOptimizer(
            lora_sites(model), inner, knot_steps=knots, ranks=cfg.link_ranks, reset=cfg.optimizer_reset, seed=cfg.seed
        )
    train = enc["train"]
    micro = cfg.batch_size
    device = next(model.parameters()).device
    model.train()
    bar = tqdm(total=total_steps, desc=f"{cfg.method} {cfg.task}", disable=not cfg.progress, unit="step")
    ema = None
    epoch = 0
    while chain.step_count < total_steps:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
        batches = [order[i : i + micro].tolist() for i in range(0, len(order), micro)]
        for start in range(0, len(batches), cfg.grad_accum):
            group = batches[start : start + cfg.grad_accum]
            n_ex = sum(len(b) for b in group)
            step_loss = 0.0
            for idx in group:
                batch = [train[i] for i in idx]
                labels = torch.tensor([e.label for e in batch], device=device)
                with autocast_context(device, cfg.autocast):
                    scores = candidate_scores(model, batch, pad)
                loss = classification_loss(scores, labels)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss is {loss.item()} at step {chain.step_count + 1} (link {chain.link}); "
                        "no update from it was applied. Lower --lr or use --autocast none."
                    )
                (loss * len(idx) / n_ex).backward()
                step_loss += loss.item() * len(idx) / n_ex
                # Free this graph now: a knot that changes the rank resizes the factors, and a
                # live old graph keeps their gradient accumulators with the old shape.
                del scores, loss
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            lr_now = sched.get_last_lr()[0]
            chain.step()  # a knot, when scheduled after this step, is tied inside
            sched.step()
            chain.zero_grad()
            result["train_loss"].append(step_loss)
            ema = step_loss if ema is None else 0.9 * ema + 0.1 * step_loss
            bar.set_postfix(loss=f"{ema:.3f}", link=f"{chain.link + 1}/{chain.chain_length}", lr=f"{lr_now:.1e}")
            bar.update(1)
            if chain.knots and chain.knots[-1].step == chain.step_count:
                rec = chain.knots[-1]
                bar.write(f"knot {rec.link + 1} tied at step {rec.step} in {rec.seconds * 1e3:.1f} ms")
            if chain.step_count >= total_steps:
                break
        epoch += 1
        result["dev_history"].append({"epoch": epoch, "step": chain.step_count, **run_eval("dev", model)})
        bar.write(f"epoch {epoch}: dev accuracy {result['dev_history'][-1]['accuracy']:.4f}")
    bar.close()
    result["knots"] = [vars(k) for k in chain.knots]
    return model


def compare(cfg: FinetuneConfig, methods=("zero-shot", "lora", "cola")) -> dict:
    """Run several methods on the same data draw and seed; print a table.

    LoRA is the chain with one link; COLA uses ``cfg.chain_length`` (or ``knot_steps``).
    All other settings are shared. Writes ``<output_dir>/<task>_compare_s<seed>.json``.

    Returns:
        ``{"methods": {method: result}, "majority": accuracy, "table": str}``.

    Raises:
        as :func:`finetune`, before any training, for every method's configuration.
    """
    cfg.validate()
    splits, *_ = _prepare(cfg, None)
    cfgs = {m: cfg.replace(method=m, link_ranks=cfg.link_ranks if m == "cola" else None) for m in methods}
    for c in cfgs.values():  # every method's plan is checked before any training starts
        plan_steps(c, len(splits.train))
    results = {m: finetune(c, splits) for m, c in cfgs.items()}
    majority = majority_accuracy(splits)
    table = format_table(cfg, results, majority)
    print(table)
    summary = {"config": cfg.to_dict(), "counts": splits.counts, "majority": majority, "methods": results, "table": table}
    atomic_save_json(summary, Path(cfg.output_dir) / f"{cfg.task}_compare_s{cfg.seed}.json")
    return summary


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
        dev = r["dev"]["accuracy"] * 100 if r["dev"] else float("nan")
        knot_ms = np.mean([k["seconds"] for k in r["knots"]]) * 1e3 if r["knots"] else float("nan")
        knot = "-" if math.isnan(knot_ms) else f"{knot_ms:.1f}"
        rows.append(
            f"| {m} | {links} | {dev:.1f} | {r['test']['accuracy'] * 100:.1f} | {r['train_seconds']:.0f} | {knot} |"
        )
    rows.append(f"| majority class | - | - | {majority * 100:.1f} | - | - |")
    return "\n".join(rows)
