"""The capacity study: where a chain of LoRA links pays, and where it does not (issue 11).

A rank-r link can reach no more than the best rank-r update; a chain of k links can reach
rank k r (docs/theory.md). This study looks for a workload where that binds, on a real
pretrained model, and measures what each method reaches at the same number of optimizer
steps and tokens:

- ``memorize``: N random key-value pairs, ``"Key: <k>\\nValue:" -> " <v>"``, keys and values
  random hex strings drawn from a seed (MoRA-style memorisation, Jiang et al. 2024). The
  metric is exact match of the greedy completion for every trained key; dev and test are
  the trained pairs themselves (what is measured is memorisation).
- ``cpt``: continued pretraining on the Python standard library's own source (on every
  machine that runs this toolkit; no one here wrote it), split by file: the metric is the
  mean token loss on files never trained on (Biderman et al. 2024 measure LoRA on code).

Every method runs through the one trainer and the grid runner (``cola_opt.llm.grid``): LR
chosen per method at seed 0 on dev from ``--lrs``, then ``--seeds`` seeds at that LR; each
record carries ``rank(W - W0)`` per adapted matrix after every link (``--update-rank``),
the dev curve, trainable parameters and step times. ``--cost`` measures peak RSS and step
time per method in a fresh process each (``os.wait4``), side by side.

    python experiments/capacity.py memorize --out runs/capacity/memorize
    python experiments/capacity.py cpt --out runs/capacity/cpt
    python experiments/capacity.py report --out runs/capacity/memorize   # table.md, curves.png, summary.json

Run it niced, with one thread (``OMP_NUM_THREADS=1``); a killed study resumes where it
stopped (the grid skips finished cells).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# the list; the first six are its priority when time is short
METHODS = ("lora-r8", "lora-r64", "cola4-r8", "cola8-r1", "full", "galore-r8",
           "lora-r1", "cola2-r8", "cola8-r8", "relora4-r8")
BASELINE = "lora-r8"
METHOD_LRS = "full=3e-5,1e-4,3e-4;galore-r8=1e-3,3e-3,1e-2"


# ----------------------------------------------------------------------------- workloads
def memorize_data(out: Path, pairs: int, hex_digits: int, seed: int) -> Path:
    """``out/pairs.jsonl``: ``pairs`` prompt/completion records of random hex keys and values (distinct keys)."""
    rng = random.Random(seed)
    keys: set[str] = set()
    rows = []
    while len(rows) < pairs:
        k = f"{rng.getrandbits(4 * hex_digits):0{hex_digits}x}"
        v = f"{rng.getrandbits(4 * hex_digits):0{hex_digits}x}"
        if k not in keys:
            keys.add(k)
            rows.append({"prompt": f"Key: {k}\nValue:", "completion": f" {v}"})
    out.mkdir(parents=True, exist_ok=True)
    path = out / "pairs.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def cpt_data(out: Path, every: int = 10) -> dict[str, Path]:
    """The standard library's top-level ``*.py`` files, split by file: every ``every``-th to test, the next to dev.

    Files are taken in sorted order of name, so the split is the same on every machine with
    the same Python; ``manifest.json`` records the Python version and each file's sha256.
    """
    src = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in src.glob("*.py") if p.is_file())
    folders = {name: out / name for name in ("train", "dev", "test")}
    manifest = {"python": sys.version.split()[0], "source": str(src), "files": {}}
    for i, p in enumerate(files):
        split = "test" if i % every == 0 else "dev" if i % every == 1 else "train"
        dest = folders[split] / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.is_file():
            shutil.copyfile(p, dest)
        manifest["files"][p.name] = {"split": split, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return folders


# ----------------------------------------------------------------------------- the grid
def base_config(args, data: dict):
    """The shared settings of every cell (a :class:`cola_opt.llm.config.FinetuneConfig`)."""
    from cola_opt.llm.config import FinetuneConfig

    common = dict(model=args.model, max_steps=args.steps, batch_size=args.batch_size, rank=8,
                  target_modules=tuple(args.targets.split(",")), update_rank=True, progress=False,
                  max_length=args.max_length, autocast=args.autocast, eval_every=args.eval_every,
                  threads=int(args.threads) if args.threads.isdigit() else args.threads)
    if args.workload == "memorize":
        return FinetuneConfig(task="completion", train_file=str(data["pairs"]), dev_file=str(data["pairs"]),
                              test_file=str(data["pairs"]), n_train=args.pairs, n_dev=args.dev_pairs,
                              n_test=args.pairs, **common)
    return FinetuneConfig(task="text", train_file=str(data["train"]), dev_file=str(data["dev"]),
                          test_file=str(data["test"]), text_glob="*.py", n_train=100_000, n_dev=100_000,
                          n_test=100_000, **common)


def run_study(args) -> list[dict]:
    """Write the workload, then run (or resume) the grid; return its records."""
    from cola_opt.llm.grid import GridConfig, run_grid
    from cola_opt.llm.grid_plan import parse_method_lrs

    out = Path(args.out)
    if args.workload == "memorize":
        data = {"pairs": memorize_data(out / "data", args.pairs, args.hex_digits, args.data_seed)}
    else:
        data = cpt_data(out / "data")
    methods = tuple(args.methods.split(","))
    grid = GridConfig(base=base_config(args, data), tasks=(base_config(args, data).task,), methods=methods, seeds=args.seeds,
                      lrs=tuple(float(x) for x in args.lrs.split(",")), lr_select="method",
                      method_lrs={m: v for m, v in parse_method_lrs(args.method_lrs).items() if m in methods},
                      out=str(out / "grid"), jobs=args.jobs)
    return run_grid(grid)


# ----------------------------------------------------------------------------- cost
def measure_cost(args, methods: list[str], steps: int = 12) -> dict[str, dict]:
    """Peak RSS (MB) and median step time (s) per method, each in a fresh process, one after the other.

    Each process runs ``steps`` optimizer steps of the study's own shapes (``finetune``
    with ``--max-steps``); its peak RSS is the child's ``ru_maxrss`` from ``os.wait4``.
    """
    from cola_opt.llm.grid_plan import method_changes

    out = Path(args.out) / "cost"
    data = {"pairs": memorize_data(Path(args.out) / "data", args.pairs, args.hex_digits, args.data_seed)} \
        if args.workload == "memorize" else cpt_data(Path(args.out) / "data")
    base = base_config(args, data).replace(max_steps=steps, n_dev=0, update_rank=False)
    found = {}
    for m in methods:
        changes = method_changes(m, 8)
        cfg = base.replace(output_dir=str(out / m), **changes)
        cfg_json = out / f"{m}.json"
        cfg_json.parent.mkdir(parents=True, exist_ok=True)
        cfg_json.write_text(json.dumps(cfg.to_dict()))
        code = ("import json,sys; from cola_opt.llm.config import FinetuneConfig; from cola_opt.llm.trainer import "
                "finetune; d=json.load(open(sys.argv[1])); d={k: tuple(v) if isinstance(v, list) else v "
                "for k, v in d.items()}; r=finetune(FinetuneConfig(**d)); "
                "print(json.dumps({'steps': r['step_seconds'], 'trainable': r['trainable_parameters']}))")
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code, str(cfg_json)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        report = json.loads(proc.stdout.read().strip().splitlines()[-1]) if status == 0 else None
        steps_s = sorted(report["steps"][2:]) if report else []  # the first two steps warm up
        found[m] = {"peak_rss_mb": usage.ru_maxrss / 1024, "wall_seconds": time.perf_counter() - t0,
                    "step_seconds_median": steps_s[len(steps_s) // 2] if steps_s else None,
                    "trainable_parameters": report["trainable"] if report else None, "status": status}
        print(f"[cost] {m}: {found[m]}", flush=True)
    (Path(args.out) / "cost.json").write_text(json.dumps(found, indent=1) + "\n")
    return found


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("workload", choices=("memorize", "cpt", "report", "cost"))
    ap.add_argument("--out", required=True, help="study folder (data, grid, report)")
    ap.add_argument("--kind", choices=("memorize", "cpt"), default=None, help="for report/cost: the workload")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=",".join(METHODS), help="grid method names (cola_opt.llm.methods)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="LR grid of the LoRA methods (LoRA, COLA, ReLoRA), "
                    "chosen per method on dev at seed 0")
    ap.add_argument("--method-lrs", default=METHOD_LRS, help="the LR grids of the other methods "
                    "(METHOD=LR,LR;...; full fine-tuning and GaLore train on other LR scales)")
    ap.add_argument("--eval-every", type=int, default=25, help="dev evaluation every this many steps (the curve)")
    ap.add_argument("--threads", default="1", help="torch threads per run (run niced, beside other work)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, one process each")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of every run")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--targets", default="q_proj,v_proj", help="target_modules of every method")
    ap.add_argument("--max-length", type=int, default=48, help="tokens per item (memorize) or block (cpt)")
    ap.add_argument("--autocast", default="auto")
    ap.add_argument("--pairs", type=int, default=128, help="memorize: key-value pairs")
    ap.add_argument("--dev-pairs", type=int, default=32, help="memorize: pairs in each dev evaluation (the curve)")
    ap.add_argument("--hex-digits", type=int, default=8, help="memorize: hex digits of a key and of a value")
    ap.add_argument("--data-seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.workload in ("report", "cost"):
        args.action, args.workload = args.workload, args.kind or _kind_of(Path(args.out))
    else:
        args.action = "run"
    return args


def _kind_of(out: Path) -> str:
    return "cpt" if (out / "data" / "manifest.json").is_file() else "memorize"


def main(argv=None) -> None:
    args = parse(argv)
    if args.action == "run":
        run_study(args)
        from capacity_report import write_capacity_report  # beside this script

        write_capacity_report(Path(args.out), baseline=BASELINE)
    elif args.action == "cost":
        measure_cost(args, args.methods.split(","))
    else:
        from capacity_report import write_capacity_report

        print(write_capacity_report(Path(args.out), baseline=BASELINE))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
