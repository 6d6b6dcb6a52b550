"""Our training throughput against plain PEFT LoRA in ``transformers.Trainer``, side by side in one run.

Both sides train the same thing: SmolLM2-135M (the converted built-in, loaded from the
same folder) with PEFT LoRA r = 8, alpha 16, dropout 0, on q_proj and v_proj; AdamW at
5e-4 (weight decay 0), linear schedule, gradient norm clipped to 1; batch ``--batch-size``;
the precision of ``--autocast`` (default ``auto``: bf16 autocast where the CPU computes
bf16 natively, else fp32; Trainer's ``bf16=True`` on CPU is the same autocast); the same
``--threads``; the same examples: MeZO's draw of ``--n-train`` training examples (seed 0)
of the task, in our prompt template, tokenised once (the Trainer gets our token ids).

What each side computes per step:

- **ours** (``cola-opt finetune --method lora``'s step, benchmarks/_product.py): the
  prompts left-padded with position ids from the mask, one forward pass with
  ``logits_to_keep=1`` (only the last position's logits), log-softmax over the vocabulary,
  the candidates' log-probs (every candidate of these tasks is one token: " Yes"/" No",
  " terrible"/" great"), cross-entropy over the candidates against the gold index;
  backward; clip; AdamW; scheduler. Batches from a plain shuffle (``ours``) or length
  buckets (``ours-bucketed``, ``--bucket-by-length true``, the CLI's default).
- **trainer** (what a plain user writes): a list of ``{"input_ids", "labels"}`` records,
  ``DataCollatorWithPadding`` (right padding), ``Trainer`` with a ``compute_loss`` that
  runs ``model(input_ids, attention_mask)`` (logits at every position), takes the logits
  at each prompt's last real token, and computes the same log-softmax and cross-entropy
  over the same candidate tokens. ``trainer-grouped``: the same with
  ``train_sampling_strategy="group_by_length"`` (Trainer's own length grouping).
  ``trainer-last`` (opt-in, ``--rows``): left padding, position ids and
  ``logits_to_keep=1`` as ours, to separate the loop's cost from the logits saved.

Both sides are timed per optimizer step: ours around the loop's ``forward_backward`` and
``update``; Trainer's from its ``on_step_begin`` to its ``on_step_end`` callback (forward,
backward, clipping, optimizer, scheduler, ``zero_grad``; not the collation of the
prefetched batch, a few ms). tokens/s = real (non-pad) tokens / summed step seconds, the
same count on both sides. The rows run in blocks of ``--block`` steps, in an order rotated
every round, so a change in the machine's load hits all alike; each row's first step is a
warm-up, left out. A Trainer row is one ``Trainer.train()`` over all its blocks, run in a
thread and paused by its callback between blocks (:class:`BlockRunner`), so it keeps its
optimizer and its place in the epoch as an uninterrupted run would. (Trainer's
``group_by_length`` puts the longest batch first; it falls in the warm-up step.) Each side
has a model of its own per row (the same weights, fresh LoRA factors), and a forward hook
records the dtype the first q_proj computed in, to show both sides ran in the same precision.
With seed 0 the Trainer's ``RandomSampler`` draws the permutation of our plain shuffle
(``torch.randperm`` from a generator seeded 0), so ``ours`` and ``trainer`` train on the
very same batches; the script checks it (tokens per step) and says so.

Reported per task and row: median step seconds, tokens/s, examples/s, padding fraction;
the ratios ours / trainer of tokens/s, without bucketing (goal >= 1.0) and with it (goal
>= 1.3, issue 12), and ours-bucketed / trainer-grouped.

    python benchmarks/vs_trainer.py --json benchmarks/results/vs_trainer.json    # about 9 min on 2 idle cores
    python benchmarks/vs_trainer.py --quick                                       # smoke test
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import threading
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI runs: ``import cola_opt`` sets it before torch loads
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _product import build_run, median, run_config, run_meta, write_json

from cola_opt.llm.models import resolve_model_dir
from cola_opt.llm.threads import usable_cores

ROWS = ("ours", "ours-bucketed", "trainer", "trainer-grouped")
ALL_ROWS = (*ROWS, "trainer-last")
GOALS = {"ours": 1.0, "ours-bucketed": 1.3}  # tokens/s against the plain trainer (issue 12)


# ---------------------------------------------------------------------------- the Trainer side, as a user writes it
def trainer_model(model_dir: str):
    """SmolLM2 from its converted folder with PEFT LoRA r=8 on q_proj and v_proj (PEFT's defaults otherwise)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.use_cache = False
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], bias="none",
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


class BlockRunner:
    """One ``Trainer.train()`` for a whole row, in a thread of its own, paused after every block of steps.

    The Trainer's callback times each optimizer step (``on_step_begin`` to ``on_step_end``)
    and, when the block's steps are done, hands control back and waits: the Trainer keeps
    its optimizer, schedule and place in the epoch between blocks, as one uninterrupted
    run would, while the other rows take their turn (only one row computes at a time).
    """

    def __init__(self, make_trainer, total_steps: int) -> None:
        from transformers import TrainerCallback

        runner = self
        self.steps, self.left, self.total, self.error = [], 0, total_steps, None
        self.tokens = self.padded = self.examples = 0
        self.go, self.paused = threading.Semaphore(0), threading.Semaphore(0)

        class _Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                runner.tokens = runner.padded = runner.examples = 0
                runner.t0, runner.c0 = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kw):
                runner.steps.append({"seconds": time.perf_counter() - runner.t0,
                                     "cpu_seconds": time.process_time() - runner.c0, "tokens": runner.tokens,
                                     "padded": runner.padded, "examples": runner.examples})
                runner.left -= 1
                if runner.left == 0 and state.global_step < runner.total:
                    runner.paused.release()
                    runner.go.acquire()

        self.trainer = make_trainer(self, _Timer())
        self.thread = threading.Thread(target=self._train, daemon=True)

    def count(self, mask: torch.Tensor) -> None:
        """Called by ``compute_loss``: the real and padded tokens of a micro-batch."""
        self.tokens += int(mask.sum())
        self.padded += mask.numel()
        self.examples += mask.shape[0]

    def _train(self) -> None:
        try:
            self.trainer.train()
        except Exception as e:  # noqa: BLE001 - re-raised in the main thread by block()
            self.error = e
        self.paused.release()

    def block(self, n: int) -> list[dict]:
        """Let the Trainer take ``n`` more optimizer steps; their records."""
        first = len(self.steps)
        self.left = n
        if not self.thread.is_alive() and not self.steps:
            self.thread.start()
        else:
            self.go.release()
        self.paused.acquire()
        if self.error is not None:
            raise self.error
        return self.steps[first:]


def make_trainer(model, tokenizer, records, candidates, *, row: str, steps: int, args, runner, callback):
    """The ``Trainer`` of one row, for ``steps`` optimizer steps."""
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    last_only = row == "trainer-last"

    class CandidateTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
            runner.count(mask)
            if last_only:  # left-padded: every prompt ends at the last position
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
            else:  # right-padded: the last real token of each prompt
                logits = model(input_ids=ids, attention_mask=mask).logits
                logits = logits[torch.arange(ids.shape[0], device=ids.device), mask.sum(-1) - 1]
            scores = F.log_softmax(logits.float(), dim=-1)[:, candidates]
            loss = F.cross_entropy(scores, labels)
            return (loss, None) if return_outputs else loss

    tok = copy.copy(tokenizer)
    tok.padding_side = "left" if last_only else "right"
    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="vs_trainer_"), per_device_train_batch_size=args.batch_size,
        learning_rate=5e-4, weight_decay=0.0, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
        max_steps=steps, seed=0, bf16=args.autocast_resolved == "bf16", use_cpu=True,
        train_sampling_strategy="group_by_length" if row == "trainer-grouped" else "random",
        logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        dataloader_pin_memory=False, remove_unused_columns=False,
    )
    trainer = CandidateTrainer(model=model, args=targs, train_dataset=records, processing_class=tok,
                               data_collator=DataCollatorWithPadding(tok), callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # its end-of-training line
    return trainer


def _matmul_dtypes(model) -> set:
    """Watch the output dtype of the first q_proj's base layer: bf16 under autocast, float32 without."""
    seen = set()
    layer = next(m for n, m in model.named_modules() if n.endswith("q_proj.base_layer"))
    layer.register_forward_hook(lambda mod, inp, out: seen.add(str(out.dtype).replace("torch.", "")))
    return seen


# ---------------------------------------------------------------------------- one task
def measure_task(task: str, args) -> dict:
    cfg = run_config(task, model=args.model, n_train=args.n_train, batch_size=args.batch_size, autocast=args.autocast,
                     data_dir=args.data_dir)
    args.autocast_resolved = cfg.autocast
    ours = build_run(cfg)
    cands = {tuple(c[0] for c in x.candidate_ids) for x in ours.items}
    if len(cands) != 1 or any(len(c) != 1 for x in ours.items for c in x.candidate_ids):
        raise SystemExit(f"{task}: the candidates are not the same single tokens for every example; this benchmark's "
                         "Trainer side scores one token per candidate")
    candidates = list(next(iter(cands)))
    records = [{"input_ids": list(x.prompt_ids), "labels": x.label} for x in ours.items]
    blocks = -(-args.steps // args.block)
    streams = {"ours": ours.batches(False), "ours-bucketed": ours.batches(True)}
    runners, dtypes = {}, {"ours": _matmul_dtypes(ours.model)}
    for row in args.rows:
        if row.startswith("trainer"):
            model = trainer_model(resolve_model_dir(args.model))  # a model per row: each trains its own adapter
            dtypes[row] = _matmul_dtypes(model)
            runners[row] = BlockRunner(lambda runner, callback, model=model, row=row: make_trainer(
                model, ours.tokenizer, records, candidates, row=row, steps=blocks * args.block + 1, args=args,
                runner=runner, callback=callback), blocks * args.block + 1)
    timed = {row: [] for row in args.rows}
    for b in range(blocks):
        order = args.rows[b % len(args.rows):] + args.rows[: b % len(args.rows)]
        for row in order:
            n = args.block + (b == 0)  # the first step of each row warms up
            if row in streams:
                recs = [ours.step(next(streams[row])) for _ in range(n)]
            else:
                recs = runners[row].block(n)
            timed[row].extend(recs[1:] if b == 0 else recs)
            if args.verbose:
                print(f"  {task} block {b} {row}: " + " ".join(f"{x['seconds']:.2f}" for x in recs), flush=True)
    out = {"task": task, "autocast": cfg.autocast, "matmul_dtypes": {k: sorted(v) for k, v in dtypes.items()},
           "n_train": len(ours.items), "candidates": candidates, "rows": {}}
    for row, recs in timed.items():
        seconds = sum(x["seconds"] for x in recs)
        out["rows"][row] = {
            "median_step_seconds": median([x["seconds"] for x in recs]),
            "tokens_per_second": sum(x["tokens"] for x in recs) / seconds,
            "examples_per_second": sum(x["examples"] for x in recs) / seconds,
            "padding_fraction": 1 - sum(x["tokens"] for x in recs) / sum(x["padded"] for x in recs),
            "steps": recs,
        }
    tokens = {row: [x["tokens"] for x in recs] for row, recs in timed.items()}
    out["same_batches_as_trainer"] = {row: tokens[row] == tokens["trainer"] for row in ("ours", "trainer-last")
                                      if row in tokens and "trainer" in tokens}
    tps = {row: r["tokens_per_second"] for row, r in out["rows"].items()}
    out["ratios"] = {}
    if "trainer" in tps:
        out["ratios"].update({f"{row} / trainer": tps[row] / tps["trainer"] for row in ("ours", "ours-bucketed")
                              if row in tps})
    if "trainer-grouped" in tps and "ours-bucketed" in tps:
        out["ratios"]["ours-bucketed / trainer-grouped"] = tps["ours-bucketed"] / tps["trainer-grouped"]
    if "trainer-last" in tps and "ours" in tps:
        out["ratios"]["ours / trainer-last"] = tps["ours"] / tps["trainer-last"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="rte,sst2", help="comma separated: rte, sst2 (default: rte,sst2)")
    p.add_argument("--model", default="smollm2-135m", help="a built-in name or a local model folder")
    p.add_argument("--data-dir", default=None, help="default: the CLI's ($COLA_DATA_DIR, then ../shared/data)")
    p.add_argument("--n-train", type=int, default=1000, help="training examples drawn (MeZO: 1000)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per row and task (default: 20)")
    p.add_argument("--block", type=int, default=5, help="timed steps per block, plus one warm-up (default: 5)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma separated, of {', '.join(ALL_ROWS)} "
                   f"(default: {','.join(ROWS)})")
    p.add_argument("--autocast", default="auto", help="auto (the CLI's default), none or bf16")
    p.add_argument("--threads", type=int, default=usable_cores(), help="torch threads (default: the usable cores)")
    p.add_argument("--quick", action="store_true", help="smoke test: one block of 2 timed steps per row, 200 examples")
    p.add_argument("--verbose", action="store_true", help="a line per block")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if not args.rows or set(args.rows) - set(ALL_ROWS):
        p.error(f"--rows {args.rows} must name rows of {ALL_ROWS}")
    if args.quick:
        args.steps, args.block, args.n_train = 2, 2, 200
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    load, t0 = os.getloadavg()[0], time.perf_counter()
    results = [measure_task(t.strip(), args) for t in args.tasks.split(",") if t.strip()]
    meta = run_meta(args, load, t0, block=args.block, transformers=transformers.__version__)
    print(f"ours vs transformers.Trainer + PEFT LoRA: SmolLM2 r=8, batch {args.batch_size}, {args.threads} threads, "
          f"{args.steps} timed steps per row (load {load:.1f} -> {meta['load_after']:.1f})")
    print("| task | row | autocast | median step s | tokens/s | examples/s | padding |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        for row, o in r["rows"].items():
            print(f"| {r['task']} | {row} | {r['autocast']} | {o['median_step_seconds']:.2f} | "
                  f"{o['tokens_per_second']:.0f} | {o['examples_per_second']:.2f} | {o['padding_fraction']:.1%} |")
    for r in results:
        for name, ratio in r["ratios"].items():
            goal = GOALS.get(name.split(" / ")[0]) if name.endswith("/ trainer") else None
            verdict = "" if goal is None else f" (goal >= {goal}: {'met' if ratio >= goal else 'NOT met'})"
            print(f"{r['task']}: tokens/s {name} = {ratio:.2f}x{verdict}")
        if r["same_batches_as_trainer"]:
            print(f"{r['task']}: the same batches (tokens per step) as trainer: {r['same_batches_as_trainer']}")
        print(f"{r['task']}: q_proj computed in " + ", ".join(f"{k} {'/'.join(v)}" for k, v in r["matmul_dtypes"].items()))
    write_json(args.json, {"meta": meta, "tasks": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
