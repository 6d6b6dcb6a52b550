"""Batch orders: bucketing by length visits every item once per epoch, reproducibly, with less padding."""

import math
import random

import pytest

from cola_opt.llm.batching import bucketed_batches, optimizer_steps, padding_fraction, shuffled_batches


def _lengths(n=1000, seed=0):
    rng = random.Random(seed)  # skewed, like RTE premises: most short, a long tail
    return [int(20 + rng.expovariate(1 / 60)) for _ in range(n)]


@pytest.mark.parametrize("n,bs", [(1000, 8), (37, 4), (5, 8), (64, 8)])
def test_bucketed_batches_visit_each_item_once_in_ceil_n_over_b_batches(n, bs):
    lengths = _lengths(n)
    for epoch in range(3):
        batches = bucketed_batches(lengths, bs, 3, epoch)
        assert len(batches) == math.ceil(n / bs)
        assert sorted(i for b in batches for i in b) == list(range(n))
        assert all(1 <= len(b) <= bs for b in batches)


def test_bucketed_order_is_a_pure_function_of_seed_and_epoch():
    lengths = _lengths()
    assert bucketed_batches(lengths, 8, 1, 2) == bucketed_batches(lengths, 8, 1, 2)
    assert bucketed_batches(lengths, 8, 1, 2) != bucketed_batches(lengths, 8, 1, 3)
    assert bucketed_batches(lengths, 8, 1, 2) != bucketed_batches(lengths, 8, 2, 2)


def test_bucketing_cuts_padding_and_keeps_long_batches_spread_out():
    lengths = _lengths()
    plain = padding_fraction(lengths, shuffled_batches(len(lengths), 8, 0, 0))
    bucketed = padding_fraction(lengths, bucketed_batches(lengths, 8, 0, 0))
    assert plain > 0.4 and bucketed < 0.1, (plain, bucketed)
    # the micro-batches are shuffled across buckets: their longest items are not in sorted runs
    peaks = [max(lengths[i] for i in b) for b in bucketed_batches(lengths, 8, 0, 0)]
    assert peaks != sorted(peaks) and peaks != sorted(peaks, reverse=True)
    ups = sum(b > a for a, b in zip(peaks, peaks[1:]))
    assert 0.3 < ups / (len(peaks) - 1) < 0.7


def test_padding_fraction_by_hand():
    assert padding_fraction([2, 4, 4, 4], [[0, 1], [2, 3]]) == pytest.approx(1 - 14 / 16)
    assert padding_fraction([3, 3], [[0, 1]]) == 0.0


def test_optimizer_steps_resume_at_a_position_gives_the_same_steps():
    lengths = _lengths(50)

    def order(e):
        return bucketed_batches(lengths, 4, 5, e)
    whole = [s.batches for _, s in zip(range(40), optimizer_steps(order, 2))]
    steps = list(zip(range(17), optimizer_steps(order, 2)))
    position = steps[-1][1].next_position()
    rest = [s.batches for _, s in zip(range(40 - 17), optimizer_steps(order, 2, *position))]
    assert [s.batches for _, s in steps] + rest == whole


# ------------------------------------------------------------------ through the trainer
def _record_batches(monkeypatch):
    """Every training micro-batch the loop asks the objective for, as its items' prompt ids."""
    from cola_opt.llm import objective

    seen, real = [], objective.CandidateClassification.loss

    def loss(self, model, batch):
        seen.append([item.prompt_ids for item in batch])
        return real(self, model, batch)

    monkeypatch.setattr(objective.CandidateClassification, "loss", loss)
    return seen


def _wsc(model_dir, data_dir, out, **kw):
    from cola_opt.llm.config import FinetuneConfig

    args = dict(task="wsc", model=str(model_dir), data_dir=str(data_dir), n_train=24, n_dev=4, n_test=8, epochs=2,
                batch_size=4, method="lora", lr=1e-3, autocast="none", progress=False, threads=1, output_dir=str(out))
    return FinetuneConfig(**{**args, **kw})


def test_trainer_visits_the_bucketed_order_of_each_seed_reproducibly(tiny_model_dir, super_glue_dir, tmp_path,
                                                                     monkeypatch, deterministic):
    """The batches trained on are bucketed_batches of the items' lengths, the same in every run of a seed (whatever
    the global RNG), another order for another seed; the data drawn does not depend on the batch order."""
    import torch

    from cola_opt.llm.models import load_model
    from cola_opt.llm.plan import draw
    from cola_opt.llm.trainer import finetune, make_batch_order, make_objective

    seen = _record_batches(monkeypatch)
    kw = dict(n_train=64, epochs=1)  # 64 // (4 x 4) = 4 micro-batches per mega-batch: bucketing at work
    first = finetune(_wsc(tiny_model_dir, super_glue_dir, tmp_path / "a", **kw))
    runs = [list(seen)]
    seen.clear()
    torch.manual_seed(1234)  # the order owes nothing to the global RNG
    second = finetune(_wsc(tiny_model_dir, super_glue_dir, tmp_path / "b", **kw))
    runs.append(list(seen))
    assert runs[0] == runs[1] and first["train_loss"] == second["train_loss"]

    cfg = _wsc(tiny_model_dir, super_glue_dir, tmp_path / "c", **kw)
    cfg.validate()
    _, tok = load_model(cfg.model)
    objective = make_objective(cfg, tok)
    items = objective.encode(draw(cfg).train)
    order = make_batch_order(cfg, objective, items)
    expected = [[items[i].prompt_ids for i in b] for e in range(cfg.epochs) for b in order(e)]
    assert runs[0] == expected
    lengths = [objective.length(x) for x in items]
    assert lengths == [len(x.prompt_ids) for x in items]  # WSC's candidates are one token: the prompt is the forward
    bucketed = [b for e in range(cfg.epochs) for b in order(e)]
    plain = [b for e in range(cfg.epochs) for b in shuffled_batches(len(items), cfg.batch_size, cfg.seed, e)]
    assert padding_fraction(lengths, bucketed) < padding_fraction(lengths, plain)

    seen.clear()
    other = finetune(_wsc(tiny_model_dir, super_glue_dir, tmp_path / "d", seed=1, **kw))
    assert seen != runs[0]
    seen.clear()
    unbucketed = finetune(_wsc(tiny_model_dir, super_glue_dir, tmp_path / "e", bucket_by_length=False, **kw))
    assert seen == [[items[i].prompt_ids for i in b] for b in shuffled_batches(len(items), 4, 0, 0)]
    assert unbucketed["data_fingerprint"] == first["data_fingerprint"] != other["data_fingerprint"]


def test_bucketed_run_resumed_after_a_crash_is_bitwise_the_uninterrupted_run(tiny_model_dir, super_glue_dir, tmp_path,
                                                                             monkeypatch, deterministic):
    """Crash in epoch 2 (checkpoint every 5 steps), resume: the same batches from the checkpoint on, the same losses
    and test predictions, bit for bit."""
    from cola_opt.llm import objective
    from cola_opt.llm.trainer import finetune

    seen = _record_batches(monkeypatch)
    whole = finetune(_wsc(tiny_model_dir, super_glue_dir, tmp_path / "whole", checkpoint_every=5))
    whole_batches = list(seen)
    seen.clear()
    calls, real = [0], objective.classification_loss

    def crash_at_step_9(scores, labels):
        calls[0] += 1
        if calls[0] == 9:
            raise RuntimeError("simulated crash")
        return real(scores, labels)

    monkeypatch.setattr(objective, "classification_loss", crash_at_step_9)
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune(_wsc(tiny_model_dir, super_glue_dir, tmp_path / "crash", checkpoint_every=5))
    monkeypatch.setattr(objective, "classification_loss", real)
    seen.clear()
    resumed = finetune(_wsc(tiny_model_dir, super_glue_dir, tmp_path / "crash", checkpoint_every=5))
    assert resumed["resumed_from"] == [5]
    assert seen == whole_batches[5:]  # steps 6..12: 12 steps of one micro-batch each
    assert resumed["train_loss"] == whole["train_loss"]  # floats, exactly
    assert resumed["test"]["predictions"] == whole["test"]["predictions"]
    assert resumed["test"]["loss"] == whole["test"]["loss"]
