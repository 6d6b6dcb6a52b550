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
