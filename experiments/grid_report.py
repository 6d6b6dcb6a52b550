"""Rewrite the report (table.md, plot.png, summary.json) of grid folders from their records alone.

For a grid that is still running or was stopped: every finished cell is in the table,
missing seeds show as ``(n=k)``; a capacity study folder (experiments/capacity.py) also
gets its own table. Reads and writes nothing else; trains nothing.

    python experiments/grid_report.py runs/paper/cb runs/capacity/memorize
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cola_opt.llm.grid import report_folder


def main(argv: list[str]) -> int:
    for out in map(Path, argv):
        grid = out / "grid" if (out / "grid" / "grid.json").is_file() else out
        table = report_folder(grid)
        if table is None:
            print(f"{grid}: the LR search is not finished; no table yet")
            continue
        if grid != out:
            from capacity_report import write_capacity_report

            table = write_capacity_report(out)
        print(f"{out}:\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
