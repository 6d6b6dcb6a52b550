"""The paper's experiment suite: COLA vs LoRA on SST-2 and SuperGLUE, over seeds.

The same as ``cola-opt grid`` (see ``cola_opt/llm/grid.py``): every option of
``cola-opt grid --help`` works here. Resumable: run the same command again after an
interruption and finished runs are skipped. Example (the CPU run of docs/results.md)::

    python experiments/superglue.py --tasks sst2,cb,rte --seeds 3 --out runs/suite
"""

import sys
from pathlib import Path

try:
    from cola_opt.llm.cli import main
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cola_opt.llm.cli import main

if __name__ == "__main__":
    sys.exit(main(["grid", *sys.argv[1:]]))
