"""Step-size rules: formulas, exactness, and that line searches never increase f."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cola_opt.fw.step_sizes import Backtracking, Constant, ExactLineSearch, Line, OpenLoop, ShortStep, make_step_rule
from cola_opt.objectives import problems

torch.set_num_threads(1)
FAST = settings(max_examples=30, deadline=None)


def _line(obj, W, D, gamma_max=1.0, t=0):
    G = obj.gradient(W).toarray()
    return Line(t=t, f=obj.value(W), slope=float(np.vdot(G, D)), norm2=float(np.vdot(D, D)), gamma_max=gamma_max,
                smoothness=obj.smoothness, curvature=(lambda: obj.curvature(D)) if obj.quadratic else None,
                value_at=lambda g: obj.value(W + g * D))


def test_open_loop_and_constant_values():
    rule = OpenLoop()
    assert [rule(Line(t, 0, -1, 1)) for t in range(4)] == [1.0, 2 / 3, 0.5, 0.4]
    assert OpenLoop(3)(Line(1, 0, -1, 1)) == 0.75
    assert Constant(0.3)(Line(0, 0, -1, 1, gamma_max=0.2)) == 0.2


def test_short_step_formula():
    line = Line(0, 1.0, slope=-2.0, norm2=4.0, smoothness=0.25)
    assert ShortStep()(line) == 1.0  # 2 / (0.25 * 4) = 2, clipped
    assert ShortStep(L=2.0)(line) == 0.25
    with pytest.raises(ValueError, match="L"):
        ShortStep()(Line(0, 1.0, -1.0, 1.0))


QUADRATICS = [lambda s: problems.matrix_completion(8, 6, rank=2, fraction=0.5, seed=s).objective,
              lambda s: problems.least_squares(6, 5, seed=s).objective,
              lambda s: problems.indefinite_least_squares(6, 5, mu=1.5, seed=s).objective]


@FAST
@given(which=st.integers(0, 2), seed=st.integers(0, 10_000), gmax=st.floats(0.05, 5.0))
def test_exact_line_search_is_the_argmin_and_never_increases_f(which, seed, gmax):
    obj = QUADRATICS[which](seed % 7)
    rng = np.random.default_rng(seed)
    W, D = rng.standard_normal(obj.shape), rng.standard_normal(obj.shape)
    line = _line(obj, W, D, gmax)
    gamma = ExactLineSearch()(line)
    assert 0.0 <= gamma <= gmax
    f_new = obj.value(W + gamma * D)
    assert f_new <= line.f + 1e-9 * (1 + abs(line.f))
    grid = np.linspace(0, gmax, 401)
    assert f_new <= min(obj.value(W + g * D) for g in grid) + 1e-9 * (1 + abs(line.f))


@FAST
@given(seed=st.integers(0, 10_000), logistic=st.booleans())
def test_backtracking_never_increases_f_and_adapts_L(seed, logistic):
    pb = problems.multi_response_logistic(7, 4, seed=seed % 5) if logistic else problems.cauchy_completion(8, 7, seed=seed % 5)
    obj = pb.objective
    rng = np.random.default_rng(seed)
    W = rng.standard_normal(obj.shape)
    D = -obj.gradient(W).toarray() + 0.1 * rng.standard_normal(obj.shape)
    rule = Backtracking(L0=1e-3)
    line = _line(obj, W, D)
    gamma = rule(line)
    assert obj.value(W + gamma * D) <= line.f
    if line.slope < 0:
        assert gamma > 0
        assert obj.value(W + gamma * D) <= line.f + gamma * line.slope + 0.5 * gamma**2 * rule.L_est * line.norm2


def test_exact_line_search_on_negative_curvature_takes_the_better_end():
    line = Line(0, 0.0, slope=1.0, norm2=1.0, gamma_max=2.0, curvature=lambda: -4.0)
    assert ExactLineSearch()(line) == 2.0  # 2 - 8 < 0
    line = Line(0, 0.0, slope=1.0, norm2=1.0, gamma_max=0.1, curvature=lambda: -4.0)
    assert ExactLineSearch()(line) == 0.0
    with pytest.raises(ValueError, match="unbounded"):
        ExactLineSearch()(Line(0, 0.0, -1.0, 1.0, gamma_max=math.inf, curvature=lambda: -1.0))


def test_make_step_rule_and_bad_parameters():
    assert isinstance(make_step_rule("line_search"), ExactLineSearch)
    assert make_step_rule(0.5).value == 0.5
    with pytest.raises(ValueError, match="'armijo'"):
        make_step_rule("armijo")
    with pytest.raises(ValueError, match="ell = 0"):
        OpenLoop(0)
    with pytest.raises(ValueError, match="-1"):
        Constant(-1)
    with pytest.raises(ValueError, match="increase"):
        Backtracking(increase=0.5)
