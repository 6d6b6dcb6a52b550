"""Prompt lengths of every task's release files, in tokens of a model's tokenizer: what ``--max-length`` cuts.

For each record of each split, the length the scorer sees: the prompt's tokens (with
the tokenizer's BOS) plus the longest candidate's (one token for every verbalizer with
SmolLM2). Prints the median, 95th and 99th percentile, the maximum, and the share of
records that ``--max-length`` 256 and 512 would cut, per task and split
(docs/tasks.md holds the table for SmolLM2-135M).

    python benchmarks/prompt_lengths.py --model smollm2-135m --data-dir ../shared/data
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv=None) -> None:
    from transformers import AutoTokenizer

    from cola_opt.llm.models import resolve_model_dir
    from cola_opt.llm.scoring import Truncation, encode_examples
    from cola_opt.llm.tasks import TASKS, read_split, resolve_data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="built-in model, model folder or hub id")
    parser.add_argument("--data-dir", default="../shared/data", help="folder with super_glue/ and glue/")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma separated")
    args = parser.parse_args(argv)
    tok = AutoTokenizer.from_pretrained(resolve_model_dir(args.model))
    for name in args.tasks.split(","):
        task = TASKS[name]
        try:
            root = resolve_data_dir(task, args.data_dir)
        except FileNotFoundError as e:
            print(f"{name}: {e}")
            continue
        for split in ("train", "val"):
            examples = [task.example(r) for r in read_split(task, split, root)]
            lengths = []
            for e in examples:  # the scorer's own encoding, uncut (a limit no prompt reaches)
                counted = Truncation(10**9)
                encode_examples(tok, [e], 10**9, counted)
                lengths.append(counted.longest)
            n = np.array(lengths)
            print(f"{name:8s} {split:5s} records {len(n):6d}  median {int(np.median(n)):4d}  "
                  f"p95 {int(np.percentile(n, 95)):4d}  p99 {int(np.percentile(n, 99)):4d}  max {n.max():4d}  "
                  f"cut at 256: {np.mean(n > 256) * 100:5.1f}%  at 512: {np.mean(n > 512) * 100:5.2f}%", flush=True)


if __name__ == "__main__":
    main()
