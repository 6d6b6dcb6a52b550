"""Peak memory of a training cell per task: how many grid cells (``--jobs``) fit in RAM.

For each task, in a fresh process (so that the peak is that task's alone): the
benchmarks' LoRA run (:func:`_product.run_config`, MeZO's draw of ``--n-train``, batch 8,
``--autocast auto``, ``--max-length``), one epoch of its bucketed batch order, and optimizer steps on the
``--steps`` batches with the most padded tokens (the longest bucket: the peak of a whole
run). Reported per task: the resident set after loading and encoding, its peak after the
steps (``ru_maxrss``, GB), the longest micro-batch (tokens), and the median step.

    python benchmarks/peak_memory.py --tasks sst2,rte,multirc --json benchmarks/results/peak_memory.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _product import build_run, median, run_config, write_json


def rss_peak_gb() -> float:
    """This process's peak resident set so far, GB (Linux reports ``ru_maxrss`` in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def one_task(task: str, args) -> dict:
    """Build ``task``'s run, step its longest batches, and return the figures (this process only)."""
    torch.set_num_threads(args.threads)
    run = build_run(run_config(task, n_train=args.n_train, data_dir=args.data_dir).replace(max_length=args.max_length))
    built = rss_peak_gb()
    lengths = run.lengths
    epoch = list(islice(run.batches(True), len(run.items) // run.cfg.batch_size))
    padded = [sum(len(b) * max(lengths[i] for i in b) for b in s.batches) for s in epoch]
    longest = sorted(range(len(epoch)), key=padded.__getitem__, reverse=True)[: args.steps]
    steps = [run.step(epoch[k]) for k in longest]
    return {"task": task, "rss_built_gb": built, "rss_peak_gb": rss_peak_gb(),
            "longest_batch_tokens": max(max(lengths[i] for i in b) for k in longest for b in epoch[k].batches),
            "step_seconds_median": median([s["seconds"] for s in steps]), "steps": len(steps)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sst2,rte,multirc", help="comma separated")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=1024, help="tokens (the paper protocol's 1024)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps on the longest batches")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="", help="write the figures here")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # the child process: one task, JSON out
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_task(args.one, args)))
        return
    t0, rows = time.perf_counter(), []
    for task in args.tasks.split(","):
        child = [sys.executable, __file__, "--one", task, "--data-dir", args.data_dir, "--n-train", str(args.n_train),
                 "--max-length", str(args.max_length), "--steps", str(args.steps), "--threads", str(args.threads)]
        done = subprocess.run(child, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"peak_memory: task {task!r} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("| task | longest batch (tokens) | RSS after loading (GB) | peak RSS (GB) | median step (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['longest_batch_tokens']} | {r['rss_built_gb']:.2f} | {r['rss_peak_gb']:.2f} "
              f"| {r['step_seconds_median']:.1f} |")
    write_json(args.json, {"rows": rows, "threads": args.threads, "n_train": args.n_train, "max_length": args.max_length,
                           "seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
