import pytest

from cola_opt.chain.schedules import epoch_knots, step_down_ranks, uniform_knots, validate_knots


def test_uniform_knots_split_evenly():
    assert uniform_knots(90, 3) == (30, 60)
    assert uniform_knots(100, 3) == (33, 67)
    assert uniform_knots(10, 1) == ()
    assert uniform_knots(2, 2) == (1,)


@pytest.mark.parametrize("length", [0, -1, 1.5, True])
def test_chain_length_below_one_is_refused(length):
    with pytest.raises(ValueError, match="chain_length"):
        uniform_knots(10, length)


def test_more_links_than_steps_is_refused():
    with pytest.raises(ValueError, match="needs at least 5 optimizer steps"):
        uniform_knots(4, 5)


@pytest.mark.parametrize(
    "steps,total,match",
    [([5, 3], 10, "strictly increasing"), ([3, 3], 10, "strictly increasing"), ([0, 4], 10, "out of range"),
     ([4, 10], 10, "out of range"), ([4, 12], 10, "out of range"), ([2.5], 10, "not an integer")],
)
def test_bad_knot_steps_are_refused(steps, total, match):
    with pytest.raises(ValueError, match=match):
        validate_knots(steps, total)


def test_epoch_knots_and_step_down():
    assert epoch_knots(10, 5) == (10, 20, 30, 40)
    assert epoch_knots(10, 5, every=2) == (20, 40)
    assert step_down_ranks(8, 2, 2) == (8, 2)
