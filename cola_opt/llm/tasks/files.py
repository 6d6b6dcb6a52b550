"""Readers of users' data: one :class:`Record` (the fields, and where they came from) per example.

What a source is, by its form:

==============================  ==============================================================
``*.jsonl``, ``*.ndjson``       one JSON object per line (blank lines skipped); errors name
                                ``file:line``
``*.json``                      the same, or one JSON array of objects
``*.csv``, ``*.tsv``            a header row, then one record per row (standard ``csv``:
                                every value the string written, quoted fields may span lines);
                                errors name ``file:line``
``*.parquet``                   HF ``datasets`` (typed columns); errors name ``file row N``
a folder                        one document per file matching the glob (default ``**/*.txt``),
                                in sorted path order, as ``{text_field: <file text>}``
``*.txt``, ``*.md``             one document
``hf:<path>[:<config>][@<split>]``  ``datasets.load_dataset(path, config, split=split or "train")``
                                (for users online)
==============================  ==============================================================

Why not HF ``datasets`` for JSON lines and CSV too (measured, ``datasets`` 5.2.0,
``docs/data.md``): its CSV reader (pandas) turns the strings ``NA``, ``null`` and
``None`` into missing values and ``" 007"`` into ``7.0``, so a user's answers change
silently; its JSON reader (pyarrow) names a bad line by its row within a block, blank
lines not counted, and a field that is a string on one line and a number on another
fails with "Expected object or value" and no line at all. The standard library reads
both exactly and knows the line. Parquet carries its own types, so ``datasets`` reads
it as written (into a temporary cache folder that is removed afterwards: nothing is left
in ``~/.cache``).
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .readers import read_jsonl_lines

__all__ = ["HF_PREFIX", "JSON_SUFFIXES", "TABLE_SUFFIXES", "TEXT_SUFFIXES", "Record", "read_records"]

HF_PREFIX = "hf:"
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
TEXT_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class Record:
    """One record of a user's data.

    Attributes:
        fields: the record's fields (values as read: strings from CSV, JSON types from
            JSON lines, column types from parquet; the file text for a document).
        where: where it came from, for error messages: ``"data/train.jsonl:12"``,
            ``"data/train.parquet row 3"``, ``"corpus/a.txt"``, ``"hf:imdb@train row 5"``.
    """

    fields: dict
    where: str


def read_records(source: str, *, name: str = "train_file", glob: str = "**/*.txt",
                 text_field: str = "text") -> list[Record]:
    """Every record of ``source`` (a file, a folder of text files, or ``hf:<dataset>``), in order.

    Args:
        source: the path or ``hf:`` name (module docstring).
        name: the option it came from (``"train_file"``), for error messages.
        glob: the files of a folder that are documents (``pathlib`` glob, relative to it).
        text_field: the field that holds a document's text.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: an unknown format, a malformed file (naming the file and line, or
            row), text that is not UTF-8 (naming the file and byte).
        RuntimeError: ``datasets`` is not installed (parquet, ``hf:``), or the hub cannot
            serve the dataset.
    """
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"{name} {source!r} must be a path or hf:<dataset>")
    if source.startswith(HF_PREFIX):
        return _read_hub(source, name)
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{name} {source!r} does not exist")
    if path.is_dir():
        return _read_folder(path, glob, text_field, name)
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return _read_json(path)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, "\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix in TEXT_SUFFIXES:
        return [Record({text_field: _read_text(path)}, str(path))]
    known = ", ".join(JSON_SUFFIXES + TABLE_SUFFIXES + TEXT_SUFFIXES)
    raise ValueError(f"{name} {source!r}: unknown format {suffix or '(no suffix)'!r}; use a {known} file, a folder "
                     "of text files, or hf:<dataset>")


def _read_json(path: Path) -> list[Record]:
    """JSON lines, or one JSON array of objects (a ``.json`` file whose first character is ``[``)."""
    if path.suffix.lower() == ".json" and _first_char(path) == "[":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        for i, row in enumerate(rows, 1):
            if not isinstance(row, dict):
                raise ValueError(f"{path} record {i}: expected a JSON object, got {type(row).__name__}")
        return [Record(row, f"{path} record {i}") for i, row in enumerate(rows, 1)]
    return [Record(rec, f"{path}:{line}") for line, rec in read_jsonl_lines(path)]


def _first_char(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(4096).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")[:1]


def _read_csv(path: Path, delimiter: str) -> list[Record]:
    """A header row, then records; every value a string, exactly as written."""
    out = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = reader.fieldnames
            if not header:
                return []
            blank = [i + 1 for i, h in enumerate(header) if not h.strip()]
            if blank or len(set(header)) != len(header):
                raise ValueError(f"{path}:1: the header {header!r} has an empty or repeated column name")
            for row in reader:  # a record ends on reader.line_num; its quoted values may span lines
                start = reader.line_num - sum(v.count("\n") for v in row.values() if isinstance(v, str))
                if None in row or any(v is None for v in row.values()):
                    n = len(header) + len(row.get(None) or []) - sum(v is None for v in row.values())
                    raise ValueError(f"{path}:{start}: {n} values for the {len(header)} columns {header}")
                out.append(Record(dict(row), f"{path}:{start}"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise ValueError(f"{path}: not valid CSV ({e})") from None
    return out


def _datasets(what: str):
    try:
        import datasets
    except ImportError:
        raise RuntimeError(f"{what} needs HF datasets: pip install datasets") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors reach the user as ours, once
    return datasets


def _read_parquet(path: Path) -> list[Record]:
    datasets = _datasets(f"reading {path}")
    with tempfile.TemporaryDirectory(prefix="cola-opt-datasets-") as tmp:  # no cache left behind
        try:
            rows = datasets.Dataset.from_parquet(str(path), cache_dir=tmp, keep_in_memory=True).to_list()
        except (ValueError, OSError, datasets.exceptions.DatasetGenerationError) as e:  # ArrowInvalid is a ValueError
            raise ValueError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
    return [Record(row, f"{path} row {i}") for i, row in enumerate(rows, 1)]


def _read_hub(source: str, name: str) -> list[Record]:
    """``hf:<path>[:<config>][@<split>]`` through ``datasets.load_dataset``."""
    spec = source[len(HF_PREFIX):]
    spec, _, split = spec.partition("@")
    path, _, config = spec.partition(":")
    if not path:
        raise ValueError(f"{name} {source!r} names no dataset; use hf:<path>[:<config>][@<split>]")
    datasets = _datasets(f"{name} {source!r}")
    try:
        rows = datasets.load_dataset(path, config or None, split=split or "train")
    except Exception as e:
        raise RuntimeError(f"{name} {source!r}: HF datasets could not load it ({type(e).__name__}: {e})") from e
    return [Record(dict(row), f"{source} row {i}") for i, row in enumerate(rows, 1)]


def _read_folder(root: Path, glob: str, text_field: str, name: str) -> list[Record]:
    if not isinstance(glob, str) or not glob or os.path.isabs(glob):
        raise ValueError(f"text_glob {glob!r} must be a glob relative to the folder, such as '**/*.txt'")
    files = sorted(p for p in root.glob(glob) if p.is_file())
    if not files:
        raise ValueError(f"{name} {str(root)!r} is a folder with no file matching {glob!r} (--text-glob)")
    return [Record({text_field: _read_text(p)}, str(p)) for p in files]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
