"""The paper's protocol across tasks (issue 12): one report from the per-task grid folders, beside the paper's gains.

Reads ``ROOT/TASK/grid.json`` and ``runs.jsonl`` of every task folder under ``ROOT``
(``experiments/paper_protocol.sh`` writes them), trains nothing, and writes
``ROOT/report.md``: per task the majority class, zero-shot and every trained method
(test accuracy, mean ± std over the seeds done, ``(n=k)`` while seeds are missing), the
LRs chosen on dev, and each COLA-type method against LoRA (paired over seeds: the
difference, wins, the paired t-test and the paired bootstrap of
:func:`cola_opt.llm.report.paired_tests`) next to the gain the paper states for that task.
A task whose LR search is not finished is listed with its count of finished runs; an LR search
whose every run is at or below the dev majority class is named
(:func:`cola_opt.llm.report.blind_lr_choices`).

    python experiments/paper_report.py runs/paper
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cola_opt.atomic import atomic_write
from cola_opt.llm.grid import GridDraws, load_folder
from cola_opt.llm.grid_plan import main_runs, search_runs
from cola_opt.llm.report import (
    TASK_NAMES,
    blind_lr_choices,
    cell_values,
    mean_std,
    method_label,
    paired_tests,
    tests_table,
)

# COLA - LoRA in test accuracy points, as the paper states them (arXiv 2401.04151; ../shared/DESIGN.md).
# The paper gives no other per-task figure in its text; it states that COLA beats LoRA on every task.
PAPER_GAINS = {"wsc": {"OPT-1.3B": 3.66}, "boolq": {"OPT-1.3B": 1.38},
               "rte": {"OPT-1.3B": 1.66, "Llama-2-7B": round(85.70 - 82.09, 2)}}
PAPER_MODELS = ("OPT-1.3B", "Llama-2-7B")
TASK_ORDER = ("sst2", "cb", "rte", "wsc", "boolq", "wic", "multirc")


def _task_folders(root: Path) -> list[Path]:
    found = [p for p in root.iterdir() if (p / "grid.json").is_file()]
    return sorted(found, key=lambda p: (TASK_ORDER.index(p.name) if p.name in TASK_ORDER else len(TASK_ORDER), p.name))


def _paper_gain(model: str):
    def cell(test: dict) -> str:
        gain = PAPER_GAINS.get(test["task"], {}).get(model)
        return "> 0 (no figure)" if gain is None else f"{gain:+.2f}"
    return cell


def _with_dev_majority(grid, records: list[dict]) -> list[dict]:
    """The records, each seed-0 one without ``dev_majority`` (written before it was recorded) given it from a
    redraw of its examples (the draw is a function of task and seed); a record stays without it when the
    data is not under ``grid.base.data_dir`` or the redraw's fingerprint is not the record's."""
    draws = GridDraws(grid.base)
    out = []
    for rec in records:
        if "dev_majority" not in rec and rec.get("seed") == 0 and rec.get("data_fingerprint"):
            try:
                splits = draws(rec["task"], 0)
            except FileNotFoundError:
                splits = None
            if splits is not None and splits.fingerprint() == rec["data_fingerprint"]:
                rec = {**rec, "dev_majority": splits.majority_accuracy("dev")}
        out.append(rec)
    return out


def paper_report(root: str | Path) -> str:
    """Write ``root/report.md`` and return its text.

    Raises:
        FileNotFoundError: ``root`` holds no task folder with a ``grid.json``.
        ValueError: a folder's grid has more than one task (the protocol runs one grid per task).
    """
    root = Path(root)
    folders = _task_folders(root) if root.is_dir() else []
    if not folders:
        raise FileNotFoundError(f"no task folder with a grid.json under {root}")
    loaded = [load_folder(f) for f in folders]
    for folder, (grid, _, _) in zip(folders, loaded):
        if len(grid.tasks) != 1:
            raise ValueError(f"{folder} is a grid of tasks {list(grid.tasks)}: this report reads one task per folder "
                             "(experiments/paper_protocol.sh writes them so)")
    methods = list(dict.fromkeys(m for grid, _, _ in loaded for m in grid.trained_methods))
    rank = loaded[0][0].base.rank
    acc = ["| task | test n | main runs done | majority class | zero-shot | "
           + " | ".join(method_label(m, rank) for m in methods) + " |", "|---" * (5 + len(methods)) + "|"]
    tests, pending, blind = [], [], []
    for grid, records, chosen in loaded:
        task = grid.tasks[0]
        blind += blind_lr_choices(grid, _with_dev_majority(grid, records))
        if chosen is None:
            ids = {r["run_id"] for r in records}
            search = search_runs(grid)
            pending.append(f"- {TASK_NAMES.get(task, task)}: LR search {sum(r.run_id in ids for r in search)} of "
                           f"{len(search)} runs done; no row yet.")
            continue
        cells = cell_values(grid, records, chosen)
        done = {r["run_id"] for r in records if r.get("error") is None}
        runs = main_runs(grid, chosen)
        test_n = next((r["counts"]["test"] for r in records if r.get("counts")), "?")
        shown = [mean_std(list(cells.get((task, m), {}).values()), grid.seeds) + f" [{chosen[(task, m)]:g}]"
                 if m in grid.methods else "—" for m in methods]
        acc.append(f"| {TASK_NAMES.get(task, task)} | {test_n} | {sum(r.run_id in done for r in runs)} of {len(runs)} | "
                   f"{mean_std(list(cells.get((task, 'majority class'), {}).values()))} | "
                   f"{mean_std(list(cells.get((task, 'zero-shot'), {}).values()))} | " + " | ".join(shown) + " |")
        tests += paired_tests(grid, records, chosen)
    extra = {f"paper, {m}": _paper_gain(m) for m in PAPER_MODELS}
    text = "\n\n".join([
        "Test accuracy (%), mean ± std over the seeds done (`(n=k)`: k seeds so far); [the LR chosen on dev at seed 0].",
        "\n".join(acc),
        "COLA-type methods against LoRA (same seed = same data draw), beside the paper's stated gain of COLA over LoRA:",
        tests_table(tests, rank, extra) if tests else "(no COLA-vs-LoRA pairs yet)", *pending,
        *(["LR searches that learned nothing measurable on dev (seed 0):", "\n".join(blind)] if blind else [])]) + "\n"
    atomic_write(root / "report.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return text


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python experiments/paper_report.py ROOT   (the folder of the per-task grid folders)",
              file=sys.stderr)
        return 2
    try:
        print(paper_report(argv[0]), end="")
    except (FileNotFoundError, ValueError) as e:
        print(f"paper_report: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
