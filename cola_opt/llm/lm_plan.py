"""The pre-flight of a language-model task: encode every split with the model's tokenizer, before any weights load.

:func:`train_items` is what :func:`cola_opt.llm.plan.preflight` asks for the number of
training items (the loop's steps are planned from it): for ``text`` the packed blocks,
for ``completion`` the pairs, each checked to fit ``max_length``. A completion that does
not fit is an error naming its file and line; prompts cut to fit are counted and
reported once, in one warning line. The tokenizer alone is loaded (well under a second
for a local model); the encoded counts are remembered per data fingerprint and setting,
so ``compare`` and the grid, which check every method on one draw, encode it once.
"""

from __future__ import annotations

import sys

from .lm_objective import LM_TASKS, ExampleError, language_objective
from .tasks import Splits

__all__ = ["load_tokenizer", "train_items"]

_ENCODED: dict[tuple, int] = {}  # (data fingerprint, model, task, max_length, chat template) -> training items


def load_tokenizer(model: str):
    """The tokenizer of ``model`` (built-in name, local directory or hub id), without its weights.

    Raises:
        cola_opt.llm.models.ModelLoadError: it cannot be loaded.
    """
    from transformers import AutoTokenizer

    from .models import ModelLoadError, resolve_model_dir

    path = resolve_model_dir(model)
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # OSError, ValueError, ... from a missing or damaged folder
        raise ModelLoadError(f"cannot load the tokenizer of model {model!r}: {type(e).__name__}: {e}") from e


def train_items(cfg, splits: Splits) -> int:
    """The number of training items of ``cfg``'s run on ``splits``: encoded blocks or pairs for a language-model task,
    else the training examples.

    Raises:
        ValueError: an example that does not fit ``max_length`` (naming where it came
            from, ``splits.where``), or a tokenizer without EOS or chat template.
        cola_opt.llm.models.ModelLoadError: the tokenizer cannot be loaded.
    """
    if cfg.task not in LM_TASKS:
        return len(splits.train)
    key = (splits.fingerprint(), cfg.model, cfg.task, cfg.max_length, cfg.chat_template)
    if key not in _ENCODED:
        objective = language_objective(cfg, load_tokenizer(cfg.model))
        encoded = {}
        for name in ("train", "dev", "test"):
            examples = getattr(splits, name)
            try:
                encoded[name] = objective.encode(examples)
            except ExampleError as e:
                where = splits.where.get(name) or []
                at = where[e.index] if e.index < len(where) else f"{name} example {e.index + 1}"
                raise ValueError(f"{at}: {e}") from None
        note = _cut_note(encoded, cfg.max_length)
        if note:
            print(f"cola-opt: warning: {note}", file=sys.stderr, flush=True)
        _ENCODED[key] = len(encoded["train"])
    return _ENCODED[key]


def _cut_note(encoded: dict[str, list], max_length: int) -> str | None:
    """The warning for prompts cut to fit, or ``None`` when none was (blocks are never cut)."""
    cut = {name: [getattr(item, "cut", 0) for item in items] for name, items in encoded.items()}
    n_cut = {name: sum(c > 0 for c in cuts) for name, cuts in cut.items()}
    if not any(n_cut.values()):
        return None
    total = sum(len(v) for v in encoded.values())
    tokens = sum(sum(c) for c in cut.values())
    per_split = ", ".join(f"{name} {n_cut[name]} of {len(encoded[name])}" for name in encoded)
    return (f"{sum(n_cut.values())} of {total} prompts ({per_split}) did not fit in max_length={max_length} with their "
            f"completion and were cut from the left: {tokens} tokens in all, at most "
            f"{max(max(c, default=0) for c in cut.values())} from one prompt; no completion was cut")
