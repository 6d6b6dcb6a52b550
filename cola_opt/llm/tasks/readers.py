"""Readers of the release file formats: one record (a dict) per example.

- :func:`read_jsonl`: one JSON object per line (the SuperGLUE release);
- :func:`read_glue_tsv`: GLUE's TSV with the header ``sentence<TAB>label`` (SST-2);
- :func:`read_multirc`: MultiRC's nested records (passage -> questions -> answers),
  one record per answer option.

Each raises a ``ValueError`` naming the file (and line) of a malformed entry, and a
``FileNotFoundError`` naming a missing file.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

__all__ = ["multirc_text", "read_glue_tsv", "read_jsonl", "read_jsonl_lines", "read_multirc"]


def read_jsonl(path: Path) -> list[dict]:
    """Records of a jsonl file; a ValueError naming the file and line on a bad line."""
    return [rec for _, rec in read_jsonl_lines(path)]


def read_jsonl_lines(path: Path) -> list[tuple[int, dict]]:
    """``(line number, record)`` of each non-blank line of a jsonl file (1-based line numbers).

    Raises:
        ValueError: naming the file and line of a line that is not a JSON object, or the
            file and byte offset of text that is not UTF-8.
    """
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not valid JSON ({e.msg}, column {e.colno})") from None
                if not isinstance(rec, dict):
                    raise ValueError(f"{path}:{number}: expected a JSON object, got {type(rec).__name__}")
                records.append((number, rec))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return records



def read_glue_tsv(folder: Path, stem: str) -> list[dict]:
    """GLUE TSV with header ``sentence\tlabel``; no quoting (the release has bare quotes)."""
    path = folder / f"{stem}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: expected the GLUE {folder.name} layout ({stem}.tsv)")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or rows[0][:2] != ["sentence", "label"]:
        raise ValueError(f"{path}: header {rows[0] if rows else []!r} is not ['sentence', 'label']")
    out = []
    for i, row in enumerate(rows[1:]):
        if len(row) != 2 or row[1] not in ("0", "1"):
            raise ValueError(f"{path}, line {i + 2}: expected 'sentence<TAB>0|1', got {row!r}")
        out.append({"sentence": row[0], "label": int(row[1]), "idx": i})
    return out



def multirc_text(html: str) -> str:
    """The passage without the release's ``<b>Sent k: </b>`` markers and ``<br>`` breaks."""
    text = re.sub(r"<b>Sent \d+: </b>", "", html)
    return re.sub(r"\s*<br\s*/?>\s*", " ", text).strip()



def read_multirc(folder: Path, stem: str) -> list[dict]:
    """One record per answer option, from the release's nested records (passage -> questions -> answers)."""
    path = folder / f"{stem}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: expected the SuperGLUE MultiRC layout ({stem}.jsonl)")
    out = []
    for rec in read_jsonl(path):
        paragraph = multirc_text(rec["passage"]["text"])
        for q in rec["passage"]["questions"]:
            for a in q["answers"]:
                idx = {"paragraph": rec["idx"], "question": q["idx"], "answer": a["idx"]}
                out.append({"paragraph": paragraph, "question": q["question"], "answer": a["text"],
                            "label": a.get("label"), "idx": idx})
    return out

