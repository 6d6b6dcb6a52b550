"""Scoring candidates with a causal LM, and training as classification (MeZO protocol).

A candidate's score is the mean log-probability of its tokens given the prompt. The
prediction is the highest-scoring candidate; the training loss is the cross-entropy
over the candidates' scores ("train as classification", MeZO, Malladi et al. 2023).

Sequences are left-padded, with position ids taken from the attention mask, so every
candidate ends at the last position and only the last few positions' logits are
computed (``logits_to_keep``). When every candidate of every example is one token
(``" Yes"`` / ``" No"``), all candidates are scored from one forward pass over the
prompt alone: the scores are the same and the cost is ``1/C`` of the general path.

Prompts longer than ``max_length`` lose their start; :class:`Truncation` counts the
prompts cut and the tokens lost, so that a run can say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .guard import NonFiniteError
from .tasks import Example

__all__ = ["Encoded", "Truncation", "autocast_context", "candidate_scores", "classification_loss", "encode_examples",
           "evaluate", "left_pad", "sequence_scores", "truncation_warning"]


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example.

    Attributes:
        prompt_ids: prompt tokens (with the tokenizer's BOS, if it adds one).
        candidate_ids: the tokens of each candidate, as they follow the prompt.
        label: gold candidate index.
    """

    prompt_ids: tuple[int, ...]
    candidate_ids: tuple[tuple[int, ...], ...]
    label: int


def _candidate_tokens(tokenizer, prompt: str, prompt_ids: list[int], cand: str) -> list[int]:
    full = tokenizer(prompt + cand)["input_ids"]
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return full[len(prompt_ids) :]
    return tokenizer(cand, add_special_tokens=False)["input_ids"]


@dataclass
class Truncation:
    """What cutting prompts to ``max_length`` cost one split (filled by :func:`encode_examples`).

    Attributes:
        max_length: the limit (tokens of prompt plus longest candidate).
        n: examples encoded.
        cut: examples whose prompt lost its start.
        tokens_lost: prompt tokens dropped, summed over the examples (tokens).
        longest: the longest prompt plus longest candidate before any cut (tokens): the
            ``max_length`` that would cut nothing.
    """

    max_length: int
    n: int = 0
    cut: int = 0
    tokens_lost: int = 0
    longest: int = 0

    def add(self, length: int, lost: int) -> None:
        """Count one example of ``length`` tokens (uncut) that lost ``lost`` prompt tokens."""
        self.n += 1
        self.cut += lost > 0
        self.tokens_lost += lost
        self.longest = max(self.longest, length)

    def to_dict(self) -> dict:
        return asdict(self)


def truncation_warning(per_split: dict[str, Truncation]) -> str | None:
    """One line naming the splits whose prompts were cut, with counts; ``None`` if none was.

    For example ``max_length=256 cut the start of 782 of 1000 test prompts (41236 tokens
    lost) and ...; the longest prompt with its answer is 641 tokens: pass --max-length 641
    to keep every prompt whole``.
    """
    cut = {name: t for name, t in per_split.items() if t.cut}
    if not cut:
        return None
    limit = next(iter(cut.values())).max_length
    parts = [f"{t.cut} of {t.n} {name} prompts ({t.tokens_lost} tokens lost)" for name, t in cut.items()]
    longest = max(t.longest for t in per_split.values())
    return (f"max_length={limit} cut the start of {' and '.join(parts)}; the longest prompt with its answer is "
            f"{longest} tokens: pass --max-length {longest} to keep every prompt whole")


def encode_examples(tokenizer, examples: Sequence[Example], max_length: int,
                    truncation: Truncation | None = None) -> list[Encoded]:
    """Tokenise examples; prompts longer than fits are cut from the left (after BOS).

    Args:
        tokenizer: a Hugging Face tokenizer.
        examples: the examples.
        max_length: most tokens in prompt + longest candidate.
        truncation: if given, counts every example and what its cut lost (:class:`Truncation`).

    Raises:
        ValueError: if ``max_length`` cannot hold a candidate plus one prompt token, or
            a candidate tokenises to nothing.
    """
    out = []
    bos = tokenizer.bos_token_id
    for ex in examples:
        p = tokenizer(ex.prompt)["input_ids"]
        cands = []
        for c in ex.candidates:
            ids = _candidate_tokens(tokenizer, ex.prompt, p, c)
            if not ids:
                raise ValueError(f"candidate {c!r} tokenises to no tokens")
            cands.append(tuple(ids))
        room = max_length - max(len(c) for c in cands)
        if room < 1 + (p[:1] == [bos]):
            raise ValueError(f"max_length={max_length} cannot hold a prompt token and a {max(map(len, cands))}-token answer")
        length = len(p) + max(map(len, cands))
        if len(p) > room:
            keep_bos = p[:1] == [bos] and bos is not None
            p = ([bos] if keep_bos else []) + p[len(p) - room + keep_bos :]
        if truncation is not None:
            truncation.add(length, length - len(p) - max(map(len, cands)))
        out.append(Encoded(tuple(p), tuple(cands), ex.label))
    return out


def left_pad(seqs: list[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)``, each ``(len(seqs), longest)`` int64 on ``device``, left-padded.

    Position ids count the real tokens from 0 (padding gets 0), so every sequence ends at
    the last position with the positions it would have alone.
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def _single_token(batch: Sequence[Encoded]) -> bool:
    return all(len(c) == 1 for e in batch for c in e.candidate_ids)


def candidate_scores(model, batch: Sequence[Encoded], pad_id: int) -> torch.Tensor:
    """Mean log-prob of each candidate's tokens given its prompt.

    Args:
        model: a causal LM (its forward takes ``input_ids``, ``attention_mask``,
            ``position_ids`` and ``logits_to_keep``).
        batch: encoded examples with the same number of candidates ``C``.
        pad_id: the padding token id.

    Returns:
        float32 tensor of shape ``(len(batch), C)``, differentiable w.r.t. the model.

    Raises:
        ValueError: if the examples have different numbers of candidates.
    """
    n_cand = {len(e.candidate_ids) for e in batch}
    if len(n_cand) != 1:
        raise ValueError(f"examples in a batch must have the same number of candidates, got {sorted(n_cand)}")
    device = next(model.parameters()).device
    if _single_token(batch):
        ids, mask, pos = left_pad([e.prompt_ids for e in batch], pad_id, device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
        logp = F.log_softmax(logits.float(), dim=-1)
        cand = torch.tensor([[c[0] for c in e.candidate_ids] for e in batch], device=device)
        return logp.gather(1, cand)
    return sequence_scores(model, batch, pad_id)


def sequence_scores(model, batch: Sequence[Encoded], pad_id: int) -> torch.Tensor:
    """Mean log-prob of each candidate, one sequence per (example, candidate): the general path.

    :func:`candidate_scores` takes it unless every candidate is one token. Arguments and
    the float32 ``(len(batch), C)`` result as there.
    """
    device = next(model.parameters()).device
    n_cand = len(batch[0].candidate_ids)
    seqs = [e.prompt_ids + c for e in batch for c in e.candidate_ids]
    lens = [len(c) for e in batch for c in e.candidate_ids]
    keep = max(lens) + 1
    ids, mask, pos = left_pad(seqs, pad_id, device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # kept position j predicts token j+1
    targets = ids[:, -(keep - 1) :]
    tok_logp = logp.gather(2, targets.unsqueeze(-1)).squeeze(-1)  # (B*C, keep-1)
    lens_t = torch.tensor(lens, device=device)
    span = torch.arange(keep - 1, device=device).unsqueeze(0) >= (keep - 1 - lens_t).unsqueeze(1)
    scores = (tok_logp * span).sum(-1) / lens_t
    return scores.view(len(batch), n_cand)


def classification_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over candidate scores ``(B, C)`` against gold indices ``(B,)``."""
    return F.cross_entropy(scores, labels)


def autocast_context(device: torch.device | str, autocast: str):
    """``torch.autocast`` for ``"bf16"`` / ``"fp16"``, or a no-op for ``"none"``.

    Raises:
        ValueError: on another value.
    """
    if autocast == "none":
        return nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if autocast not in dtypes:
        raise ValueError(f"autocast {autocast!r} must be 'none', 'bf16' or 'fp16'")
    return torch.autocast(device_type=torch.device(device).type, dtype=dtypes[autocast])


@torch.no_grad()
def evaluate(model, data: Sequence[Encoded], *, pad_id: int, batch_size: int = 16, autocast: str = "none",
             desc: str | None = None) -> dict:
    """Accuracy and mean classification loss of ``model`` on ``data``.

    The model is put in eval mode (dropout off) and restored afterwards. Examples are
    batched in order of length to waste less padding. ``desc`` shows a progress bar
    (in examples) with that label; ``None`` shows none.

    Returns:
        ``{"accuracy": float in [0, 1], "loss": float (nats), "n": int, "predictions": list[int]}``.

    Raises:
        cola_opt.llm.guard.NonFiniteError: if a candidate score is NaN or inf (non-finite
            weights, or an fp16 overflow): an argmax over such scores is no accuracy.
    """
    was_training = model.training
    model.eval()
    order = sorted(range(len(data)), key=lambda i: len(data[i].prompt_ids))
    preds = [0] * len(data)
    total_loss = 0.0
    device = next(model.parameters()).device
    from tqdm.auto import tqdm

    bar = tqdm(total=len(data), desc=desc, unit="ex", leave=False, disable=desc is None)
    try:
        for start in range(0, len(order), batch_size):
            bar.update(min(batch_size, len(order) - start))
            idx = order[start : start + batch_size]
            batch = [data[i] for i in idx]
            with autocast_context(device, autocast):
                scores = candidate_scores(model, batch, pad_id)
            if not bool(torch.isfinite(scores).all()):
                bad = int((~torch.isfinite(scores)).sum())
                raise NonFiniteError(f"evaluation: {bad} of the {scores.numel()} candidate scores of a batch are NaN or "
                                     "inf; the model's weights or activations are not finite (a diverged run, or an "
                                     "fp16 overflow under --autocast fp16), so no accuracy is reported", None, "scores")
            labels = torch.tensor([e.label for e in batch], device=scores.device)
            total_loss += float(F.cross_entropy(scores, labels, reduction="sum"))
            for i, p in zip(idx, scores.argmax(-1).tolist()):
                preds[i] = p
    finally:
        bar.close()
        model.train(was_training)
    correct = sum(int(p == e.label) for p, e in zip(preds, data))
    n = max(len(data), 1)
    return {"accuracy": correct / n, "loss": total_loss / n, "n": len(data), "predictions": preds}
