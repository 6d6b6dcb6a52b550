"""Bad input gets one ValueError that names the bad value, before any work; numpy scalars are accepted.

Each case is the construction (or the call of ``minimize``) alone: nothing here runs a
solver past its first link, so the file takes about a second.
"""

import csv
import json
import math
import os

import numpy as np
import pytest
import torch

from cola_opt.chain.schedules import epoch_knots, step_down_ranks, uniform_knots, validate_knots
from cola_opt.chain.sites import TensorSite
from cola_opt.fw.oracles import BlockLMO, ExactLMO, InexactOracle
from cola_opt.fw.refine import FactorRefinement
from cola_opt.fw.result import Trace, TraceRow
from cola_opt.fw.sets import NuclearBall
from cola_opt.fw.solver import ChainSolver, minimize
from cola_opt.fw.step_sizes import Backtracking, Constant, OpenLoop, ShortStep
from cola_opt.objectives import (
    CauchyCompletion,
    IndefiniteLeastSquares,
    MatrixCompletion,
    MatrixLeastSquares,
    MatrixSensing,
    MultiResponseLogistic,
    problems,
)

torch.set_num_threads(1)
NAN, INF = math.nan, math.inf


def _refused(call, *fragments):
    """``call()`` raises a ValueError (not a subclass from deep inside) whose message has every fragment."""
    with pytest.raises(ValueError) as info:
        call()
    assert type(info.value) is ValueError, type(info.value)
    for frag in fragments:
        assert frag in str(info.value), str(info.value)


@pytest.fixture(scope="module")
def obj():
    return problems.least_squares(5, 4, seed=0).objective


# ----------------------------------------------------------------- minimize: stopping settings
@pytest.mark.parametrize("kw,fragments", [
    ({"max_iter": NAN, "tol": None}, ("max_iter", "nan")),
    ({"max_iter": 2.5}, ("max_iter", "2.5")),
    ({"max_iter": -1}, ("max_iter", "-1")),
    ({"max_iter": True}, ("max_iter", "True")),
    ({"max_iter": "5"}, ("max_iter", "'5'")),
    ({"max_iter": 3, "tol": NAN}, ("tol", "nan")),
    ({"max_iter": 3, "tol": -1e-3}, ("tol", "-0.001")),
    ({"max_iter": 3, "tol": INF}, ("tol", "inf")),
    ({"max_iter": 3, "time_limit": NAN}, ("time_limit", "nan")),
    ({"max_iter": 3, "time_limit": 0}, ("time_limit", "0")),
    ({"max_iter": 3, "time_limit": -2.0}, ("time_limit", "-2.0")),
    ({"max_iter": 3, "callback": 3}, ("callback", "3")),
    ({"max_iter": 3, "progress": "bar"}, ("progress", "'bar'")),
])
def test_minimize_refuses_bad_stopping_settings(obj, kw, fragments):
    _refused(lambda: minimize(obj, constraint=NuclearBall(1.0), **kw), *fragments)


def test_solver_run_checks_its_settings_too(obj):
    solver = ChainSolver(obj, constraint=NuclearBall(1.0))
    _refused(lambda: solver.run(float("nan")), "max_iter", "nan")
    assert solver.trace.rows == []  # refused before the first measurement


def test_numpy_integers_and_infinite_time_limit_are_accepted(obj):
    res = minimize(obj, constraint=NuclearBall(1.0), max_iter=np.int64(2), tol=None, time_limit=INF, seed=np.int32(0))
    assert res.nit == 2 and res.status == 1


# ----------------------------------------------------------------- minimize: the other arguments
@pytest.mark.parametrize("kw,fragments", [
    ({"gap_set": "x"}, ("gap_set", "'x'")),
    ({"constraint": "ball"}, ("constraint", "'ball'")),
    ({"refine": "x"}, ("refine", "'x'")),
    ({"oracle": "lmo"}, ("oracle", "'lmo'")),
    ({"svd": "x"}, ("svd", "'x'")),
    ({"record_rank": 1}, ("record_rank", "1")),
    ({"seed": -1}, ("seed", "-1")),
    ({"seed": 1.5}, ("seed", "1.5")),
])
def test_minimize_refuses_bad_arguments(obj, kw, fragments):
    kw = {"constraint": NuclearBall(1.0), **kw}
    _refused(lambda: minimize(obj, max_iter=3, **kw), *fragments)


@pytest.mark.parametrize("x0,fragments", [
    (np.full((5, 4), NAN), ("x0", "nan")),
    (torch.full((5, 4), INF), ("x0", "inf")),
    (np.full((5, 4), 1e300), ("x0", "float32", "inf")),  # overflows the chain's float32
    (np.ones((5, 4), complex), ("x0", "complex")),
    ("abc", ("x0", "<U3")),
    (np.zeros((4, 5)), ("x0", "(4, 5)")),
])
def test_minimize_refuses_a_bad_start(obj, x0, fragments):
    _refused(lambda: minimize(obj, x0, constraint=NuclearBall(1.0), max_iter=3), *fragments)


# ----------------------------------------------------------------- schedules
@pytest.mark.parametrize("call,fragments", [
    (lambda: uniform_knots(NAN, 2), ("total_steps", "nan")),
    (lambda: uniform_knots(INF, 2), ("total_steps", "inf")),
    (lambda: uniform_knots(10.0, 2), ("total_steps", "10.0")),
    (lambda: validate_knots([1], NAN), ("total_steps", "nan")),
    (lambda: validate_knots([1], True), ("total_steps", "True")),
    (lambda: validate_knots(5), ("knot_steps", "5")),
    (lambda: validate_knots([True]), ("knot step", "True")),
    (lambda: epoch_knots(NAN, 3), ("steps_per_epoch", "nan")),
    (lambda: epoch_knots(10, 2.5), ("epochs", "2.5")),
    (lambda: epoch_knots(10, 3, every=0), ("every", "0")),
    (lambda: step_down_ranks(8, NAN, 3), ("later_rank", "nan")),
    (lambda: step_down_ranks(8.0, 2, 3), ("first_rank", "8.0")),
    (lambda: step_down_ranks(8, 2, INF), ("chain_length", "inf")),
])
def test_schedules_refuse_non_integers(call, fragments):
    _refused(call, *fragments)


def test_schedules_accept_numpy_integers_and_return_python_ints():
    assert validate_knots([np.int64(3)]) == (3,)
    assert validate_knots([np.int32(2), 5], np.int64(10)) == (2, 5)
    assert uniform_knots(np.int64(10), np.int16(2)) == (5,)
    assert epoch_knots(np.int64(10), 3) == (10, 20)
    assert step_down_ranks(np.int64(8), 2, 2) == (8, 2)
    assert all(type(k) is int for k in validate_knots([np.int64(3), np.uint8(4)]))


# ----------------------------------------------------------------- TensorSite
@pytest.mark.parametrize("kw,fragments", [
    ({"rank": True}, ("rank", "True")),
    ({"rank": 2.0}, ("rank", "2.0")),
    ({"rank": 4}, ("rank", "4")),
    ({"lora_alpha": 0}, ("lora_alpha", "0")),
    ({"lora_alpha": -8}, ("lora_alpha", "-8")),
    ({"lora_alpha": NAN}, ("lora_alpha", "nan")),
    ({"lora_alpha": INF}, ("lora_alpha", "inf")),
    ({"lora_alpha": "16"}, ("lora_alpha", "'16'")),
])
def test_tensor_site_refuses_bad_rank_and_alpha(kw, fragments):
    kw = {"rank": 1, **kw}
    _refused(lambda: TensorSite(torch.zeros(3, 3), **kw), *fragments)


@pytest.mark.parametrize("weight,fragments", [
    (np.zeros((3, 3), int), ("weight", "int64")),
    ([[1.0, 2.0]], ("weight", "list")),
    (np.broadcast_to(np.zeros(3), (3, 3)), ("weight", "read-only")),
    (np.zeros((3, 3))[::-1], ("weight", "strides")),
    (torch.zeros(3), ("weight", "torch.Size([3])")),
])
def test_tensor_site_refuses_a_bad_weight(weight, fragments):
    _refused(lambda: TensorSite(weight, 1), *fragments)


def test_tensor_site_shares_a_numpy_weight_in_place():
    a = np.zeros((4, 3), np.float32)
    site = TensorSite(a, np.int64(2), lora_alpha=np.float32(4.0))
    site.weight.add_(1.0)
    assert a[0, 0] == 1.0 and site.rank == 2 and site.scaling == 2.0


# ----------------------------------------------------------------- oracles, step sizes, refinement
@pytest.mark.parametrize("call,fragments", [
    (lambda: InexactOracle(2, 2, lora_alpha=0), ("lora_alpha", "0")),
    (lambda: InexactOracle(2, 2, lora_alpha=-1.0), ("lora_alpha", "-1.0")),
    (lambda: InexactOracle(2, 2, lora_alpha=NAN), ("lora_alpha", "nan")),
    (lambda: InexactOracle(2, 2, lora_alpha=INF), ("lora_alpha", "inf")),
    (lambda: InexactOracle(2, 2, lr="0.1"), ("lr", "'0.1'")),
    (lambda: InexactOracle(2, 2, momentum=NAN), ("momentum", "nan")),
    (lambda: InexactOracle(2, 2.0), ("inner_steps", "2.0")),
    (lambda: BlockLMO(2, svd="x"), ("svd", "'x'")),
    (lambda: BlockLMO(True), ("rank", "True")),
    (lambda: BlockLMO(2, curvature=NAN), ("curvature", "nan")),
    (lambda: ExactLMO(svd=None), ("svd", "None")),
    (lambda: OpenLoop(INF), ("ell", "inf")),
    (lambda: OpenLoop(NAN), ("ell", "nan")),
    (lambda: Backtracking(max_tries=0), ("max_tries", "0")),
    (lambda: Backtracking(max_tries=-3), ("max_tries", "-3")),
    (lambda: Backtracking(max_tries=2.5), ("max_tries", "2.5")),
    (lambda: Backtracking(increase=INF), ("increase", "inf")),
    (lambda: Backtracking(decrease=NAN), ("decrease", "nan")),
    (lambda: Backtracking(L0=INF), ("L0", "inf")),
    (lambda: ShortStep(L="1"), ("L", "'1'")),
    (lambda: Constant("1"), ("constant step", "'1'")),
    (lambda: NuclearBall(True), ("tau", "True")),
    (lambda: FactorRefinement(growth=NAN), ("growth", "nan")),
    (lambda: FactorRefinement(max_backtracks=0), ("max_backtracks", "0")),
    (lambda: FactorRefinement(rtol=-1.0), ("rtol", "-1.0")),
])
def test_oracles_steps_and_refinement_refuse_bad_settings(call, fragments):
    _refused(call, *fragments)


def test_step_rule_and_oracle_accept_numpy_numbers(obj):
    assert Constant(np.float32(0.5)).value == 0.5
    assert InexactOracle(np.int64(2), np.int64(3), lora_alpha=np.float64(8.0)).lora_alpha == 8.0
    res = minimize(obj, constraint=NuclearBall(1.0), step_size=np.float32(0.5), max_iter=1, tol=None)
    assert res.trace.rows[0].step_size == 0.5


# ----------------------------------------------------------------- objectives
A, Y = np.ones((3, 2)), np.ones((3, 4))


@pytest.mark.parametrize("call,fragments", [
    (lambda: MatrixLeastSquares(np.where(np.eye(3, 2) > 0, NAN, 1.0), Y), ("MatrixLeastSquares", "A", "nan")),
    (lambda: MatrixLeastSquares(A, np.full((3, 4), INF)), ("MatrixLeastSquares", "Y", "inf")),
    (lambda: MatrixLeastSquares(np.ones((0, 2)), np.ones((0, 4))), ("A", "(0, 2)")),
    (lambda: MatrixLeastSquares([["a", "b"]], [[1.0]]), ("A", "<U1")),
    (lambda: MatrixLeastSquares(torch.ones(3, 2, dtype=torch.complex64), Y), ("A", "complex")),
    (lambda: IndefiniteLeastSquares(A, Y, NAN), ("mu", "nan")),
    (lambda: IndefiniteLeastSquares(A, Y, INF), ("mu", "inf")),
    (lambda: IndefiniteLeastSquares(A, Y, -1), ("mu", "-1")),
    (lambda: MatrixSensing(np.ones((1, 6)), np.ones(1), (-2, -3)), ("shape", "(-2, -3)")),
    (lambda: MatrixSensing(np.ones((1, 6)), np.ones(1), (2.0, 3)), ("shape", "(2.0, 3)")),
    (lambda: MatrixSensing(np.full((1, 6), NAN), np.ones(1), (2, 3)), ("ops", "nan")),
    (lambda: MatrixSensing(np.ones((0, 6)), np.ones(0), (2, 3)), ("ops", "(0, 6)")),
    (lambda: MatrixCompletion([0], [0], [1.0], (-3, 3)), ("shape", "(-3, 3)")),
    (lambda: MatrixCompletion([0.7], [0], [1.0], (3, 3)), ("rows", "float64")),
    (lambda: MatrixCompletion([0], [True], [1.0], (3, 3)), ("cols", "bool")),
    (lambda: MatrixCompletion([0], [0], [NAN], (3, 3)), ("values", "nan")),
    (lambda: MatrixCompletion(np.array([2**32]), np.array([0]), [1.0], (3, 3)), ("outside the shape",)),
    (lambda: CauchyCompletion([0], [0], [1.0], (3, 3), c=INF), ("c", "inf")),
    (lambda: MultiResponseLogistic(np.full((3, 2), NAN), np.ones((3, 2))), ("Z", "nan")),
    (lambda: MultiResponseLogistic(np.ones((0, 2)), np.ones((0, 2))), ("Z", "(0, 2)")),
])
def test_objectives_check_their_data_at_construction(call, fragments):
    _refused(call, *fragments)


@pytest.mark.parametrize("name", ["lstsq", "indefinite", "sensing", "logistic", "completion", "cauchy"])
def test_loss_and_curvature_check_the_shape(name):
    make = {"lstsq": lambda: problems.least_squares(5, 4, seed=0),
            "indefinite": lambda: problems.indefinite_least_squares(5, 4, seed=0),
            "sensing": lambda: problems.matrix_sensing(3, 2, seed=0),
            "logistic": lambda: problems.multi_response_logistic(4, 3, seed=0),
            "completion": lambda: problems.matrix_completion(5, 4, rank=2, seed=0),
            "cauchy": lambda: problems.cauchy_completion(5, 4, rank=2, seed=0)}[name]
    obj = make().objective
    wrong = torch.zeros(obj.shape[0] + 1, obj.shape[1])
    _refused(lambda: obj.loss(wrong), "W", str(tuple(obj.shape)), str(tuple(wrong.shape)))
    if obj.quadratic:
        _refused(lambda: obj.curvature(wrong.numpy()), "D", str(tuple(wrong.shape)))


@pytest.mark.parametrize("call,fragments", [
    (lambda: problems.least_squares(2.5, 3), ("m", "2.5")),
    (lambda: problems.matrix_completion(5, noise=NAN), ("noise", "nan")),
    (lambda: problems.matrix_sensing(3, 3, tau_ratio=INF), ("tau_ratio", "inf")),
    (lambda: problems.multi_response_logistic(4, 3, seed=-1), ("seed", "-1")),
    (lambda: problems.cauchy_completion(5, outliers=2.0), ("outliers", "2.0")),
])
def test_generators_check_their_settings(call, fragments):
    _refused(call, *fragments)


# ----------------------------------------------------------------- atomic trace files
def _trace():
    return Trace([TraceRow(iteration=i, primal=1.0 / (i + 1), fw_gap=NAN if i == 1 else 0.5, rank=i,
                           rank_exact=True, time=0.1 * i, inner_steps=0, grad_norm=1.0) for i in range(3)])


def test_trace_files_are_written_atomically(tmp_path):
    tr = _trace()
    tr.to_csv(tmp_path / "sub" / "t.csv")  # the directory is created
    tr.to_json(tmp_path / "t.json", note="x")
    with open(tmp_path / "sub" / "t.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:3] == ["iteration", "primal", "fw_gap"] and len(rows) == 4
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["note"] == "x" and data["trace"][1]["fw_gap"] is None
    # a failed write leaves the old file whole and no temporary file behind
    with pytest.raises(TypeError):
        tr.to_json(tmp_path / "t.json", bad=object())
    assert json.loads((tmp_path / "t.json").read_text()) == data
    assert sorted(os.listdir(tmp_path)) == ["sub", "t.json"] and os.listdir(tmp_path / "sub") == ["t.csv"]
