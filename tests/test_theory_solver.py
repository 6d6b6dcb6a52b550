"""The chain loop on explicit objectives: cvxpy optima, settings, invariants, resumption."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cola_opt.chain.sites import TensorSite
from cola_opt.fw.oracles import BlockLMO, ExactLMO, InexactOracle
from cola_opt.fw.refine import FactorRefinement
from cola_opt.fw.sets import NuclearBall, Unconstrained
from cola_opt.fw.solver import ChainSolver, minimize
from cola_opt.fw.step_sizes import Backtracking, Constant, ExactLineSearch, OpenLoop
from cola_opt.objectives import problems
from cola_opt.objectives.reference import certify, reference_optimum

torch.set_num_threads(1)
FEW = settings(max_examples=12, deadline=None)


def _rel_gap(f, lower):
    return (f - lower) / abs(lower)


CVXPY_CASES = {
    "completion-20": (lambda: problems.matrix_completion(20, seed=1), "CLARABEL"),
    "completion-50": (lambda: problems.matrix_completion(50, seed=2, noise=0.1, tau_ratio=0.5), "SCS"),
    "lstsq": (lambda: problems.least_squares(15, 10, seed=3), "CLARABEL"),
    "sensing": (lambda: problems.matrix_sensing(8, 6, seed=4), "CLARABEL"),
    "logistic": (lambda: problems.multi_response_logistic(12, 6, seed=5), "CLARABEL"),
}


@pytest.mark.parametrize("case", sorted(CVXPY_CASES))
def test_refined_fw_reaches_relative_gap_1e3_of_cvxpy(case):
    build, solver = CVXPY_CASES[case]
    pb = build()
    ref = reference_optimum(pb.objective, pb.tau, pb.W0, solver=solver, eps=1e-8)
    assert ref.width <= 1e-5 * abs(ref.upper)  # the reference is certified tight
    rule = ExactLineSearch() if pb.objective.quadratic else Backtracking()
    res = minimize(pb.objective, pb.W0, constraint=NuclearBall(pb.tau), step_size=rule, refine=FactorRefinement(),
                   max_iter=200, callback=lambda row, s: _rel_gap(row.primal, ref.lower) > 1e-3)
    assert res.status == 2, res.message
    assert _rel_gap(res.fun, ref.lower) <= 1e-3
    assert res.fun >= ref.lower  # no iterate beats a certified lower bound
    assert NuclearBall(pb.tau).contains(res.x - pb.W0, rtol=1e-5)


@pytest.mark.parametrize("variant", ["vanilla", "away", "pairwise"])
@pytest.mark.parametrize("case", ["logistic", "lstsq-interior"])
def test_fw_variants_reach_relative_gap_1e3(variant, case):
    """Measured here: 96-191 links (logistic: vanilla 184, away 96, pairwise 111)."""
    pb = problems.multi_response_logistic(12, 6, seed=5) if case == "logistic" else \
        problems.least_squares(12, 8, seed=6, tau_ratio=2.0)
    ref = reference_optimum(pb.objective, pb.tau, pb.W0)
    rule = ExactLineSearch() if pb.objective.quadratic else Backtracking()
    res = minimize(pb.objective, pb.W0, constraint=NuclearBall(pb.tau), step_size=rule, variant=variant,
                   max_iter=1000, callback=lambda row, s: _rel_gap(row.primal, ref.lower) > 1e-3)
    assert res.status == 2 and _rel_gap(res.fun, ref.lower) <= 1e-3
    assert {row.direction for row in res.trace.rows[:-1]} <= {"fw", variant}
    if variant == "pairwise" or (variant == "away" and case == "logistic"):
        assert any(row.direction == variant for row in res.trace.rows)


@FEW
@given(m=st.integers(2, 8), n=st.integers(2, 8), seed=st.integers(0, 10_000),
       variant=st.sampled_from(["vanilla", "away", "pairwise", "refine"]))
def test_fw_gap_bounds_the_primal_gap(m, n, seed, variant):
    pb = problems.matrix_completion(m, n, rank=1, fraction=0.6, noise=0.1, tau_ratio=0.7, seed=seed)
    ref = reference_optimum(pb.objective, pb.tau, pb.W0)
    kw = dict(refine=FactorRefinement(5)) if variant == "refine" else dict(variant=variant)
    res = minimize(pb.objective, pb.W0, constraint=NuclearBall(pb.tau), step_size=ExactLineSearch(), max_iter=30,
                   tol=None, **kw)
    for row in res.trace.rows:
        assert row.fw_gap >= row.primal - ref.upper - 1e-6 * abs(row.primal)


@FEW
@given(m=st.integers(1, 40), n=st.integers(1, 40), r=st.integers(1, 4), seed=st.integers(0, 10_000),
       exact=st.booleans())
def test_rank_of_residual_is_at_most_links_times_rank(m, n, r, seed, exact):
    r = min(r, m, n)
    pb = problems.matrix_completion(m, n, rank=1, fraction=0.5, noise=0.2, tau_ratio=0.8, seed=seed)
    if exact:
        kw = dict(oracle=ExactLMO(), constraint=NuclearBall(pb.tau)) if r == 1 else \
             dict(oracle=BlockLMO(r), constraint=NuclearBall(pb.tau))
    else:
        kw = dict(oracle=InexactOracle(r, 3, lr=0.1), constraint=Unconstrained())
    res = minimize(pb.objective, pb.W0, max_iter=4, record_rank="exact", tol=None, seed=seed, **kw)
    for row in res.trace.rows:
        assert row.rank <= row.iteration * r


@FEW
@given(m=st.integers(1, 12), n=st.integers(1, 12), r=st.integers(1, 4), alpha=st.sampled_from([None, 1.0, 16.0]),
       seed=st.integers(0, 10_000))
def test_knot_keeps_a_small_torch_models_function(m, n, r, alpha, seed):
    from cola_opt.chain.optimizer import ResidualLowRankOptimizer

    r = min(r, m, n)
    g = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(n, m, bias=True)
    site = TensorSite(layer.weight.data, r, lora_alpha=alpha, generator=g)
    head = torch.nn.Linear(m, 2)
    chain = ResidualLowRankOptimizer([site], torch.optim.Adam(list(site.factors()), lr=0.05), seed=seed)
    x = torch.randn(6, n, generator=g)

    def model():
        return head(torch.relu(torch.nn.functional.linear(x, site.effective_weight(), layer.bias)))

    for _ in range(2):
        model().square().sum().backward()
        chain.step()
        chain.zero_grad()
        with torch.no_grad():
            before = model()
        chain.tie_knot()
        with torch.no_grad():
            after = model()
        torch.testing.assert_close(after, before, atol=1e-5 * (1 + float(before.abs().max())), rtol=0)
        assert float(site.lora_B.abs().max()) == 0.0
        assert all(len(chain.optimizer.state.get(p, {})) == 0 for p in site.factors())


CONFIGS = {
    "fw-backtracking": lambda pb: dict(constraint=NuclearBall(pb.tau), step_size=Backtracking()),
    "cola-adam": lambda pb: dict(oracle=InexactOracle(2, 4, lr=0.05), constraint=Unconstrained(),
                                 gap_set=NuclearBall(pb.tau)),
    "cola-linear-sgd": lambda pb: dict(oracle=InexactOracle(2, 4, optimizer="sgd", lr=2.0, momentum=0.5,
                                                            target="linear"), constraint=NuclearBall(pb.tau)),
    "away-refine": lambda pb: dict(constraint=NuclearBall(pb.tau), step_size=ExactLineSearch(), variant="away",
                                   refine=FactorRefinement(5)),
}


@FEW
@given(config=st.sampled_from(sorted(CONFIGS)), t1=st.integers(0, 4), t2=st.integers(1, 4), seed=st.integers(0, 1000))
def test_state_dict_round_trip_reproduces_the_rest_of_a_run_bit_for_bit(config, t1, t2, seed):
    pb = problems.matrix_completion(9, 7, rank=2, fraction=0.5, noise=0.1, seed=seed)
    full = ChainSolver(pb.objective, pb.W0, seed=seed, **CONFIGS[config](pb))
    full.run(t1 + t2, tol=None)
    first = ChainSolver(pb.objective, pb.W0, seed=seed, **CONFIGS[config](pb))
    first.run(t1, tol=None)
    state = first.state_dict()
    resumed = ChainSolver(pb.objective, pb.W0, seed=seed + 1, **CONFIGS[config](pb))  # a different seed: all in state
    resumed.load_state_dict(state)
    resumed.run(t1 + t2, tol=None)
    assert torch.equal(full.W, resumed.W)
    assert torch.equal(full.site.lora_A, resumed.site.lora_A)
    for a, b in zip(full.trace.rows, resumed.trace.rows):
        assert (a.primal, a.fw_gap, a.step_size) == (b.primal, b.fw_gap, b.step_size) or \
            (np.isnan(a.step_size) and np.isnan(b.step_size) and a.primal == b.primal)
    assert len(full.trace) == len(resumed.trace) == t1 + t2 + 1


def _best_rank_r_value(obj, r):
    """min over rank-r X of 1/2 ||A X - Y||^2 (A full column rank): Eckart-Young on Q^T Y."""
    Q, _ = np.linalg.qr(obj.A)
    QY = Q.T @ obj.Y
    s = np.linalg.svd(QY, compute_uv=False)
    return 0.5 * (np.sum((obj.Y - Q @ QY) ** 2) + np.sum(s[r:] ** 2))


def test_single_link_lora_plateaus_and_the_chain_does_not():
    pb = problems.least_squares(20, 12, rank=4, noise=0.3, seed=7)
    obj = pb.objective
    f_star = obj.value(obj.minimizer())
    r = 2
    plateau = _best_rank_r_value(obj, r)
    assert plateau - f_star > 0.05 * abs(f_star)  # the optimum has rank > r
    lora = minimize(obj, pb.W0, oracle=InexactOracle(r, 3000, lr=0.02), max_iter=1)
    cola = minimize(obj, pb.W0, oracle=InexactOracle(r, 150, lr=0.02), max_iter=20)
    gd = minimize(obj, pb.W0, oracle=InexactOracle(12, 1, optimizer="sgd", lr=1.0 / obj.smoothness), max_iter=3000)
    assert lora.fun >= plateau - 1e-6 * abs(plateau)  # a rank-2 link cannot beat the best rank-2 point
    assert lora.fun <= plateau + 0.02 * (plateau - f_star)  # ... and it gets there: the plateau
    assert cola.fun < plateau - 0.9 * (plateau - f_star)  # the chain passes it
    assert gd.fun - f_star < 0.1 * (plateau - f_star)
    assert lora.chain_length == 1 and cola.chain_length == 20
    assert cola.trace.rank[-1] > r  # high rank from rank-2 links


def test_every_weight_update_is_a_knot_of_the_chain(monkeypatch):
    calls = []
    original = TensorSite.merge
    monkeypatch.setattr(TensorSite, "merge", lambda self, u: (calls.append(1), original(self, u))[1])
    pb = problems.matrix_completion(10, seed=8)
    for kw, per_link in [(dict(), 1), (dict(variant="pairwise", step_size=ExactLineSearch()), 1),
                         (dict(refine=FactorRefinement(3)), 2)]:
        calls.clear()
        res = minimize(pb.objective, pb.W0, constraint=NuclearBall(pb.tau), max_iter=7, tol=None, **kw)
        assert len(calls) == res.chain_length == per_link * 7
        steps = [k.step_size for k in res.knots][::per_link]
        assert steps == [row.step_size for row in res.trace.rows[:-1]]


def test_certify_brackets_the_optimum_and_result_exports(tmp_path):
    pb = problems.least_squares(8, 6, seed=9)
    res = minimize(pb.objective, pb.W0, constraint=NuclearBall(pb.tau), step_size=ExactLineSearch(), max_iter=50)
    lower, upper, _ = certify(pb.objective, res.x, pb.tau)
    ref = reference_optimum(pb.objective, pb.tau)
    assert lower <= ref.upper + 1e-9 and ref.lower <= upper + 1e-9
    res.trace.to_csv(tmp_path / "t.csv")
    res.trace.to_json(tmp_path / "t.json", name="x")
    rows = json.loads((tmp_path / "t.json").read_text())["trace"]
    assert len(rows) == len(res.trace) and rows[0]["step_size"] == res.trace.step_size[0] and rows[-1]["step_size"] is None
    assert set(res) >= {"x", "fun", "fw_gap", "nit", "status", "success", "trace", "knots"}
    assert res.trace.primal == res.trace.column("primal")


def test_bad_combinations_raise_before_work():
    pb = problems.matrix_completion(6, seed=10)
    obj = pb.objective
    with pytest.raises(ValueError, match="bounded constraint"):
        minimize(obj, oracle=ExactLMO())
    with pytest.raises(ValueError, match="target='linear'"):
        minimize(obj, oracle=InexactOracle(2, 3), constraint=NuclearBall(1.0))
    with pytest.raises(ValueError, match="variant 'sideways'"):
        minimize(obj, constraint=NuclearBall(1.0), variant="sideways")
    with pytest.raises(ValueError, match="needs the exact rank-1 LMO"):
        minimize(obj, oracle=BlockLMO(2), constraint=NuclearBall(1.0), variant="away")
    with pytest.raises(ValueError, match="quadratic"):
        lg = problems.multi_response_logistic(5, 3).objective
        minimize(lg, constraint=NuclearBall(1.0), step_size=ExactLineSearch())
    with pytest.raises(ValueError, match="oracle rank 9"):
        minimize(obj, oracle=InexactOracle(9, 2))
    with pytest.raises(ValueError, match="x0 has shape"):
        minimize(obj, np.zeros((2, 2)), constraint=NuclearBall(1.0))
    with pytest.raises(ValueError, match="refinement"):
        minimize(obj, oracle=InexactOracle(2, 2), refine=FactorRefinement())
    with pytest.raises(ValueError, match="max_iter = -1"):
        minimize(obj, constraint=NuclearBall(1.0), max_iter=-1)


def test_default_step_is_one_without_a_set_and_open_loop_on_the_ball():
    pb = problems.matrix_completion(8, 6, rank=2, seed=11)
    cola = ChainSolver(pb.objective, oracle=InexactOracle(2, 3, lr=0.05))
    assert type(cola.rule) is Constant and cola.rule.value == 1.0
    res = cola.run(3, tol=None)
    assert [(k.step_size, k.shrink) for k in res.knots] == [(1.0, 0.0)] * 3
    fw = minimize(pb.objective, constraint=NuclearBall(pb.tau), max_iter=5, tol=None)
    assert type(fw.solver.rule) is OpenLoop
    assert [row.step_size for row in fw.trace.rows[:-1]] == [2.0 / (t + 2.0) for t in range(5)]
    assert [k.shrink for k in fw.knots] == [1.0] * 5
