"""Language-model objectives: next-token cross-entropy on a user's text, or on the completions of prompt/completion pairs.

Two :class:`~cola_opt.llm.objective.Objective` s for the one training loop:

- :class:`TextLM` (continued pretraining). Documents are tokenised (with the
  tokenizer's special tokens: BOS where it adds one), each followed by EOS, joined in
  order and cut into blocks of ``max_length`` tokens (packing, as the ``group_texts``
  step of transformers' ``run_clm.py`` example; here the last, shorter block is kept).
  Attention is not masked between the documents of a block. Every token of a block but
  the first is a target. Headline metric: ``loss`` (lower is better).
- :class:`CompletionLM` (supervised fine-tuning). The prompt's tokens are inputs only
  (target -100); the completion's tokens and its end token are targets: EOS, or with
  ``chat_template`` the template's assistant turn up to and including the tokenizer's
  EOS (``<|im_end|>`` for SmolLM2). A prompt that does not fit in ``max_length`` with its
  completion is cut from the left (BOS kept); a completion is never cut: one that does
  not fit with a prompt token is an :class:`ExampleError`. Headline metric:
  ``exact_match`` (higher is better).

**Loss** of a micro-batch: the mean cross-entropy (nats) over its target tokens, in
float32 (``F.cross_entropy`` with ``ignore_index=-100``, as Hugging Face's causal-LM
loss). The loop weights micro-batches of one step by their item counts, which is the
per-token mean of the step when items have equal target counts (the packed blocks).

**Evaluation** (:meth:`LanguageModel.evaluate`): ``loss``, the mean token cross-entropy
over every target token of the split (sum over tokens / tokens); ``perplexity``
``exp(loss)``; ``tokens``; for completions, ``exact_match``: the share of items whose
every target token (the end token included) is the argmax of the logits given the
reference before it. Greedy decoding is deterministic, so it generates exactly the
reference and then the end token if and only if each of those tokens is the argmax at
its place given the reference before it: this teacher-forced check *is* greedy exact
match over the first ``len(reference) + 1`` tokens, at the cost of one batched forward
pass. ``tests/test_lm_objective.py`` checks it against ``model.generate``.

Batches are left-padded with position ids from the attention mask
(:func:`cola_opt.llm.scoring.left_pad`), so every item's targets end at the last
position and only the last ``targets + 1`` positions' logits are computed
(``logits_to_keep``): a prompt's logits are never materialised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .guard import NonFiniteError
from .scoring import autocast_context, left_pad
from .tasks import Completion, Document

__all__ = ["IGNORE_INDEX", "LM_TASKS", "Block", "CompletionItem", "CompletionLM", "ExampleError", "LanguageModel",
           "TextLM", "chat_texts", "encode_completions", "language_objective", "pack_documents", "task_metric"]

IGNORE_INDEX = -100  # the target of a token that carries no loss (PyTorch's and Hugging Face's convention)
LM_TASKS = ("text", "completion")  # the user tasks trained as language modelling


@dataclass(frozen=True)
class Block:
    """A packed block of a text task: up to ``max_length`` token ids; every token but the first is a target."""

    ids: tuple[int, ...]


@dataclass(frozen=True)
class CompletionItem:
    """One encoded prompt/completion pair.

    Attributes:
        prompt_ids: the prompt's tokens (inputs only), cut from the left if needed.
        completion_ids: the completion's tokens and its end token (the targets).
        cut: prompt tokens cut from the left to fit ``max_length`` (0: none).
    """

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    cut: int = 0


class ExampleError(ValueError):
    """An example that cannot be encoded; ``index`` is its position in the list encoded (the caller names its file and line)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def _end_token(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the model's tokenizer has no EOS token: a language-model objective needs one to end documents "
                         "and answers")
    return tokenizer.eos_token_id


def pack_documents(tokenizer, documents: Sequence[Document], max_length: int) -> list[Block]:
    """Tokenise ``documents``, each followed by EOS, join them in order and cut the stream into blocks.

    Args:
        tokenizer: a Hugging Face tokenizer with an EOS token.
        documents: the documents, in order.
        max_length: tokens per block (>= 2); the last block holds the rest (dropped if a
            single token, which has nothing before it to be predicted from).

    Returns:
        the blocks; every token of every document and each EOS is in exactly one block,
        in order.

    Raises:
        ValueError: ``max_length < 2``, or the tokenizer has no EOS token.
    """
    if max_length < 2:
        raise ValueError(f"max_length={max_length} must be at least 2 for a text task (a token and its successor)")
    eos = _end_token(tokenizer)
    if not documents:
        return []
    stream: list[int] = []
    for ids in tokenizer([d.text for d in documents], verbose=False)["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    blocks = [tuple(stream[i : i + max_length]) for i in range(0, len(stream), max_length)]
    if len(blocks[-1]) < 2:
        blocks.pop()
    return [Block(b) for b in blocks]


def chat_texts(tokenizer, example: Completion) -> tuple[str, str]:
    """``(prompt, answer)`` texts of ``example`` in the tokenizer's chat template: a user turn, then the assistant's.

    The prompt ends with the template's generation prompt (``add_generation_prompt``);
    the answer is the rest of the two-turn conversation.

    Raises:
        ValueError: the tokenizer has no chat template, or its two renderings disagree.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template is on, but the model's tokenizer has no chat template; leave --chat-template off "
                         "or use a chat model")
    user = [{"role": "user", "content": example.prompt}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": example.completion}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the tokenizer's chat template does not render the assistant's answer after its generation "
                         "prompt; leave --chat-template off")
    return prompt, full[len(prompt) :]


def _continuation(tokenizer, prompt: str, prompt_ids: list[int], answer: str, special: bool) -> list[int]:
    """The tokens of ``answer`` as it follows ``prompt``: from the joint tokenisation if it extends the prompt's."""
    full = tokenizer(prompt + answer, add_special_tokens=special)["input_ids"]
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return full[len(prompt_ids) :]
    return tokenizer(answer, add_special_tokens=False)["input_ids"]


def encode_completions(tokenizer, examples: Sequence[Completion], max_length: int,
                       chat_template: bool = False) -> list[CompletionItem]:
    """Tokenise prompt/completion pairs; cut prompts from the left to fit, never a completion.

    Args:
        tokenizer: a Hugging Face tokenizer with an EOS token.
        examples: the pairs.
        max_length: most tokens of prompt plus completion plus end token.
        chat_template: render each pair as a user turn and the assistant's answer
            (:func:`chat_texts`); the answer's targets end at the tokenizer's EOS.

    Raises:
        ExampleError: a completion (with its end token) that leaves no room for a prompt
            token (and BOS) in ``max_length``; its message says the length needed.
        ValueError: as :func:`chat_texts`, or no EOS token.
    """
    eos, bos = _end_token(tokenizer), tokenizer.bos_token_id
    out = []
    for i, ex in enumerate(examples):
        if chat_template:
            prompt, answer = chat_texts(tokenizer, ex)
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            c = _continuation(tokenizer, prompt, p, answer, special=False)
            c = c[: c.index(eos) + 1] if eos in c else [*c, eos]
        else:
            p = tokenizer(ex.prompt)["input_ids"]
            c = [*_continuation(tokenizer, ex.prompt, p, ex.completion, special=True), eos]
        keep_bos = int(bos is not None and p[:1] == [bos])
        room = max_length - len(c)
        if room < 1 + keep_bos:
            raise ExampleError(i, f"the completion is {len(c)} tokens with its end token and does not fit in "
                                  f"max_length={max_length} with a prompt token{' and BOS' if keep_bos else ''}; "
                                  f"an answer is never cut: raise --max-length to at least {len(c) + 1 + keep_bos}")
        cut = max(0, len(p) - room)
        if cut:
            p = p[:keep_bos] + p[keep_bos + cut :]
        out.append(CompletionItem(tuple(p), tuple(c), cut))
    return out


def _target_logits(model, seqs: list[Sequence[int]], n_targets: list[int], pad_id: int):
    """Logits ``(B, K, V)`` that predict each sequence's last ``K = max(n_targets)`` tokens, and those tokens
    ``(B, K)`` int64 with :data:`IGNORE_INDEX` where a sequence has fewer targets."""
    device = next(model.parameters()).device
    k = max(n_targets)
    ids, mask, pos = left_pad(seqs, pad_id, device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=k + 1).logits[:, :-1]
    targets = ids[:, -k:].clone()
    n = torch.tensor(n_targets, device=device)
    targets[torch.arange(k, device=device).unsqueeze(0) < (k - n).unsqueeze(1)] = IGNORE_INDEX
    return logits, targets


class LanguageModel:
    """Next-token cross-entropy on each item's target tokens: the part :class:`TextLM` and :class:`CompletionLM` share.

    A subclass gives ``metric``, :meth:`encode` and :meth:`sequence` (an item's tokens
    and how many of its last tokens are targets).

    Args:
        tokenizer: the model's Hugging Face tokenizer (with an EOS token).
        max_length: tokens per block (text) or per prompt plus completion.
        autocast: ``"none"``, ``"bf16"`` or ``"fp16"`` for the forward passes.
    """

    metric = "loss"

    def __init__(self, tokenizer, max_length: int, autocast: str = "none") -> None:
        self.tokenizer, self.max_length, self.autocast = tokenizer, max_length, autocast
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _end_token(tokenizer)

    def sequence(self, item) -> tuple[tuple[int, ...], int]:
        """``(token ids, number of trailing target tokens)`` of ``item``."""
        raise NotImplementedError

    def length(self, item) -> int:
        return len(self.sequence(item)[0])

    def _forward(self, model, batch: Sequence):
        seqs, n = zip(*(self.sequence(item) for item in batch))
        with autocast_context(next(model.parameters()).device, self.autocast):
            logits, targets = _target_logits(model, list(seqs), list(n), self.pad_id)
        return logits.float(), targets

    def loss(self, model: torch.nn.Module, batch: Sequence) -> torch.Tensor:
        """Mean cross-entropy over the batch's target tokens (nats per token), a differentiable float32 scalar."""
        logits, targets = self._forward(model, batch)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)

    @torch.no_grad()
    def token_scores(self, model, items: Sequence, *, batch_size: int, desc: str | None):
        """Per item: summed target-token loss (nats), target tokens, and whether every target is the argmax.

        Eval mode (restored after), items batched in order of length.

        Raises:
            cola_opt.llm.guard.NonFiniteError: a target token's loss is NaN or inf.
        """
        from tqdm.auto import tqdm

        was_training = model.training
        model.eval()
        order = sorted(range(len(items)), key=lambda i: self.length(items[i]))
        nll, count, hit = [0.0] * len(items), [0] * len(items), [False] * len(items)
        bar = tqdm(total=len(items), desc=desc, unit="ex", leave=False, disable=desc is None)
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                logits, targets = self._forward(model, [items[i] for i in idx])
                mask = targets != IGNORE_INDEX
                tok = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
                bad = int((~torch.isfinite(tok) & mask).sum())
                if bad:
                    raise NonFiniteError(f"evaluation: {bad} of the {int(mask.sum())} token losses of a batch are NaN or "
                                         "inf; the model's weights or activations are not finite (a diverged run, or an "
                                         "fp16 overflow under --autocast fp16), so no loss is reported", None, "scores")
                correct = ((logits.argmax(-1) == targets) | ~mask).all(-1)
                for j, i in enumerate(idx):
                    nll[i], count[i], hit[i] = float(tok[j].sum()), int(mask[j].sum()), bool(correct[j])
                bar.update(len(idx))
        finally:
            bar.close()
            model.train(was_training)
        return nll, count, hit

    def evaluate(self, model: torch.nn.Module, items: Sequence, *, batch_size: int, desc: str | None) -> dict:
        """``loss`` (mean over the split's target tokens, nats), ``perplexity``, ``tokens``, ``n`` and ``predictions``
        (each item's mean token loss)."""
        nll, count, _ = self.token_scores(model, items, batch_size=batch_size, desc=desc)
        return {**_totals(nll, count), "n": len(items), "predictions": [s / c for s, c in zip(nll, count)]}


def _totals(nll: list[float], count: list[int]) -> dict:
    loss = sum(nll) / max(sum(count), 1)
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf, "tokens": sum(count)}


class TextLM(LanguageModel):
    """Continued pretraining on packed documents (module docstring); items are :class:`Block` s."""

    metric = "loss"

    def encode(self, examples: Sequence[Document]) -> list[Block]:
        return pack_documents(self.tokenizer, examples, self.max_length)

    def sequence(self, item: Block) -> tuple[tuple[int, ...], int]:
        return item.ids, len(item.ids) - 1


class CompletionLM(LanguageModel):
    """Supervised fine-tuning on prompt/completion pairs (module docstring); items are :class:`CompletionItem` s.

    Args:
        tokenizer, max_length, autocast: as :class:`LanguageModel`.
        chat_template: render each pair in the tokenizer's chat template (:func:`chat_texts`).
    """

    metric = "exact_match"

    def __init__(self, tokenizer, max_length: int, autocast: str = "none", chat_template: bool = False) -> None:
        super().__init__(tokenizer, max_length, autocast)
        self.chat_template = chat_template

    def encode(self, examples: Sequence[Completion]) -> list[CompletionItem]:
        return encode_completions(self.tokenizer, examples, self.max_length, self.chat_template)

    def sequence(self, item: CompletionItem) -> tuple[tuple[int, ...], int]:
        return item.prompt_ids + item.completion_ids, len(item.completion_ids)

    def evaluate(self, model: torch.nn.Module, items: Sequence, *, batch_size: int, desc: str | None) -> dict:
        """As :meth:`LanguageModel.evaluate` over the completion tokens, with ``exact_match`` in [0, 1] (greedy, by
        teacher forcing: module docstring), ``predictions`` (1 where the item matched, else 0), ``prompts_cut`` and
        ``prompt_tokens_cut``."""
        nll, count, hit = self.token_scores(model, items, batch_size=batch_size, desc=desc)
        return {"exact_match": sum(hit) / len(items), **_totals(nll, count), "n": len(items),
                "predictions": [int(h) for h in hit], "prompts_cut": sum(item.cut > 0 for item in items),
                "prompt_tokens_cut": sum(item.cut for item in items)}


def task_metric(task: str) -> str:
    """The headline metric of a task's objective: ``"loss"`` (text), ``"exact_match"`` (completion), else ``"accuracy"``."""
    return {"text": TextLM.metric, "completion": CompletionLM.metric}.get(task, "accuracy")


def language_objective(cfg, tokenizer) -> LanguageModel | None:
    """The language-model objective of ``cfg``'s task (``text``: :class:`TextLM`, ``completion``:
    :class:`CompletionLM`), or ``None`` for a classification task."""
    if cfg.task == "text":
        return TextLM(tokenizer, cfg.max_length, cfg.autocast)
    if cfg.task == "completion":
        return CompletionLM(tokenizer, cfg.max_length, cfg.autocast, chat_template=cfg.chat_template)
    return None
