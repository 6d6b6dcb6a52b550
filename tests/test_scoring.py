"""Candidate scoring: the fast single-token path and the general path agree with a plain loop."""

import torch
from conftest import tiny_llama

from cola_opt.llm.scoring import Encoded, candidate_scores, classification_loss, evaluate, sequence_scores


def _manual(model, e):
    """Mean log-prob of each candidate, from one unpadded forward per candidate."""
    out = []
    for c in e.candidate_ids:
        ids = torch.tensor([list(e.prompt_ids) + list(c)])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        n = len(e.prompt_ids)
        out.append(torch.stack([logp[n - 1 + j, t] for j, t in enumerate(c)]).mean())
    return torch.stack(out)


def _batch(seed, multi):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(5):
        plen = int(torch.randint(3, 12, (1,), generator=g))
        prompt = tuple(torch.randint(2, 100, (plen,), generator=g).tolist())
        cands = []
        for _ in range(3):
            clen = int(torch.randint(1, 4, (1,), generator=g)) if multi else 1
            cands.append(tuple(torch.randint(2, 100, (clen,), generator=g).tolist()))
        batch.append(Encoded(prompt, tuple(cands), i % 3))
    return batch


def test_general_path_matches_unpadded_loop():
    model = tiny_llama(100).eval()
    batch = _batch(0, multi=True)
    assert any(len(c) > 1 for e in batch for c in e.candidate_ids)
    with torch.no_grad():
        got = candidate_scores(model, batch, pad_id=0)
        want = torch.stack([_manual(model, e) for e in batch])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_single_token_fast_path_equals_general_path():
    model = tiny_llama(100).eval()
    batch = _batch(1, multi=False)
    with torch.no_grad():
        fast = candidate_scores(model, batch, pad_id=0)
        general = sequence_scores(model, batch, pad_id=0)
        want = torch.stack([_manual(model, e) for e in batch])
    torch.testing.assert_close(fast, general, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, want, atol=1e-5, rtol=1e-5)


def test_classification_loss_and_evaluate_agree():
    model = tiny_llama(100)
    batch = _batch(2, multi=True)
    with torch.no_grad():
        scores = candidate_scores(model.eval(), batch, pad_id=0)
    labels = torch.tensor([e.label for e in batch])
    loss = classification_loss(scores, labels)
    want = -torch.log_softmax(scores, -1)[torch.arange(5), labels].mean()
    torch.testing.assert_close(loss, want)
    model.train()
    r = evaluate(model, batch, pad_id=0, batch_size=2)
    assert model.training  # restored
    assert r["n"] == 5
    assert abs(r["loss"] - float(loss)) < 1e-5
    assert r["predictions"] == scores.argmax(-1).tolist()
    assert r["accuracy"] == sum(int(p == e.label) for p, e in zip(r["predictions"], batch)) / 5
