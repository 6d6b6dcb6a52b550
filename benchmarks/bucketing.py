"""Length-bucketed batches against a plain shuffle, side by side in one run: tokens/s, padding, step time.

What is compared: the two batch orders of ``--bucket-by-length`` (:mod:`cola_opt.llm.batching`:
``bucketed_batches`` vs ``shuffled_batches``), each fed to the product's own training step
(benchmarks/_product.py: the trainer's ``build_chain`` and the loop's ``forward_backward`` and
``update``) on one SmolLM2-135M with LoRA r = 8 (alpha 16, q_proj and v_proj), AdamW at
5e-4, batch ``--batch-size``, MeZO's draw of ``--n-train`` training examples of each task
(seed 0), classification over the candidate answers, the precision of ``--autocast``
(default ``auto``: what the CLI would run). Per task the two orders take turns, one optimizer
step each, the one going first alternating every round, on the same model: a change in
the machine's load hits both alike. The first step of each order is a warm-up, left out.

Reported per task and order: the padding fraction of a whole epoch's batches and of the
timed ones, the median step time (seconds), tokens/s (real, non-pad tokens of the timed
steps over their summed wall time) and examples/s; per task the ratio bucketed / plain of
tokens/s (the gain) and of the median step time.

    python benchmarks/bucketing.py --json benchmarks/results/bucketing.json    # about 5-8 min on 2 idle cores
    python benchmarks/bucketing.py --quick                                     # smoke test, 2 timed steps
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI runs: ``import cola_opt`` sets it before torch loads
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _product import build_run, median, run_config, run_meta, write_json

from cola_opt.llm.batching import padding_fraction
from cola_opt.llm.threads import usable_cores

ORDERS = {"plain": False, "bucketed": True}


def measure_task(task: str, args) -> dict:
    """Both orders of ``task``, interleaved step by step; per order its steps and summary."""
    cfg = run_config(task, model=args.model, n_train=args.n_train, batch_size=args.batch_size, autocast=args.autocast,
                     data_dir=args.data_dir)
    run = build_run(cfg)
    lengths = run.lengths
    streams = {name: run.batches(flag) for name, flag in ORDERS.items()}
    steps = {name: [] for name in ORDERS}
    batches = {name: [] for name in ORDERS}
    for r in range(args.steps + 1):
        names = list(ORDERS) if r % 2 == 0 else list(reversed(ORDERS))
        for name in names:
            step = next(streams[name])
            rec = run.step(step)
            if r > 0:  # the first step of each order warms up
                steps[name].append(rec)
                batches[name].extend(step.batches)
        if args.verbose:
            print(f"  {task} round {r}: " + ", ".join(f"{n} {steps[n][-1]['seconds']:.2f} s" for n in names if r),
                  flush=True)
    out = {"task": task, "autocast": cfg.autocast, "n_train": len(run.items), "mean_length": sum(lengths) / len(lengths),
           "max_length": max(lengths), "orders": {}}
    for name, flag in ORDERS.items():
        order = run.batches(flag)
        epoch = []
        for step in order:
            epoch.extend(step.batches)
            if step.last_of_epoch:
                break
        recs = steps[name]
        seconds = sum(x["seconds"] for x in recs)
        out["orders"][name] = {
            "padding_fraction_epoch": padding_fraction(lengths, epoch),
            "padding_fraction_timed": padding_fraction(lengths, batches[name]),
            "median_step_seconds": median([x["seconds"] for x in recs]),
            "tokens_per_second": sum(x["tokens"] for x in recs) / seconds,
            "padded_tokens_per_second": sum(x["padded"] for x in recs) / seconds,
            "examples_per_second": sum(x["examples"] for x in recs) / seconds,
            "steps": recs,
        }
    o = out["orders"]
    out["tokens_per_second_ratio"] = o["bucketed"]["tokens_per_second"] / o["plain"]["tokens_per_second"]
    out["median_step_ratio"] = o["bucketed"]["median_step_seconds"] / o["plain"]["median_step_seconds"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="rte,sst2", help="comma separated (default: rte,sst2)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data-dir", default=None, help="default: the CLI's ($COLA_DATA_DIR, then ../shared/data)")
    p.add_argument("--n-train", type=int, default=1000, help="training examples drawn (MeZO: 1000)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=40, help="timed optimizer steps per order and task (default: 40)")
    p.add_argument("--autocast", default="auto", help="auto (the CLI's default), none or bf16")
    p.add_argument("--threads", type=int, default=usable_cores(), help="torch threads (default: the usable cores)")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 timed steps per order, 200 examples")
    p.add_argument("--verbose", action="store_true", help="a line per round")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.n_train = 2, 200
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    results = [measure_task(t.strip(), args) for t in args.tasks.split(",") if t.strip()]
    meta = run_meta(args, load, t0, autocast=results[0]["autocast"])
    print(f"bucket_by_length false vs true: SmolLM2 LoRA r=8, batch {args.batch_size}, {args.threads} threads, "
          f"autocast {meta['autocast']}, {args.steps} timed steps per order (load {load:.1f} -> {meta['load_after']:.1f})")
    print("| task | order | padding (epoch) | padding (timed) | median step s | tokens/s | examples/s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        for name, o in r["orders"].items():
            print(f"| {r['task']} | {name} | {o['padding_fraction_epoch']:.1%} | {o['padding_fraction_timed']:.1%} | "
                  f"{o['median_step_seconds']:.2f} | {o['tokens_per_second']:.0f} | {o['examples_per_second']:.2f} |")
    for r in results:
        print(f"{r['task']}: bucketed / plain tokens/s = {r['tokens_per_second_ratio']:.2f}x; "
              f"median step time ratio {r['median_step_ratio']:.2f}")
    write_json(args.json, {"meta": meta, "tasks": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
