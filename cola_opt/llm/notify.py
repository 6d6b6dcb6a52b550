"""Warnings of a run, one line each on stderr: ``cola-opt: warning: ...``.

What the tool says it did differently from what was asked (a capped count, prompts cut
to ``max_length``, a slow precision forced) is printed once, here, and recorded in
``results.json`` by the code that found it.
"""

from __future__ import annotations

import sys

__all__ = ["warn"]


def warn(text: str) -> None:
    """Print ``cola-opt: warning: <text>`` on stderr (one line; ``text`` has no newline)."""
    print(f"cola-opt: warning: {text}", file=sys.stderr, flush=True)
