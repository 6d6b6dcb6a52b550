"""``python -m proofs_check [--quick] [--claims C1,C3] [--broken NAME] [--mutations]``: run the claim checks.

Prints one row per claim (its bound's worst ratio) and, under it, one row per
every-iterate invariant it checked; exits 1 on any violation. ``--mutations`` instead
runs the claims (quick instances) under each product mutation of
:mod:`proofs_check.mutations` and prints which checks caught it; it exits 1 if any
mutation survives.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings


def _table(results) -> None:
    width = max([len(r.claim) for r in results] + [10])
    header = (f"{'claim':<5}  {'statement / invariant':<{width}}  {'instances':>9}  {'worst ratio':>11}  "
              f"{'violations':>10}  {'seconds':>7}  verdict")
    print(header)
    print(f"{'':<5}  {'(under a claim: each invariant, with the number of comparisons)':<{width}}")
    print("-" * len(header))
    for r in results:
        main = r.checks.get("bound")
        worst = main.worst if main is not None else r.worst_ratio
        print(f"{r.name:<5}  {r.claim:<{width}}  {r.instances:>9d}  {worst:>11.4g}  {r.violations:>10d}  "
              f"{r.seconds:>7.1f}  {r.verdict}")
        for name, stat in r.checks.items():
            if name != "bound":
                print(f"{'':<5}    {name:<{width - 2}}  {stat.count:>9d}  {stat.worst:>11.4g}  {stat.violations:>10d}")
        for line in r.info:
            print(f"{'':<5}    note: {line}")
        for note in r.notes if not r.passed else []:
            print(f"{'':<5}    VIOLATION {note}")


def _mutations(claims: dict, quick: bool) -> int:
    from .mutations import MUTATIONS, run_mutation

    survived = []
    print(f"{'mutation':<18}  {'what':<58}  caught by")
    print("-" * 120)
    for m in MUTATIONS:
        t0 = time.perf_counter()
        caught = run_mutation(m, claims, quick=quick)
        found = "; ".join(f"{c}: {', '.join(checks)}" for c, checks in caught.items()) or "NOT CAUGHT"
        print(f"{m.name:<18}  {m.what:<58}  {found}  ({time.perf_counter() - t0:.1f} s)", flush=True)
        if not caught:
            survived.append(m.name)
    print(f"\n{len(MUTATIONS) - len(survived)} of {len(MUTATIONS)} mutations caught"
          + (f"; SURVIVED: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proofs_check", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer instances (a smoke run)")
    parser.add_argument("--claims", default="", help="comma-separated subset, e.g. C1,C4 (default: all)")
    parser.add_argument("--broken", default=None,
                        help="run this broken variant in every selected claim that has it (expect FAIL)")
    parser.add_argument("--mutations", action="store_true",
                        help="run the selected claims (quick instances) under each product mutation")
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
    if args.mutations:
        return _mutations({n: CLAIMS[n] for n in names}, quick=True)
    t0 = time.perf_counter()
    results = []
    for name in names:
        module = CLAIMS[name]
        if args.broken is not None and args.broken not in module.BROKEN:
            continue
        results.append(module.run(broken=args.broken, quick=args.quick))
    _table(results)
    failed = [r.name for r in results if not r.passed]
    print(f"\n{len(results)} claims, {sum(r.instances for r in results)} instances, "
          f"{time.perf_counter() - t0:.1f} s; " + (f"VIOLATED: {', '.join(failed)}" if failed else "all bounds hold"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
