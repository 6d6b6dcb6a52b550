"""The ``cola-opt`` command line.

``cola-opt finetune`` runs one method; ``cola-opt compare`` runs zero-shot, LoRA and
COLA on the same data and seed and prints a table; ``cola-opt grid`` runs the paper's
suite (tasks x methods x seeds), resumably (:mod:`cola_opt.llm.grid`). Options map one to one onto
:class:`cola_opt.llm.config.FinetuneConfig`; ``--help`` shows each default and unit.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
import warnings
from pathlib import Path

__all__ = ["build_parser", "config_from_args", "main"]

# a value that argparse would take for an option: -1e-3, -.5, -2, -inf, -1,2 (a list)
_NEGATIVE = re.compile(r"-(\d|\.\d)[\d.eE+\-,]*|-inf(inity)?|-nan", re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (and a pointer to ``--help``), not a usage block."""

    def error(self, message: str):
        self.exit(2, f"cola-opt: error: {message} (see: {self.prog} --help)\n")


class _Given(argparse.Action):
    """Stores the value and notes that the option was given (``namespace.given``): a default is not a choice."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        given = set(getattr(namespace, "given", ()))
        given.add(self.dest)
        namespace.given = given


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--lr -1e-3`` -> ``--lr=-1e-3``, so that argparse takes the value as a value and the value check names it."""
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--") and "=" not in tok and i + 1 < len(argv) and _NEGATIVE.fullmatch(argv[i + 1]):
            out.append(f"{tok}={argv[i + 1]}")
            i += 2
        else:
            out.append(tok)
            i += 1
    return out


def _csv(kind):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{text!r} is an empty list")
        try:
            return tuple(kind(t) for t in items)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__}") from None

    return parse


def _method_lrs(text: str) -> dict[str, tuple[float, ...]]:
    from .grid_plan import parse_method_lrs

    try:
        return parse_method_lrs(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true/false)")


def _int_or_str(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def _optional(kind):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _add_config_options(parser: argparse.ArgumentParser, skip=lambda f: False) -> None:
    """One option per :class:`FinetuneConfig` field (but those ``skip(field)`` is true for), typed by its hint."""
    from .config import FinetuneConfig

    hints = typing.get_type_hints(FinetuneConfig)
    for f in dataclasses.fields(FinetuneConfig):
        if skip(f):
            continue
        hint = hints[f.name]
        text = str(hint)
        if "tuple" in text:
            kind = _csv(int if "int" in text else str)
        elif hint is bool:
            kind = _bool
        elif text == "int | str":  # a count or a word (--threads 2, --threads auto); the config's check names a bad one
            kind = _int_or_str
        else:
            base = {"int": int, "float": float, "str": str}
            kind = next((v for k, v in base.items() if k in text), str)
            if "None" in text:
                kind = _optional(kind)
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind,
            default=default,
            action=_Given,
            help=f"{f.metadata['help']} (default: {shown})",
        )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its ``finetune``, ``compare`` and ``grid`` sub-commands."""
    parser = _Parser(prog="cola-opt", description="Chain of LoRA (COLA) fine-tuning and checks.")
    sub = parser.add_subparsers(dest="command", required=True)
    ft = sub.add_parser("finetune", help="fine-tune with one method (zero-shot, lora, cola, relora, galore or full)")
    _add_config_options(ft)
    cmp_ = sub.add_parser("compare", help="several methods (default: zero-shot, LoRA and COLA) on the same data and "
                          "seed, as a table")
    _add_config_options(cmp_, skip=lambda f: f.name == "method")
    cmp_.add_argument("--methods", type=_csv(str), default=("zero-shot", "lora", "cola"),
                      help="methods, comma separated: zero-shot, lora, cola, relora, galore, full "
                      "(default: zero-shot,lora,cola)")
    _add_grid_parser(sub)
    return parser


def _add_grid_parser(sub) -> None:
    from .grid_plan import ALL_TASKS, DEFAULT_METHODS

    gr = sub.add_parser(
        "grid",
        help="the paper's suite: tasks x methods x seeds (x LRs), resumable, with a table and a plot",
        description="Run a grid of fine-tuning runs; one JSON line per finished run in <out>/runs.jsonl. "
        "Run the same command again to resume: finished runs are skipped.",
    )
    _add_config_options(gr, skip=lambda f: f.metadata["grid"] != "shared")  # set per run, or not a grid option
    add = gr.add_argument
    add("--tasks", type=_csv(str), default=ALL_TASKS, help=f"tasks, comma separated (default: {','.join(ALL_TASKS)})")
    add("--methods", type=_csv(str), default=DEFAULT_METHODS,
        help="zero-shot, full, lora, cola<N> (N links), relora<N> (N links, ReLoRA's settings), galore, "
        "stepdown-r<K> (2 links, rank --rank then K); -r<R> after lora, cola<N>, relora<N> or galore sets that "
        f"method's rank (alpha = R * lora_alpha / rank); comma separated (default: {','.join(DEFAULT_METHODS)})")
    add("--seeds", type=int, default=5, help="number of seeds; seeds are 0..N-1 (default: 5)")
    add("--lrs", type=_csv(float), default=(5e-4,),
        help="learning rates; several are chosen among on dev at seed 0 (the paper's set: 1e-3,8e-4,5e-4,1e-4,5e-5) "
        "(default: 0.0005)")
    add("--method-lrs", type=_method_lrs, default={},
        help="a method's own learning rates in place of --lrs, e.g. 'full=1e-5,3e-5,1e-4;galore-r8=3e-4,1e-3' "
        "(with --lr-select method) (default: none)")
    add("--lr-select", default="method", help="choose the LR per method, or per task with LoRA: method or task "
        "(default: method)")
    add("--stepdown-at", type=float, default=0.6,
        help="fraction of the optimizer steps trained by the first link of stepdown-r<K> (default: 0.6, the paper's 3 of 5 epochs)")
    add("--out", default="runs/grid", help="output folder: runs.jsonl, table.md, plot.png (default: runs/grid)")
    add("--progress", type=_bool, default=True, help="show the grid's progress bar (default: True)")
    add("--jobs", type=int, default=1, help="cells run at once, each in a process of its own with 1 thread on a "
        "2-core machine (--threads auto: the cores shared evenly); the records and table are a serial grid's; runs "
        "per hour: benchmarks/threads.py, docs/benchmarks.md (default: 1)")


def config_from_args(args: argparse.Namespace):
    """The :class:`FinetuneConfig` that parsed arguments describe.

    Raises:
        ValueError: ``finetune`` with a method that ties no knots and an explicit
            ``--chain-length`` above 1 (it would be ignored; the run records 1).
    """
    from .config import FinetuneConfig
    from .methods import METHODS

    names = {f.name for f in dataclasses.fields(FinetuneConfig)}
    cfg = FinetuneConfig(**{k: v for k, v in vars(args).items() if k in names})
    method = METHODS.get(cfg.method)  # an unknown name is refused by validate()
    if (args.command == "finetune" and "chain_length" in getattr(args, "given", ()) and cfg.chain_length != 1
            and method is not None and not method.knots):
        raise ValueError(f"chain_length {cfg.chain_length!r} needs method cola: method {cfg.method!r} ties no knots "
                         "(lora and full train one link); leave --chain-length out")
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cola-opt``; returns the exit status (2 for bad input)."""
    args = build_parser().parse_args(_join_negative_values(sys.argv[1:] if argv is None else list(argv)))
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices from transformers/peft
    from .compare import compare
    from .metrics import result_line
    from .models import ModelLoadError
    from .notify import warn
    from .precision import slow_precision
    from .trainer import finetune

    try:
        cfg = config_from_args(args)
        if args.command == "grid":  # the grid sets the task per run; its options are checked with its first task's
            cfg = cfg.replace(task=args.tasks[0])
        cfg.validate()
        slow = slow_precision(cfg.autocast, cfg.dtype, cfg.device)
        if slow:
            warn(slow)
        if args.command == "grid":
            from .grid import GridConfig, run_grid

            grid = GridConfig(base=cfg, tasks=args.tasks, methods=args.methods, seeds=args.seeds, lrs=args.lrs,
                              lr_select=args.lr_select, method_lrs=args.method_lrs, stepdown_at=args.stepdown_at, out=args.out,
                              progress=args.progress, jobs=args.jobs)
            run_grid(grid)
            print((Path(grid.out) / "table.md").read_text())
        elif args.command == "compare":
            compare(cfg, methods=args.methods)
        else:
            print(result_line(cfg, finetune(cfg)))
    except (ValueError, FileNotFoundError, ModelLoadError, RuntimeError) as e:
        print(f"cola-opt: error: {e}", file=sys.stderr)
        return 2
    except (FloatingPointError, OSError) as e:  # a non-finite stop, or a disk that failed mid-run
        print(f"cola-opt: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"cola-opt: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
