"""The training objective: what the loop computes per example, and how a split is evaluated.

The training loop (:mod:`cola_opt.llm.loop`) knows nothing of candidates or labels: it
asks an :class:`Objective` for the items of each split (:meth:`Objective.encode`), for
the differentiable loss of one micro-batch (:meth:`Objective.loss`) and for the metrics
of a split (:meth:`Objective.evaluate`). :class:`CandidateClassification` is the MeZO
protocol (score each candidate answer by its mean token log-prob, cross-entropy over the
candidates); a language-model objective (next-token loss, perplexity) is another
implementation of the same three methods, used by the same loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from .scoring import Truncation, autocast_context, candidate_scores, classification_loss, encode_examples, evaluate
from .tasks import Example

__all__ = ["CandidateClassification", "Objective", "evaluate_split"]


class Objective(Protocol):
    """What a fine-tuning run optimises and reports.

    Attributes:
        metric: the key of the headline metric in :meth:`evaluate`'s result
            (``"accuracy"``); the epoch line prints it, and a split without examples
            reports it as ``None``.
    """

    metric: str

    def encode(self, examples: Sequence[Example]) -> list[Any]:
        """The items (token ids and targets) of a split's examples, in order; cut to fit the length limit."""
        ...

    def length(self, item: Any) -> int:
        """Tokens of ``item``'s forward pass (what a batch pads to); batches group items by it."""
        ...

    def loss(self, model: torch.nn.Module, batch: Sequence[Any]) -> torch.Tensor:
        """The mean loss over ``batch`` (a scalar tensor, nats per example), differentiable w.r.t. the model."""
        ...

    def evaluate(self, model: torch.nn.Module, items: Sequence[Any], *, batch_size: int, desc: str | None) -> dict:
        """Metrics of ``model`` on ``items`` (no gradients, eval mode): ``metric``, ``loss``, ``n``, and per-item
        ``predictions``; ``desc`` labels a progress bar (``None``: none)."""
        ...


class CandidateClassification:
    """Classification over candidate answers (MeZO's "train as classification", Malladi et al. 2023).

    An item is an :class:`~cola_opt.llm.scoring.Encoded` example. Its score per
    candidate is the mean log-prob of the candidate's tokens after the prompt; the loss
    is the cross-entropy over those scores against the gold index; the prediction is
    the argmax. Forward passes run under ``autocast``; the loss is taken in float32.

    Args:
        tokenizer: the model's Hugging Face tokenizer.
        max_length: most tokens in prompt plus longest candidate; longer prompts are
            cut from the left (:func:`cola_opt.llm.scoring.encode_examples`).
        autocast: ``"none"``, ``"bf16"`` or ``"fp16"``.

    Attributes:
        truncation: what the last :meth:`encode` cut (:class:`~cola_opt.llm.scoring.Truncation`:
            prompts cut, tokens lost, the longest length); the trainer warns and records it.
    """

    metric = "accuracy"

    def __init__(self, tokenizer, max_length: int, autocast: str = "none") -> None:
        self.tokenizer, self.max_length, self.autocast = tokenizer, max_length, autocast
        self.pad_id = tokenizer.pad_token_id
        self.truncation: Truncation | None = None

    def encode(self, examples: Sequence[Example]) -> list:
        self.truncation = Truncation(self.max_length)
        return encode_examples(self.tokenizer, examples, self.max_length, self.truncation)

    def length(self, item) -> int:
        # one-token candidates are scored from the prompt alone; else each candidate follows the prompt
        longest = max(len(c) for c in item.candidate_ids)
        return len(item.prompt_ids) + (0 if longest == 1 else longest)

    def loss(self, model: torch.nn.Module, batch: Sequence) -> torch.Tensor:
        device = next(model.parameters()).device
        labels = torch.tensor([e.label for e in batch], device=device)
        with autocast_context(device, self.autocast):
            scores = candidate_scores(model, batch, self.pad_id)
        return classification_loss(scores, labels)

    def evaluate(self, model: torch.nn.Module, items: Sequence, *, batch_size: int, desc: str | None) -> dict:
        return evaluate(model, items, pad_id=self.pad_id, batch_size=batch_size, autocast=self.autocast, desc=desc)


def evaluate_split(objective: Objective, model: torch.nn.Module, items: Sequence, *, batch_size: int,
                   desc: str | None = None, predictions: bool = False) -> dict:
    """``objective.evaluate`` on one split, as the run's results hold it.

    A split without items gives ``{metric: None, "loss": None, "n": 0}`` (JSON null, not
    NaN). ``predictions=False`` drops the per-item predictions (kept for the test split,
    for paired tests across methods).
    """
    if not items:
        return {objective.metric: None, "loss": None, "n": 0}
    result = objective.evaluate(model, items, batch_size=batch_size, desc=desc)
    if not predictions:
        result.pop("predictions", None)
    return result
