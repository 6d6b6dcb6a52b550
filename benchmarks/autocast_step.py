"""fp32 against bf16 autocast, side by side in one run: is bf16 the fast path on this machine?

What ``--autocast auto`` decides (bf16 only where the device computes bf16 natively,
:func:`cola_opt.llm.precision.resolve_autocast`) rests on this measurement. One process,
one model: SmolLM2-135M (the built-in default) with PEFT LoRA (r=8, alpha=16, q_proj and
v_proj) and AdamW, trained as classification on ``--batch`` real WSC training examples
(the product's own objective, :class:`cola_opt.llm.objective.CandidateClassification`).
Each round takes one optimizer step in fp32 and one under bf16 autocast, in alternating
order, so a change in the machine's load hits both alike; the first round is a warm-up
and is left out. Also a bare ``Linear(576, 1536)`` forward and backward over 512 tokens
(SmolLM2's MLP shape), the same way.

Reported: the machine's capability (``torch.backends.cpu.get_cpu_capability()``,
oneDNN's native bf16 test), what ``auto`` resolves to, and per path the median wall and
CPU seconds (``time.process_time``) of a step, with bf16/fp32 as the ratio of medians and
as the median of same-round ratios.

    python benchmarks/autocast_step.py --rounds 8 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _timed(fn) -> tuple[float, float]:
    """``(wall seconds, CPU seconds)`` of one call of ``fn``."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def _lora_step(args):
    """One optimizer step of LoRA on SmolLM2-135M under a given autocast (``"none"`` or ``"bf16"``)."""
    from cola_opt.llm.lora import LoraSettings, inject_lora
    from cola_opt.llm.models import load_model
    from cola_opt.llm.objective import CandidateClassification
    from cola_opt.llm.tasks import get_task, sample_splits

    model, tok = load_model(args.model)
    model.config.use_cache = False
    model = inject_lora(model, LoraSettings())
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    splits = sample_splits(get_task("wsc"), seed=0, n_train=args.batch, n_dev=0, n_test=1, data_dir=args.data_dir)
    objectives = {mode: CandidateClassification(tok, 256, mode) for mode in ("none", "bf16")}
    batch = objectives["none"].encode(splits.train)
    tokens = sum(len(e.prompt_ids) for e in batch)

    def step(mode):
        loss = objectives[mode].loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, f"LoRA step, batch {args.batch} WSC examples ({tokens} prompt tokens)"


def _linear_step(_args):
    lin = torch.nn.Linear(576, 1536)
    x = torch.randn(512, 576)

    def step(mode):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            y = lin(x)
        y.float().sum().backward()
        lin.zero_grad(set_to_none=True)

    return step, "Linear(576, 1536) forward + backward, 512 tokens"


def _measure(step, rounds: int) -> dict:
    times = {"none": [], "bf16": []}
    for r in range(rounds + 1):
        order = ("none", "bf16") if r % 2 == 0 else ("bf16", "none")
        for mode in order:
            t = _timed(lambda mode=mode: step(mode))
            if r > 0:  # round 0 warms up
                times[mode].append(t)
    out = {}
    for kind, k in (("wall", 0), ("cpu", 1)):
        fp32 = [t[k] for t in times["none"]]
        bf16 = [t[k] for t in times["bf16"]]
        out[kind] = {"fp32_median_s": statistics.median(fp32), "bf16_median_s": statistics.median(bf16),
                     "bf16_over_fp32": statistics.median(bf16) / statistics.median(fp32),
                     "bf16_over_fp32_same_round": statistics.median(b / f for b, f in zip(bf16, fp32))}
    return out


def main(argv=None) -> dict:
    from cola_opt.llm.precision import precision_facts, resolve_autocast

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="measured rounds (one step of each path per round)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batch", type=int, default=8, help="WSC training examples per LoRA step")
    parser.add_argument("--model", default="smollm2-135m", help="built-in model or model folder")
    parser.add_argument("--data-dir", default=None, help="SuperGLUE folder (default: ../shared/data)")
    parser.add_argument("--out", default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    facts = precision_facts("cpu")
    report = {"machine": {**facts, "auto_resolves_to": resolve_autocast("auto", "cpu"), "threads": args.threads,
                          "torch": torch.__version__}, "rounds": args.rounds}
    print(json.dumps(report["machine"]))
    for name, build in (("linear", _linear_step), ("lora_step", _lora_step)):
        step, what = build(args)
        res = _measure(step, args.rounds)
        report[name] = {"what": what, **res}
        w, c = res["wall"], res["cpu"]
        print(f"{what}: fp32 {w['fp32_median_s']:.3f} s, bf16 {w['bf16_median_s']:.3f} s wall "
              f"(bf16/fp32 {w['bf16_over_fp32']:.2f}, same-round {w['bf16_over_fp32_same_round']:.2f}); "
              f"CPU {c['fp32_median_s']:.3f} s vs {c['bf16_median_s']:.3f} s (bf16/fp32 {c['bf16_over_fp32']:.2f})",
              flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
