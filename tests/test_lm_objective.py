"""The language-model objectives on the tiny random Llama: masking, packing, knots, exact match against generate."""

import math

import pytest
import torch
from conftest import tiny_llama, tiny_tokenizer

from cola_opt import ResidualLowRankOptimizer
from cola_opt.llm.guard import NonFiniteError
from cola_opt.llm.lm_objective import (
    CompletionItem,
    CompletionLM,
    ExampleError,
    TextLM,
    chat_texts,
    encode_completions,
    pack_documents,
)
from cola_opt.llm.lora import LoraSettings, inject_lora, lora_sites
from cola_opt.llm.tasks import Completion, Document

PAIRS = [Completion("Question: does the trophy fit?\nAnswer:", " No"),
         Completion("Mark told Pete many lies about himself.", " Which Pete included in his book."),
         Completion("Does this mean that the hypothesis is true?", " Yes or No"),
         Completion("The trophy does not fit into the suitcase because", " it is too big.")]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _model(tok):
    torch.manual_seed(0)
    return tiny_llama(len(tok)).eval()


def _manual_completion_ce(model, item: CompletionItem) -> tuple[float, int]:
    """Summed CE of the completion tokens of one unpadded sequence, and their count (no masking code involved)."""
    ids = torch.tensor([item.prompt_ids + item.completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    start = len(item.prompt_ids)
    logp = torch.log_softmax(logits[start - 1 : -1], dim=-1)  # position j predicts token j + 1
    target = torch.tensor(item.completion_ids)
    return float(-logp.gather(1, target[:, None]).sum()), len(target)


def test_masked_prompt_tokens_carry_no_loss(tok):
    model = _model(tok)
    objective = CompletionLM(tok, max_length=64)
    items = objective.encode(PAIRS)
    assert all(item.completion_ids[-1] == tok.eos_token_id for item in items)  # the end token is a target
    manual = [_manual_completion_ce(model, item) for item in items]
    expected = sum(s for s, _ in manual) / sum(n for _, n in manual)  # mean over the batch's completion tokens
    with torch.no_grad():
        got = float(objective.loss(model, items))  # left-padded batch of four different lengths
    assert got == pytest.approx(expected, rel=1e-5)
    # the loss of the whole sequence differs: prompt tokens would change it if they were not masked
    ids = [torch.tensor([i.prompt_ids + i.completion_ids]) for i in items]
    with torch.no_grad():
        whole = [model(input_ids=x, labels=x).loss for x in ids]
    assert abs(float(torch.stack(whole).mean()) - got) > 1e-2


def test_evaluation_is_the_token_mean_with_perplexity_and_per_item_values(tok):
    model = _model(tok)
    objective = CompletionLM(tok, max_length=64)
    items = objective.encode(PAIRS)
    manual = [_manual_completion_ce(model, item) for item in items]
    result = objective.evaluate(model, items, batch_size=3, desc=None)
    loss = sum(s for s, _ in manual) / sum(n for _, n in manual)
    assert result["loss"] == pytest.approx(loss, rel=1e-5) and result["perplexity"] == pytest.approx(math.exp(loss))
    assert result["tokens"] == sum(n for _, n in manual) and result["n"] == 4
    assert result["exact_match"] == 0.0 and result["predictions"] == [0, 0, 0, 0]  # an untrained model matches none
    assert result["prompts_cut"] == 0 and result["prompt_tokens_cut"] == 0
    assert not model.training  # evaluate restores the mode it found


def test_packing_joins_documents_with_eos_and_cuts_blocks(tok):
    docs = [Document("The trophy does not fit."), Document("Mark told Pete many lies about himself, " * 5),
            Document("Yes")]
    lengths = [len(tok(d.text)["input_ids"]) for d in docs]
    stream = [t for d in docs for t in (*tok(d.text)["input_ids"], tok.eos_token_id)]
    blocks = pack_documents(tok, docs, max_length=16)
    assert [t for b in blocks for t in b.ids] == stream  # every token and each EOS once, in order
    assert len(stream) == sum(lengths) + 3 and len(blocks) == math.ceil(len(stream) / 16)
    assert all(len(b.ids) == 16 for b in blocks[:-1]) and 2 <= len(blocks[-1].ids) <= 16
    objective = TextLM(tok, max_length=16)
    assert objective.encode(docs) == blocks and objective.length(blocks[0]) == 16
    assert objective.sequence(blocks[0]) == (blocks[0].ids, 15)  # every token but the first is a target
    # a last block of one token has nothing to predict it from: dropped
    n = len(stream)
    one_left = pack_documents(tok, docs, max_length=n - 1)
    assert [len(b.ids) for b in one_left] == [n - 1]
    with pytest.raises(ValueError, match="max_length=1 must be at least 2"):
        pack_documents(tok, docs, max_length=1)


def test_text_loss_is_mean_next_token_ce_over_blocks(tok):
    model = _model(tok)
    objective = TextLM(tok, max_length=12)
    blocks = objective.encode([Document("The trophy does not fit into the suitcase because it is too big. " * 3)])
    total, count = 0.0, 0
    for b in blocks:
        x = torch.tensor([b.ids])
        with torch.no_grad():
            loss = model(input_ids=x, labels=x).loss  # Hugging Face's own shifted causal-LM loss
        total, count = total + float(loss) * (len(b.ids) - 1), count + len(b.ids) - 1
    result = objective.evaluate(model, blocks, batch_size=4, desc=None)
    assert result["loss"] == pytest.approx(total / count, rel=1e-5) and result["tokens"] == count
    assert len(result["predictions"]) == len(blocks)


def test_prompts_are_cut_from_the_left_and_answers_never(tok):
    long = Completion("Does this mean that the hypothesis is true? " * 8, " Yes")
    (full,) = encode_completions(tok, [long], max_length=512)
    (cut,) = encode_completions(tok, [long], max_length=20)
    assert cut.completion_ids == full.completion_ids and len(cut.prompt_ids) + len(cut.completion_ids) == 20
    assert cut.prompt_ids == full.prompt_ids[-len(cut.prompt_ids) :]  # the end of the prompt is kept
    assert cut.cut == len(full.prompt_ids) - len(cut.prompt_ids) > 0 and full.cut == 0
    answer = Completion("Q", " The trophy does not fit into the suitcase because it is too big.")
    n = len(encode_completions(tok, [answer], max_length=512)[0].completion_ids)
    assert len(encode_completions(tok, [answer], max_length=n + 1)[0].prompt_ids) == 1
    with pytest.raises(ExampleError, match=f"completion is {n} tokens with its end token .* at least {n + 1}") as e:
        encode_completions(tok, [long, answer], max_length=n)
    assert e.value.index == 1  # the caller names the file and line of the second example


def test_chat_template_targets_end_at_the_end_of_turn(tok):
    chat = tiny_tokenizer()
    chat.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>\n{% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    prompt, answer = chat_texts(chat, Completion("Does it fit?", "No"))
    assert prompt == "<|user|>Does it fit?<eos>\n<|assistant|>" and answer == "No<eos>\n"
    (item,) = encode_completions(chat, [Completion("Does it fit?", "No")], max_length=64, chat_template=True)
    assert item.completion_ids == (*chat("No", add_special_tokens=False)["input_ids"], chat.eos_token_id)
    assert chat.decode(item.prompt_ids) == prompt
    with pytest.raises(ValueError, match="has no chat template"):
        encode_completions(tok, PAIRS, max_length=64, chat_template=True)


def test_a_knot_leaves_the_lm_loss_unchanged(tok):
    model = inject_lora(_model(tok), LoraSettings(r=4, lora_alpha=8, target_modules=("q_proj", "v_proj")))
    chain = ResidualLowRankOptimizer(lora_sites(model), lr=5e-2, knot_steps=[100])
    for objective, data in ((CompletionLM(tok, 64), PAIRS),
                            (TextLM(tok, 12), [Document("The trophy does not fit into the suitcase. " * 4)])):
        items = objective.encode(data)
        before_training = objective.evaluate(model, items, batch_size=8, desc=None)["loss"]
        for _ in range(5):
            objective.loss(model, items).backward()
            chain.step()
            chain.zero_grad()
        assert max(float(s.lora_B.abs().max()) for s in chain.sites) > 0  # the link is trained
        before = objective.evaluate(model, items, batch_size=8, desc=None)["loss"]
        assert before != pytest.approx(before_training, abs=1e-4)
        weights = [s.weight.detach().clone() for s in chain.sites]
        chain.tie_knot()
        after = objective.evaluate(model, items, batch_size=8, desc=None)["loss"]
        assert after == pytest.approx(before, rel=1e-5, abs=1e-6)
        assert all(float(s.lora_B.abs().max()) == 0 for s in chain.sites)  # a fresh link
        assert any(not torch.equal(w, s.weight) for w, s in zip(weights, chain.sites))  # merged into the base


def _memorised(tok, pairs, steps=150):
    model = _model(tok).train()
    objective = CompletionLM(tok, max_length=64)
    items = objective.encode(pairs)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        objective.loss(model, items).backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), objective


def _generated_match(model, tok, item: CompletionItem) -> bool:
    """Greedy ``model.generate`` from the prompt: do the first len(reference) tokens equal the reference (end token
    included)? Unbatched, with the KV cache: an independent implementation."""
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([item.prompt_ids]), attention_mask=torch.ones(1, len(item.prompt_ids),
                             dtype=torch.long), max_new_tokens=len(item.completion_ids), do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, use_cache=True)
    return out[0, len(item.prompt_ids) :].tolist() == list(item.completion_ids)


def test_teacher_forced_exact_match_equals_greedy_generation(tok):
    model, objective = _memorised(tok, PAIRS[:3])
    probes = [*PAIRS[:3],  # memorised: greedy generation reproduces them
              Completion(PAIRS[0].prompt, " Yes"),  # same prompt, another answer
              Completion(PAIRS[1].prompt, PAIRS[1].completion + " again"),  # the reference goes on past the memorised end
              Completion(PAIRS[2].prompt, " Yes or"),  # a prefix: the model does not stop there
              PAIRS[3]]  # never trained on
    items = objective.encode(probes)
    generated = [int(_generated_match(model, tok, item)) for item in items]
    for batch_size in (1, 3, 16):  # left padding of different widths
        assert objective.evaluate(model, items, batch_size=batch_size, desc=None)["predictions"] == generated
    assert generated[:3] == [1, 1, 1] and generated[3:] == [0, 0, 0, 0]  # the comparison is not vacuous


def test_non_finite_token_losses_are_an_error(tok):
    model = _model(tok)
    with torch.no_grad():
        model.lm_head.weight[5, 0] = float("nan")
    objective = CompletionLM(tok, 64)
    with pytest.raises(NonFiniteError, match="token losses of a batch are NaN or inf"):
        objective.evaluate(model, objective.encode(PAIRS), batch_size=4, desc=None)


def test_the_resume_fingerprint_hashes_the_items(tok):
    from cola_opt.llm.resume import run_fingerprint

    model = inject_lora(_model(tok), LoraSettings(r=2, lora_alpha=4, target_modules=("q_proj",)))
    chain = ResidualLowRankOptimizer(lora_sites(model), lr=1e-3, knot_steps=[])
    a = run_fingerprint(model, chain, CompletionLM(tok, 64).encode(PAIRS))
    b = run_fingerprint(model, chain, CompletionLM(tok, 12).encode(PAIRS))  # other cuts: other data
    assert a["data"] != b["data"]
