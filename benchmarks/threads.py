"""Torch threads under contention, side by side in one run: 1 thread, 2 threads and ``--threads auto``, with 0, 1 and
3 busy neighbours; and runs per hour of ``grid --jobs 1`` (2 threads) against ``--jobs 2`` (1 thread each).

Part A, the step. One SmolLM2-135M LoRA r = 8 optimizer step (the product's own step,
benchmarks/_product.py: forward, backward, clipping, AdamW, scheduler) on one fixed batch
of ``--batch-size`` training examples of ``--task`` (the first of the plain shuffle of
MeZO's draw, seed 0), in the CLI's precision (``--autocast auto``) and under
``OMP_WAIT_POLICY=PASSIVE``, as ``cola-opt`` runs. The neighbours are separate processes
doing real torch work: a loop of 384 x 384 matmuls with 1 thread each, started by this
script (and waited for until they compute) before a level and stopped after it. At each
level the settings take turns, one step each, in an order rotated every round, until each
has ``--steps`` timed steps or the level has used ``--level-seconds`` (then the round
finishes). ``auto`` is decided afresh before each of its steps, by the product's policy
(:class:`cola_opt.llm.threads.ThreadPolicy`, the ceiling ``--max-threads``); the count it
chose and the other runnable threads it counted are recorded. One warm-up step per
setting, before the first level, is left out.

Reported: per level and setting the median step seconds and its ratio to the idle
1-thread step; the fair share of a step (the idle 1-thread step times the runnable
threads per core, ``(neighbours + 1) / cores``, at least 1) for comparison.

Part B, runs per hour. A grid cell is one training process. ``--jobs 1`` runs one
process with ``auto`` threads (2 on an idle 2-core machine); ``--jobs 2`` runs two at once
with 1 thread each. Measured on an otherwise idle machine (no neighbours): one worker
process at ``--max-threads`` threads alone, then two 1-thread workers at the same time,
each taking ``--pair-steps`` steps of the same batch after a warm-up step. Runs per hour
of ``--jobs 2`` / ``--jobs 1`` = ``(1 / t_a + 1 / t_b) / (1 / t_2)``, the ``t`` being median
step times (a cell's time is its steps' time; loading and evaluation scale alike). With
``--grid``, also a real short grid (SmolLM2, SST-2, LoRA, 4 seeds of 64 examples, 1 epoch)
run with ``--jobs 1`` and ``--jobs 2``: runs per hour from their wall times.

    python benchmarks/threads.py --json benchmarks/results/threads.json    # about 10 min on 2 idle cores
    python benchmarks/threads.py --quick                                  # smoke test, 1 step per setting
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI runs: ``import cola_opt`` sets it before torch loads
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _product import build_run, median, run_config

from cola_opt.llm.threads import ThreadPolicy, usable_cores

NEIGHBOUR = ("import sys, torch\ntorch.set_num_threads(int(sys.argv[1]))\na, b = torch.randn(384, 384), torch.randn(384, 384) / 20\n"
             "print('ready', flush=True)\nwhile True:\n    a = torch.tanh(a @ b)\n")
SETTINGS = ("1", "2", "auto")


# ---------------------------------------------------------------------------- the step
def _fixed_step(args):
    """The product's run and one fixed optimizer step's batches (the first of the plain shuffle)."""
    cfg = run_config(args.task, model=args.model, n_train=args.n_train, batch_size=args.batch_size,
                     autocast=args.autocast, data_dir=args.data_dir)
    run = build_run(cfg)
    return run, next(run.batches(False))


def _apply(setting: str, args) -> dict:
    """Set torch's thread count for one step; for ``auto``, as the product's policy decides now."""
    if setting == "auto":
        policy = ThreadPolicy("auto", ceiling=args.max_threads)
        policy.start()
        return {"threads": torch.get_num_threads(), "others": policy.history[0]["others"]}
    torch.set_num_threads(int(setting))
    return {"threads": int(setting), "others": None}


def start_neighbours(n: int, threads: int = 1) -> list[subprocess.Popen]:
    """``n`` busy torch processes of ``threads`` threads each, each computing when this returns."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    procs = [subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(threads)], stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(n)]
    for p in procs:
        if p.stdout.readline().strip() != "ready":
            stop_neighbours(procs)
            raise RuntimeError("a neighbour failed to start")
    time.sleep(1.0)  # every one of them past its first matmuls
    return procs


def stop_neighbours(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)


def part_a(args) -> dict:
    run, step = _fixed_step(args)
    tokens = run.step(step)["tokens"]
    for setting in SETTINGS:  # warm-up, untimed
        _apply(setting, args)
        run.step(step)
    levels = {}
    for n in args.neighbours:
        procs = start_neighbours(n, args.neighbour_threads)
        try:
            recs = {s: [] for s in SETTINGS}
            t0, load0, r = time.perf_counter(), os.getloadavg()[0], 0
            while True:
                for setting in SETTINGS[r % 3:] + SETTINGS[: r % 3]:
                    chosen = _apply(setting, args)
                    recs[setting].append({**run.step(step), **chosen})
                    if args.verbose:
                        print(f"  {n} neighbours, {setting}: {recs[setting][-1]['seconds']:.2f} s "
                              f"({chosen['threads']} threads)", flush=True)
                r += 1
                if min(map(len, recs.values())) >= args.steps or time.perf_counter() - t0 >= args.level_seconds:
                    break
            levels[n] = {"load_before": load0, "load_after": os.getloadavg()[0], "seconds": time.perf_counter() - t0,
                         "settings": {s: {"median_step_seconds": median([x["seconds"] for x in v]),
                                          "threads_chosen": [x["threads"] for x in v],
                                          "others_counted": [x["others"] for x in v], "steps": v}
                                      for s, v in recs.items()}}
        finally:
            stop_neighbours(procs)
    base = levels[0]["settings"]["1"]["median_step_seconds"] if 0 in levels else float("nan")
    for n, level in levels.items():
        level["fair_share_seconds"] = base * max(1.0, (n + 1) / usable_cores())
        for s in level["settings"].values():
            s["ratio_to_idle_1_thread"] = s["median_step_seconds"] / base
    return {"task": args.task, "autocast": run.cfg.autocast, "tokens_per_step": tokens, "levels": levels}


# ---------------------------------------------------------------------------- runs per hour
def _worker(args) -> None:
    """Build the run, take a warm-up step, say ``ready``; on ``go``, take ``--pair-steps`` steps, one JSON line each."""
    torch.set_num_threads(args.worker_threads)
    run, step = _fixed_step(args)
    run.step(step)
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(args.pair_steps):
        print(json.dumps({"seconds": run.step(step)["seconds"]}), flush=True)


def _spawn_worker(threads: int, args) -> subprocess.Popen:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker-threads", str(threads), "--task", args.task,
           "--model", args.model, "--n-train", str(args.n_train), "--batch-size", str(args.batch_size),
           "--autocast", args.autocast, "--pair-steps", str(args.pair_steps)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    while line and line.strip() != "ready":  # progress bars and warnings go to stderr; anything else is skipped
        line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"a {threads}-thread worker failed to start")
    return proc


def _run_together(procs: list[subprocess.Popen]) -> list[list[float]]:
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    out = [[json.loads(line)["seconds"] for line in p.stdout] for p in procs]
    for p in procs:
        p.wait(timeout=60)
    return out


def part_b(args) -> dict:
    (alone,) = _run_together([_spawn_worker(args.max_threads, args)])
    pair = _run_together([_spawn_worker(1, args), _spawn_worker(1, args)])
    t2, ta, tb = median(alone), median(pair[0]), median(pair[1])
    return {"jobs1_threads": args.max_threads, "jobs1_step_seconds": alone, "jobs2_step_seconds": pair,
            "jobs1_median": t2, "jobs2_medians": [ta, tb],
            "runs_per_hour_ratio_jobs2_over_jobs1": (1 / ta + 1 / tb) / (1 / t2)}


def part_grid(args) -> dict:
    """The real thing: one short grid with --jobs 1, one with --jobs 2; runs per hour from their wall times."""
    out, (seeds, n_train, n_test) = {}, ((2, 16, 20) if args.quick else (4, 64, 100))
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory() as d:
            cmd = [sys.executable, "-m", "cola_opt.llm.cli", "grid", "--tasks", "sst2", "--methods", "lora", "--seeds",
                   str(seeds), "--n-train", str(n_train), "--n-dev", "0", "--n-test", str(n_test), "--epochs", "1",
                   "--model", args.model,
                   "--autocast", args.autocast, "--jobs", str(jobs), "--progress", "false", "--out", d]
            if args.data_dir:
                cmd += ["--data-dir", args.data_dir]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - t0
            out[f"jobs{jobs}"] = {"seconds": seconds, "runs": seeds, "runs_per_hour": seeds * 3600 / seconds}
    out["runs_per_hour_ratio_jobs2_over_jobs1"] = out["jobs2"]["runs_per_hour"] / out["jobs1"]["runs_per_hour"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="sst2", help="the fixed batch's task (default: sst2)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--autocast", default="auto")
    p.add_argument("--max-threads", type=int, default=usable_cores(), help="auto's ceiling and --jobs 1's threads "
                   "(default: the usable cores)")
    p.add_argument("--neighbours", default="0,1,3", help="busy neighbours per level, comma separated (default: 0,1,3)")
    p.add_argument("--neighbour-threads", type=int, default=1, help="torch threads of each neighbour (default: 1; "
                   "2: neighbours like other 2-thread training runs)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per setting and level (default: 8)")
    p.add_argument("--level-seconds", type=float, default=180.0, help="a level ends its round after this (default: 180)")
    p.add_argument("--pair-steps", type=int, default=8, help="steps of each worker in part B (default: 8)")
    p.add_argument("--grid", action="store_true", help="also run a real short grid with --jobs 1 and 2 (about 4 min)")
    p.add_argument("--skip-b", action="store_true", help="part A only")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 step per setting, 2 per worker")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--worker-threads", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.pair_steps, args.level_seconds, args.n_train = 1, 2, 0.0, 64
    if args.worker_threads is not None:
        _worker(args)
        return 0
    args.neighbours = [int(x) for x in args.neighbours.split(",")]
    import transformers

    transformers.logging.set_verbosity_error()
    t0 = time.perf_counter()
    a = part_a(args)
    b = None if args.skip_b else part_b(args)
    g = part_grid(args) if args.grid else None
    meta = {"cores": usable_cores(), "max_threads": args.max_threads, "neighbour_threads": args.neighbour_threads, "batch_size": args.batch_size,
            "host": platform.node(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "seconds": time.perf_counter() - t0}
    print(f"SmolLM2 LoRA r=8 step, one fixed {args.task} batch of {args.batch_size} ({a['tokens_per_step']} tokens), "
          f"autocast {a['autocast']}, {meta['cores']} cores, auto's ceiling {args.max_threads}")
    print("| neighbours | setting | threads used | median step s | x idle 1-thread | fair share s |")
    print("|---|---|---|---|---|---|")
    for n, level in a["levels"].items():
        for s, v in level["settings"].items():
            used = ",".join(map(str, sorted(set(v["threads_chosen"]))))
            print(f"| {n} | {s} | {used} | {v['median_step_seconds']:.2f} | {v['ratio_to_idle_1_thread']:.2f} | "
                  f"{level['fair_share_seconds']:.2f} |")
    if b:
        print(f"runs per hour, --jobs 2 (1 thread each) / --jobs 1 ({b['jobs1_threads']} threads): "
              f"{b['runs_per_hour_ratio_jobs2_over_jobs1']:.2f}x (median steps {b['jobs1_median']:.2f} s alone, "
              f"{b['jobs2_medians'][0]:.2f} s and {b['jobs2_medians'][1]:.2f} s as a pair)")
    if g:
        print(f"real grid ({g['jobs1']['runs']} SST-2 LoRA runs): --jobs 1 {g['jobs1']['seconds']:.0f} s, --jobs 2 "
              f"{g['jobs2']['seconds']:.0f} s: runs per hour {g['runs_per_hour_ratio_jobs2_over_jobs1']:.2f}x")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "steps": a, "runs_per_hour": b, "grid": g}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
