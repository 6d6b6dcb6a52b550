"""Step cost of COLA against plain PEFT LoRA and full fine-tuning, side by side.

Each method runs in its own worker process (so each peak RSS is its own), on the same
model and the same batch (``--batch`` x ``--seq`` random tokens, seed 0). The parent
interleaves the workers one step at a time, rotating their order every round, so a
change in the machine's load hits all three alike; only one worker computes at a time.

- **COLA**: PEFT LoRA (r=8, alpha=16, q_proj and v_proj) driven by
  :class:`cola_opt.chain.optimizer.ResidualLowRankOptimizer` (AdamW inside) with two knots during
  the measured steps (chain length 3); a knot's own time is the chain's
  ``KnotRecord.seconds``.
- **LoRA**: the same PEFT LoRA and a plain ``torch.optim.AdamW`` loop.
- **full**: every parameter trained by ``torch.optim.AdamW``.

Reported, in wall-clock and in CPU time of the worker process (``time.process_time``;
on a shared machine CPU time hardly sees the other users' load):

- the median step time of each method (forward + backward + optimizer step, seconds);
- COLA/LoRA as the ratio of medians, and as the median of same-round ratios (each COLA
  step against the LoRA step that ran next to it, which cancels load drift);
- a knot in units of one median LoRA step (knot steps are left out of COLA's medians);
- peak RSS of each worker (``ru_maxrss``) and its ratios; ``--malloc fixed`` (default)
  pins glibc's mmap threshold in every worker, so the peak measures live memory rather
  than heap fragmentation, which otherwise moves it by a few percent from run to run;
- COLA's amortised step time over the paper's budget: chain length 3 (2 knots) within 5
  epochs (Xia, Qin and Hazan 2024, Section 5) of ``--train-examples`` examples (1000,
  the MeZO protocol) at batch ``--batch``: ``(mean COLA step x steps + 2 knots) /
  (mean LoRA step x steps)``, the means over the same rounds.

    python benchmarks/step_cost.py --model-dir /path/to/smollm2 --steps 12
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

METHODS = ("cola", "lora", "full")


# ---------------------------------------------------------------------------- worker
def _peak() -> int:
    """Peak resident set size of this process so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss() -> int:
    """Current resident set size, bytes (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _worker(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    model.config.use_cache = False
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    chain = None
    if args.worker == "full":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    else:
        from cola_opt.chain.optimizer import ResidualLowRankOptimizer
        from cola_opt.llm.lora import LoraSettings, inject_lora, lora_sites

        model = inject_lora(model, LoraSettings(r=8, lora_alpha=16, target_modules=("q_proj", "v_proj")))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
        if args.worker == "cola":
            chain = ResidualLowRankOptimizer(lora_sites(model), opt, knot_steps=args.knot_steps)
    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast == "bf16")
    print("ready", json.dumps({"rss": _rss(), "peak": _peak()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t0, c0 = time.perf_counter(), time.process_time()
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        knot = None
        if chain is not None:
            # chain.step() is exactly opt.step() then chain.advance(); split here to time the knot alone
            c1 = time.process_time()
            knot = chain.advance()  # ties a knot when one is due
            knot_cpu = time.process_time() - c1
        opt.zero_grad(set_to_none=True)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({"seconds": dt, "cpu": cpu, "knot_seconds": knot.seconds if knot else None,
                          "knot_cpu": knot_cpu if knot else None, "loss": loss.item(),
                          "rss": _rss(), "peak": _peak()}), flush=True)
    print(json.dumps({"peak_rss_bytes": _peak()}), flush=True)


# ---------------------------------------------------------------------------- parent
def _spawn(method: str, args, knot_steps: list[int]) -> subprocess.Popen:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--model-dir", args.model_dir,
           "--malloc", args.malloc, "--batch", str(args.batch), "--seq", str(args.seq), "--threads", str(args.threads),
           "--autocast", args.autocast, "--knot-steps", ",".join(map(str, knot_steps))]
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as cola_opt sets it; spinning threads stall on shared cores
    if args.malloc == "fixed":  # glibc: no dynamic mmap threshold, so big freed blocks go back to the OS
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        raise RuntimeError(f"the {method} worker failed to start (said {line!r})")
    proc.ready = json.loads(line.split(" ", 1)[1])
    return proc


def _ask(proc: subprocess.Popen, command: str) -> dict:
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"a worker died on {command!r}")
    return json.loads(line)


def run(args) -> dict:
    total = args.warmup + args.steps
    knot_steps = [args.warmup + args.steps // 3, args.warmup + 2 * args.steps // 3]
    workers = {}
    for m in METHODS:  # started one after another: loading is the memory peak of a start
        workers[m] = _spawn(m, args, knot_steps)
    times, cpus = {m: [] for m in METHODS}, {m: [] for m in METHODS}
    knots, knots_cpu, losses = [], [], {m: [] for m in METHODS}
    trace = {m: [(workers[m].ready["rss"], workers[m].ready["peak"])] for m in METHODS}  # (rss, peak) bytes
    for i in range(total):
        order = METHODS[i % 3:] + METHODS[:i % 3]  # rotate, so no method always runs first
        for m in order:
            r = _ask(workers[m], "step")
            losses[m].append(r["loss"])
            trace[m].append((r["rss"], r["peak"]))
            if r["knot_seconds"] is not None:
                knots.append(r["knot_seconds"])
                knots_cpu.append(r["knot_cpu"])
            if i >= args.warmup:
                times[m].append(r["seconds"])
                cpus[m].append(r["cpu"])
    peaks = {}
    for m, proc in workers.items():
        peaks[m] = _ask(proc, "quit")["peak_rss_bytes"]
        proc.wait(timeout=60)
    return {
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "knot_steps", "from_json")},
        "knot_steps": knot_steps,
        "step_seconds": times,
        "step_cpu_seconds": cpus,
        "knot_seconds": knots,
        "knot_cpu_seconds": knots_cpu,
        "peak_rss_bytes": peaks,
        "memory_trace": trace,
        "losses": losses,
    }


def summarise(raw: dict) -> dict:
    """The figures, from the raw measurements of :func:`run` (also read back with ``--from-json``)."""
    s = raw["settings"]
    # Steps that tied a knot are left out of COLA's step figures; the knots are counted on their own.
    plain = [k for k in range(s["steps"]) if s["warmup"] + k + 1 not in raw["knot_steps"]]
    budget = s["epochs"] * math.ceil(s["train_examples"] / s["batch"])

    def figures(per_step: dict[str, list[float]], knots: list[float]) -> dict:
        med = {m: statistics.median(per_step[m]) for m in METHODS}
        med["cola"] = statistics.median([per_step["cola"][k] for k in plain])
        # the LoRA step of the same round ran next to the COLA step: pairing cancels load drift
        ratios = [per_step["cola"][k] / per_step["lora"][k] for k in plain]
        q1, q2, q3 = statistics.quantiles(ratios, n=4)
        mean_cola = statistics.mean(per_step["cola"][k] for k in plain)
        mean_lora = statistics.mean(per_step["lora"][k] for k in plain)
        knot = statistics.mean(knots)
        return {
            "median_step": med,
            "cola_over_lora_median": med["cola"] / med["lora"],
            "cola_over_lora_mean": mean_cola / mean_lora,
            "cola_over_lora_paired": (q1, statistics.median(ratios), q3),
            "full_over_lora_median": med["full"] / med["lora"],
            "knot": knots,
            "knot_in_lora_steps": knot / med["lora"],
            # total time over the budget: every step, plus 2 knots (chain length 3)
            "cola_over_lora_amortised": (mean_cola * budget + 2 * knot) / (mean_lora * budget),
        }

    peaks = raw["peak_rss_bytes"]
    return {
        "wall": figures(raw["step_seconds"], raw["knot_seconds"]),
        "cpu": figures(raw["step_cpu_seconds"], raw["knot_cpu_seconds"]),
        "peak_rss_bytes": peaks,
        "cola_over_lora_peak_rss": peaks["cola"] / peaks["lora"],
        "full_over_lora_peak_rss": peaks["full"] / peaks["lora"],
        "budget_steps": budget,
        "settings": s,
        "knot_steps": raw["knot_steps"],
    }


def _report(r: dict) -> str:
    gb = 1 / 2**30
    s, w, c = r["settings"], r["wall"], r["cpu"]
    lines = [
        f"batch {s['batch']} x {s['seq']} tokens, {s['threads']} thread(s), autocast {s['autocast']}, "
        f"malloc {s['malloc']}, {s['steps']} measured steps per method after {s['warmup']} warm-up, interleaved",
        "",
        "| method | median step, wall (s) | median step, CPU (s) | peak RSS (GiB) |",
        "|---|---|---|---|",
    ]
    for m in METHODS:
        peak = r["peak_rss_bytes"][m] * gb
        lines.append(f"| {m} | {w['median_step'][m]:.3f} | {c['median_step'][m]:.3f} | {peak:.3f} |")
    lines += [
        "",
        "| ratio | wall | CPU |",
        "|---|---|---|",
        f"| COLA / LoRA, ratio of median steps | {w['cola_over_lora_median']:.3f} | {c['cola_over_lora_median']:.3f} |",
        f"| COLA / LoRA, ratio of mean steps (same rounds) | {w['cola_over_lora_mean']:.3f} | "
        f"{c['cola_over_lora_mean']:.3f} |",
        "| COLA / LoRA, same-round ratios: median (quartiles) | {:.3f} ({:.3f} - {:.3f}) | {:.3f} ({:.3f} - {:.3f}) |"
        .format(*(w["cola_over_lora_paired"][i] for i in (1, 0, 2)),
                *(c["cola_over_lora_paired"][i] for i in (1, 0, 2))),
        f"| full / LoRA, ratio of median steps | {w['full_over_lora_median']:.3f} | {c['full_over_lora_median']:.3f} |",
        f"| one knot, in median LoRA steps | {w['knot_in_lora_steps']:.4f} | {c['knot_in_lora_steps']:.4f} |",
        f"| COLA / LoRA amortised: chain length 3, {r['budget_steps']} steps | "
        f"{w['cola_over_lora_amortised']:.4f} | {c['cola_over_lora_amortised']:.4f} |",
        "",
        f"- knots at steps {r['knot_steps']}: {', '.join(f'{k:.3f}' for k in w['knot'])} s wall, "
        f"{', '.join(f'{k:.3f}' for k in c['knot'])} s CPU",
        f"- peak RSS COLA / LoRA: {r['cola_over_lora_peak_rss']:.4f}; full / LoRA: {r['full_over_lora_peak_rss']:.3f}",
        f"- budget: {s['epochs']} epochs x ceil({s['train_examples']} / {s['batch']}) = {r['budget_steps']} steps, "
        "2 knots; amortised = (mean COLA step x steps + 2 knots) / (mean LoRA step x steps)",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default=None, help="a causal LM directory; default: the built-in smollm2-135m")
    p.add_argument("--steps", type=int, default=12, help="measured steps per method (>= 3)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured steps per method first")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64, help="tokens per sequence")
    p.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    p.add_argument("--autocast", choices=("none", "bf16"), default="none")
    p.add_argument("--epochs", type=int, default=5, help="budget for the amortised figure (the paper's 5)")
    p.add_argument("--train-examples", type=int, default=1000, help="examples per epoch (MeZO protocol: 1000)")
    p.add_argument("--malloc", choices=("fixed", "default"), default="fixed",
                   help="'fixed': glibc MALLOC_MMAP_THRESHOLD_=128 KiB in every worker, so peak RSS measures "
                        "live memory rather than heap fragmentation; 'default': glibc's dynamic threshold")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--from-json", default=None, help="re-print the figures from the raw JSON of an earlier run")
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--knot-steps", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("steps", "batch", "seq", "threads", "epochs", "train_examples"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.steps < 3 or args.warmup < 0:
        raise SystemExit(f"--steps must be >= 3 and --warmup >= 0, got {args.steps} and {args.warmup}")
    if args.from_json:
        with open(args.from_json) as f:
            print(_report(summarise(json.load(f))))
        return
    if args.model_dir is None:
        from cola_opt.llm.models import resolve_model_dir

        args.model_dir = resolve_model_dir("smollm2-135m")
    if args.worker:
        args.knot_steps = [int(k) for k in args.knot_steps.split(",") if k]
        _worker(args)
        return
    raw = run(args)
    if args.json:  # the raw measurements first, so a failure below loses nothing
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=2)
    print(_report(summarise(raw)))


if __name__ == "__main__":
    main()
