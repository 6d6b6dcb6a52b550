#!/bin/bash
# The paper's protocol on SmolLM2-135M (issue 12), one grid per task so that each task's
# table lands as soon as that task is done (runs/paper/TASK/table.md). Niced, one thread:
# it shares the machine with other work. A killed grid resumes where it stopped: run the
# same command again. Finished runs are skipped, and a run killed mid-way continues from its
# last checkpoint (every 50 steps, about 0.1 s each; removed when the run finishes), so a
# session's end costs at most 50 steps of each cell in flight. Estimated here: about 32
# CPU-hours for cb, sst2, wsc and rte (docs/results.md, "The paper's protocol").
#
#   nohup experiments/paper_protocol.sh cb:stepdown-r2,stepdown-r8 sst2 wsc rte > runs/paper.log 2>&1 &
#
# Each argument is TASK or TASK:EXTRA_METHODS (the rank step-down ablation runs on one task).
# JOBS=2 trains two single-thread cells at once (1.76x the runs per hour of one on 2 idle
# cores, docs/benchmarks.md); the records do not depend on it, nor on THREADS (torch threads per
# cell, default 1). MultiRC wants JOBS=1 THREADS=2: one cell peaked at 8.0 GB on its longest
# batch (777 tokens; benchmarks/peak_memory.py), so two may not fit in 24 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
for arg in "$@"; do
  task=${arg%%:*}; extra=""
  [[ $arg == *:* ]] && extra=",${arg#*:}"
  OMP_NUM_THREADS="${THREADS:-1}" nice -n 15 python experiments/superglue.py --model smollm2-135m --data-dir ../shared/data \
    --tasks "$task" --methods "zero-shot,lora,cola2,cola3$extra" --seeds 5 --lrs 1e-3,5e-4,1e-4 --lr-select method \
    --n-train 1000 --n-dev 500 --n-test 1000 --epochs 5 --batch-size 8 --max-length 1024 \
    --dev-each-epoch false --threads "${THREADS:-1}" --checkpoint-every 50 --jobs "${JOBS:-1}" --progress false --out "runs/paper/$task"
done
