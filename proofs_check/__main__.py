"""``python -m proofs_check [--quick] [--claims C1,C3] [--broken NAME]``: run the claim checks."""

from __future__ import annotations

import argparse
import sys
import time
import warnings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proofs_check", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer instances (a smoke run)")
    parser.add_argument("--claims", default="", help="comma-separated subset, e.g. C1,C4 (default: all)")
    parser.add_argument("--broken", default=None,
                        help="run this broken variant in every selected claim that has it (expect FAIL)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the runs are small)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from . import CLAIMS

    names = [c.strip().upper() for c in args.claims.split(",") if c.strip()] or list(CLAIMS)
    unknown = [c for c in names if c not in CLAIMS]
    if unknown:
        parser.error(f"unknown claims {unknown}; choose from {list(CLAIMS)}")
    t0 = time.perf_counter()
    results = []
    for name in names:
        module = CLAIMS[name]
        if args.broken is not None and args.broken not in module.BROKEN:
            continue
        results.append(module.run(broken=args.broken, quick=args.quick))
    width = max(len(r.claim) for r in results) if results else 10
    header = f"{'claim':<5}  {'statement':<{width}}  {'instances':>9}  {'worst ratio':>11}  {'violations':>10}  {'seconds':>7}  verdict"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.name:<5}  {r.claim:<{width}}  {r.instances:>9d}  {r.worst_ratio:>11.4g}  {r.violations:>10d}  "
              f"{r.seconds:>7.1f}  {r.verdict}")
        for note in r.notes if not r.passed else []:
            print(f"       {note}")
    failed = [r.name for r in results if not r.passed]
    print(f"\n{len(results)} claims, {sum(r.instances for r in results)} instances, "
          f"{time.perf_counter() - t0:.1f} s; " + (f"VIOLATED: {', '.join(failed)}" if failed else "all bounds hold"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
