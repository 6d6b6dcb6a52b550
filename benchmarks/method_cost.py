"""Cost of each method of the capacity study (issue 11), side by side: step time, peak RSS, trainable parameters.

Each method is built exactly as the trainer builds it (:func:`cola_opt.llm.trainer.build_chain`
on a :class:`~cola_opt.llm.config.FinetuneConfig` from the grid's own method names,
:func:`cola_opt.llm.grid_plan.method_changes`: rank ``R`` with ``lora_alpha = 2R``), on the
same model and the same batch (``--batch`` x ``--seq`` random tokens, seed 0, next-token
loss), and trained as the loop trains it: forward, backward, clip to norm 1, ``chain.step()``
(which ties a knot when one is due), the LR scheduler's step, ``zero_grad``.

Every method runs in a worker process of its own (so each peak RSS, ``ru_maxrss``, is its
own; glibc's mmap threshold is pinned so that it measures live memory) on ``--threads``
torch threads. One LoRA r = 8 worker (the baseline) stays alive throughout; each other
method's worker takes its steps alternately with it, one step at a time, the order flipped
every step, so that each step of a method has a baseline step next to it: the ratio of
the two cancels the machine's changing load (other engineers' jobs share the cores).
``--rounds`` repeats the sequence of methods, in an order rotated per round. The 1-minute
load average is recorded around every method.

Reported per method: trainable parameters, optimizer-state entries (GaLore's projector
matrices included), median step time (wall and process CPU) over its plain steps, the
median of its same-round ratios to the baseline step beside it (with quartiles), the time
of a knot (``KnotRecord.seconds``) or of a GaLore projector refresh (the SVD step's
ratio to its neighbouring baseline step, minus the plain ratio), the cost over
``--budget-steps`` optimizer steps with the chain's ``L - 1`` knots and a refresh every
``--galore-gap`` steps, and peak RSS.

The knots of a COLA/ReLoRA worker fall after its steps 3 and 6 whatever its chain length
(a knot's cost does not depend on how many follow); GaLore refreshes its projector every 3
steps in the worker, so that refreshes are measured.

    nice -n 19 python benchmarks/method_cost.py --rounds 2 --json benchmarks/results/method_cost_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

METHODS = ("lora-r1", "lora-r8", "lora-r64", "cola4-r8", "cola8-r1", "relora4-r8", "galore-r8", "full")
BASELINE = "lora-r8"
KNOTS = (3, 6)  # after these steps of each worker's run
GALORE_WORKER_GAP = 3
BASELINE_STEPS = 100_000  # the baseline's planned run (its LR schedule); it never gets there


# ---------------------------------------------------------------------------- worker
def _peak() -> int:
    """Peak resident set size of this process so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _worker(args) -> None:
    """Build the method, say ``ready``, then take one step per ``step`` line on stdin; ``quit`` ends it."""
    import torch

    from cola_opt.llm.config import FinetuneConfig
    from cola_opt.llm.galore import galore_projectors
    from cola_opt.llm.grid_plan import method_changes
    from cola_opt.llm.models import load_model
    from cola_opt.llm.trainer import build_chain

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    total = BASELINE_STEPS if args.worker == BASELINE else args.warmup + args.steps
    changes = method_changes(args.worker, 8, 16.0)
    knots = KNOTS if changes["method"] in ("cola", "relora") else ()
    changes["knot_steps"] = knots or None
    cfg = FinetuneConfig(model=args.model, max_steps=total, **changes, galore_update_proj_gap=GALORE_WORKER_GAP,
                         autocast="none")
    cfg.validate()
    model, _ = load_model(cfg.model, dtype="fp32", device="cpu")
    model.config.use_cache = False
    model, chain, sched = build_chain(cfg, model, total, knots)
    params = [p for p in model.parameters() if p.requires_grad]
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    model.train()
    print("ready", flush=True)
    for i, line in enumerate(sys.stdin):
        if line.strip() != "step":
            break
        t0, c0 = time.perf_counter(), time.process_time()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        knot = chain.step()
        sched.step()
        chain.zero_grad()
        print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0, "loss": loss.item(),
                          "knot_seconds": knot.seconds if knot is not None else None,
                          "galore_refresh": cfg.method_type.galore and i % GALORE_WORKER_GAP == 0}), flush=True)
    state = sum(v.numel() for st in chain.optimizer.state.values() for v in st.values()
                if torch.is_tensor(v) and v.ndim > 0)
    state += sum(m.numel() for m in galore_projectors(chain.optimizer).values()) if cfg.method_type.galore else 0
    print(json.dumps({"trainable": sum(p.numel() for p in params), "optimizer_state": state,
                      "chain_length": cfg.chain_length if knots else 1, "peak_rss_bytes": _peak()}), flush=True)


# ---------------------------------------------------------------------------- parent
def _spawn(method: str, args) -> subprocess.Popen:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--model", args.model, "--batch",
           str(args.batch), "--seq", str(args.seq), "--threads", str(args.threads), "--steps", str(args.steps),
           "--warmup", str(args.warmup)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)  # big freed blocks go back to the OS: the peak is live memory
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"the {method} worker failed to start (said {line!r})")
    return proc


def _ask(proc: subprocess.Popen, command: str) -> dict:
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"a worker died on {command!r}")
    return json.loads(line)


def _pair(method: str, baseline: subprocess.Popen, args) -> dict:
    """``method``'s worker and the baseline take turns, a step each; both records, and the worker's totals."""
    load_before, t0 = os.getloadavg()[0], time.perf_counter()
    worker = _spawn(method, args)
    mine, base = [], []
    for i in range(args.warmup + args.steps):
        for who in ((worker, baseline) if i % 2 == 0 else (baseline, worker)):
            (mine if who is worker else base).append(_ask(who, "step"))
    totals = _ask(worker, "quit")
    worker.wait(timeout=120)
    return {"steps": mine[args.warmup:], "baseline_steps": base[args.warmup:], **totals,
            "load": (load_before, os.getloadavg()[0]), "seconds": time.perf_counter() - t0}


def run(args) -> dict:
    others = [m for m in args.methods if m != BASELINE]
    baseline = _spawn(BASELINE, args)
    rounds = []
    for k in range(args.rounds):
        order = others[k % len(others):] + others[:k % len(others)]
        results = {}
        for m in order:
            r = results[m] = _pair(m, baseline, args)
            ratio = statistics.median(a["seconds"] / b["seconds"] for a, b in zip(r["steps"], r["baseline_steps"]))
            print(f"round {k + 1}/{args.rounds} {m}: median step {statistics.median(s['seconds'] for s in r['steps']):.2f}"
                  f" s, {ratio:.3f} x {BASELINE}, load {r['load'][0]:.1f}-{r['load'][1]:.1f}", file=sys.stderr,
                  flush=True)
        rounds.append(results)
    totals = _ask(baseline, "quit")
    baseline.wait(timeout=120)
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "from_json", "json")}
    return {"settings": settings, "knots": list(KNOTS), "galore_worker_gap": GALORE_WORKER_GAP, "rounds": rounds,
            "baseline": totals}


def _plain(step: dict) -> bool:
    return step["knot_seconds"] is None and not step["galore_refresh"]


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4)
    return q1, q2, q3


def summarise(raw: dict) -> dict:
    """The figures, from the raw measurements of :func:`run` (also read back with ``--from-json``)."""
    s, rounds = raw["settings"], raw["rounds"]
    methods = [m for m in s["methods"] if m != BASELINE]
    out = {}
    base_wall = [b["seconds"] for rd in rounds for m in methods for b in rd[m]["baseline_steps"]]
    base_cpu = [b["cpu"] for rd in rounds for m in methods for b in rd[m]["baseline_steps"]]
    out[BASELINE] = {"trainable": raw["baseline"]["trainable"], "optimizer_state": raw["baseline"]["optimizer_state"],
                     "knots": 0, "median_step": statistics.median(base_wall), "median_step_cpu": statistics.median(base_cpu),
                     "n_steps": len(base_wall), "ratio": (1.0, 1.0, 1.0), "ratio_cpu": (1.0, 1.0, 1.0),
                     "knot_seconds": None, "refresh_in_steps": None, "budget_ratio": 1.0,
                     "peak_rss_bytes": raw["baseline"]["peak_rss_bytes"], "peak_rss_spread": None}
    for m in methods:
        runs = [rd[m] for rd in rounds]
        pairs = [(a, b) for r in runs for a, b in zip(r["steps"], r["baseline_steps"])]
        plain = [(a, b) for a, b in pairs if _plain(a)]
        ratio = _quartiles([a["seconds"] / b["seconds"] for a, b in plain])
        ratio_cpu = _quartiles([a["cpu"] / b["cpu"] for a, b in plain])
        knots = [a["knot_seconds"] for a, _ in pairs if a["knot_seconds"] is not None]
        refresh = [a["seconds"] / b["seconds"] - ratio[1] for a, b in pairs if a["galore_refresh"]]
        n_knots = runs[0]["chain_length"] - 1
        med_base = statistics.median(b["seconds"] for _, b in plain)
        # over the budget, in baseline steps: plain steps, knots, and GaLore's refreshes
        extra = n_knots * statistics.mean(knots) / med_base if knots else 0.0
        extra += math.ceil(s["budget_steps"] / s["galore_gap"]) * statistics.mean(refresh) if refresh else 0.0
        peaks = [r["peak_rss_bytes"] for r in runs]
        out[m] = {
            "trainable": runs[0]["trainable"], "optimizer_state": runs[0]["optimizer_state"], "knots": n_knots,
            "median_step": statistics.median(a["seconds"] for a, _ in plain),
            "median_step_cpu": statistics.median(a["cpu"] for a, _ in plain), "n_steps": len(plain),
            "ratio": ratio, "ratio_cpu": ratio_cpu,
            "knot_seconds": statistics.median(knots) if knots else None,
            "refresh_in_steps": statistics.median(refresh) if refresh else None,
            "budget_ratio": ratio[1] + extra / s["budget_steps"],
            "peak_rss_bytes": max(peaks), "peak_rss_spread": (min(peaks), max(peaks)),
        }
    for m in out:
        out[m]["rss_ratio"] = out[m]["peak_rss_bytes"] / out[BASELINE]["peak_rss_bytes"]
    loads = [x for rd in rounds for r in rd.values() for x in r["load"]]
    return {"methods": {m: out[m] for m in s["methods"]}, "load": (min(loads), statistics.median(loads), max(loads)),
            "settings": s}


def _report(r: dict) -> str:
    s, gib = r["settings"], 1 / 2**30
    lo, med, hi = r["load"]
    lines = [
        f"batch {s['batch']} x {s['seq']} tokens, {s['threads']} thread(s), fp32, {s['rounds']} round(s) x "
        f"{s['steps']} measured steps per method after {s['warmup']} warm-up, each step beside a {BASELINE} step; "
        f"1-min load average {lo:.1f} / {med:.1f} / {hi:.1f} (min / median / max)",
        "",
        "| method | trainable params | optimizer state (floats) | median step, wall (s) | median step, CPU (s) | "
        f"step / {BASELINE}: median (quartiles), wall | same, CPU | knot (s) or refresh ({BASELINE} steps) | "
        f"{s['budget_steps']} steps / {BASELINE}'s | peak RSS (GiB) | peak RSS / {BASELINE} |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, x in r["methods"].items():
        if x["knot_seconds"] is not None:
            event = f"{x['knot_seconds']:.3f} x {x['knots']} knots"
        elif x["refresh_in_steps"] is not None:
            event = f"{x['refresh_in_steps']:.2f} (SVD)"
        else:
            event = "-"
        w, c = x["ratio"], x["ratio_cpu"]
        lines.append(
            f"| {m} | {x['trainable']:,} | {x['optimizer_state']:,} | {x['median_step']:.3f} | "
            f"{x['median_step_cpu']:.3f} | {w[1]:.3f} ({w[0]:.3f}-{w[2]:.3f}) | {c[1]:.3f} ({c[0]:.3f}-{c[2]:.3f}) | "
            f"{event} | {x['budget_ratio']:.3f} | {x['peak_rss_bytes'] * gib:.3f} | {x['rss_ratio']:.3f} |")
    lines += ["", f"knots after steps {list(KNOTS)} of each COLA/ReLoRA worker; over {s['budget_steps']} steps: the "
              f"median same-round ratio plus (L - 1) knots and a GaLore refresh every {s['galore_gap']} steps, in "
              f"{BASELINE} steps; refresh = an SVD step's ratio to the {BASELINE} step beside it, minus the plain ratio"]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="built-in model name or a local model directory")
    p.add_argument("--methods", type=lambda t: tuple(x for x in t.split(",") if x), default=METHODS,
                   help=f"grid method names, comma separated; must include {BASELINE} (default: {','.join(METHODS)})")
    p.add_argument("--rounds", type=int, default=2, help="rounds over all methods (>= 1)")
    p.add_argument("--steps", type=int, default=8, help="measured steps per method and round (>= 6: knots fall inside)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured steps per method and round first")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64, help="tokens per sequence")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--budget-steps", type=int, default=625,
                   help="optimizer steps over which knots and refreshes are amortised (5 epochs of 1000 at batch 8)")
    p.add_argument("--galore-gap", type=int, default=200, help="GaLore's update_proj_gap for the amortised figure")
    p.add_argument("--json", default=None, help="also write the raw measurements to this JSON file")
    p.add_argument("--from-json", default=None, help="re-print the figures from the raw JSON of an earlier run")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from cola_opt.llm.methods import grid_method

    if args.from_json:
        with open(args.from_json) as f:
            print(_report(summarise(json.load(f))))
        return
    for name in ("rounds", "batch", "seq", "threads", "budget_steps", "galore_gap"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if BASELINE not in args.methods or len(args.methods) < 2:
        raise SystemExit(f"--methods {','.join(args.methods)} must include {BASELINE} (the baseline) and another")
    for m in args.methods:
        grid_method(m)  # a bad name: one error, before any worker
    if args.steps < 6 or not 0 <= args.warmup < min(KNOTS):
        raise SystemExit(f"--steps must be >= 6 and --warmup in [0, {min(KNOTS) - 1}], got {args.steps}, {args.warmup}")
    if args.worker:
        _worker(args)
        return
    raw = run(args)
    if args.json:  # the raw measurements first, so a failure below loses nothing
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)
    print(_report(summarise(raw)))


if __name__ == "__main__":
    main()
