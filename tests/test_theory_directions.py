"""One oracle verb, direction objects, the rules' needs, and the chain's shared helpers."""

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cola_opt.chain.optimizer import ResidualLowRankOptimizer
from cola_opt.chain.sites import TensorSite, storage_key
from cola_opt.checks import rank_in_range
from cola_opt.fw.link import Residual
from cola_opt.fw.oracles import BlockLMO, ExactLMO, FrozenFactors, InexactOracle
from cola_opt.fw.refine import FactorRefinement
from cola_opt.fw.sets import NuclearBall, Unconstrained
from cola_opt.fw.solver import DIRECTIONS, ChainSolver, minimize
from cola_opt.fw.step_sizes import ExactLineSearch, Line, OpenLoop, ShortStep, StepRule
from cola_opt.objectives import problems

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _state(pb, W0=None):
    """A measured LinkState of a fresh solver (the state an oracle's propose reads)."""
    solver = ChainSolver(pb.objective, W0, constraint=NuclearBall(pb.tau))
    solver.measure()
    return solver, solver.state


def test_every_oracle_answers_one_proposal_with_its_kind_shrink_and_largest_step():
    pb = problems.matrix_completion(9, 7, rank=2, fraction=0.6, seed=1)
    solver, state = _state(pb)
    sigma = np.linalg.svd(state.G.toarray(), compute_uv=False)
    fw = ExactLMO().propose(state)
    assert (fw.kind, fw.shrink, fw.gamma_max, fw.trained, fw.rank) == ("fw", 1.0, 1.0, False, 1)
    assert fw.value == pytest.approx(-pb.tau * sigma[0], rel=1e-9)
    assert np.linalg.svd(fw.B @ fw.A, compute_uv=False).sum() == pytest.approx(pb.tau, rel=1e-9)
    block = BlockLMO(3, curvature=1.0).propose(state)
    assert block.kind == "block" and block.rank <= 3 and block.shrink == 1.0
    assert np.linalg.svd(block.B @ block.A, compute_uv=False).sum() <= pb.tau * (1 + 1e-9)
    inexact = InexactOracle(2, 4, optimizer="sgd", lr=1.0, target="linear")
    linear = ChainSolver(pb.objective, oracle=inexact, constraint=NuclearBall(pb.tau))
    linear.measure()
    p = inexact.propose(linear.state)
    assert (p.kind, p.trained, p.steps, p.shrink, p.gamma_max) == ("inexact", True, 4, 1.0, 1.0)
    site = linear.site  # the proposal is the trained link itself
    np.testing.assert_allclose(p.B @ p.A, site.delta().double().numpy(), rtol=1e-6, atol=1e-7)
    assert p.oracle_error == pytest.approx(linear.state.G.inner_lowrank(p.B, p.A) + pb.tau * sigma[0], rel=1e-9)
    assert p.oracle_error >= -1e-9  # an approximate LMO is never better than the exact one
    cola = ChainSolver(pb.objective, oracle=InexactOracle(2, 3, lr=0.05))
    cola.measure()
    q = cola.oracle.propose(cola.state)
    assert (q.shrink, q.gamma_max, math.isnan(q.oracle_error)) == (0.0, math.inf, True)


@pytest.mark.parametrize("variant", ["away", "pairwise"])
def test_away_and_pairwise_steps_keep_the_atoms_equal_to_the_residual(variant):
    """After every link, the active set's atoms rebuild X = W - W0 (with W0 != 0) and their weights stay feasible."""
    pb = problems.least_squares(10, 8, rank=3, tau_ratio=0.6, seed=2)
    W0 = np.random.default_rng(3).standard_normal(pb.objective.shape).astype(np.float32)
    solver = ChainSolver(pb.objective, W0, constraint=NuclearBall(pb.tau), step_size=ExactLineSearch(),
                         variant=variant)
    kinds = set()
    for _ in range(40):
        solver.measure()
        solver.advance()
        kinds.add(solver.trace.rows[-1].direction)
        B, A = solver.atoms.factors()
        X = (solver.site.weight - solver.site.initial).double().numpy()
        np.testing.assert_allclose(B @ A, X, atol=2e-5 * max(1.0, np.abs(X).max()))
        assert solver.atoms.c.min(initial=0.0) >= 0.0 and solver.atoms.c.sum() <= pb.tau * (1 + 1e-9)
        assert solver.rank_bound == len(solver.atoms)
    assert variant in kinds  # the direction object was used, not only the FW step


def test_the_refinement_answers_one_proposal_and_the_solver_merges_it():
    pb = problems.matrix_completion(12, 9, rank=2, fraction=0.5, seed=4)
    res = minimize(pb.objective, constraint=NuclearBall(pb.tau), refine=FactorRefinement(5), max_iter=4, tol=None)
    assert [k.step_size for k in res.knots][1::2] == [1.0] * 4  # every other knot is the refined X, gamma = 1
    assert all(k.shrink == 1.0 for k in res.knots)
    assert sum(res.trace.refine_steps) > 0
    B, A = res.solver.atoms.factors()
    np.testing.assert_allclose(B @ A, res.x, atol=1e-5)


def test_directions_table_and_oracle_capabilities():
    assert set(DIRECTIONS) == {"vanilla", "away", "pairwise"}
    assert ExactLMO().atomic and not BlockLMO(2).atomic and not InexactOracle(2, 2).atomic
    assert NuclearBall(1.0).bounded and not Unconstrained().bounded and Unconstrained().tau is None
    pb = problems.matrix_completion(5, 4, seed=0)
    with pytest.raises(ValueError, match="oracle rank 5 must be an integer in \\[1, 4\\]"):
        minimize(pb.objective, oracle=BlockLMO(5), constraint=NuclearBall(1.0))


class _SpyRule(StepRule):
    def __init__(self, needs):
        self.needs, self.lines = needs, []

    def __call__(self, line: Line) -> float:
        self.lines.append(line)
        return 0.5


def test_the_line_carries_only_what_the_rule_needs():
    pb = problems.matrix_completion(8, 7, rank=2, seed=5)
    for needs, has_norm, has_value in [((), False, False), (("norm2",), True, False), (("value",), False, True)]:
        rule = _SpyRule(needs)
        minimize(pb.objective, constraint=NuclearBall(pb.tau), step_size=rule, max_iter=2, tol=None)
        line = rule.lines[-1]
        assert math.isfinite(line.norm2) == has_norm and (line.value_at is not None) == has_value
        assert line.slope < 0  # a FW direction descends: slope = -g_t
    full = _SpyRule(("norm2", "value"))
    minimize(pb.objective, constraint=NuclearBall(pb.tau), step_size=full, max_iter=2, tol=None)
    line = full.lines[-1]  # compare with the line's values: f(W + g d) from value_at against a dense d
    assert line.value_at(0.0) == pytest.approx(line.f, rel=1e-6)
    assert line.value_at(1e-4) == pytest.approx(line.f + 1e-4 * line.slope + 0.5e-8 * line.norm2, rel=1e-6)


def test_rule_needs_are_checked_before_work():
    logistic = problems.multi_response_logistic(5, 3, seed=0).objective
    with pytest.raises(ValueError, match="quadratic"):
        minimize(logistic, constraint=NuclearBall(1.0), step_size=_SpyRule(("curvature",)))
    with pytest.raises(ValueError, match="'gradient'"):
        minimize(logistic, constraint=NuclearBall(1.0), step_size=_SpyRule(("gradient",)))
    assert ShortStep().needs == ("L", "norm2") and ShortStep(L=2.0).needs == ("norm2",)
    assert OpenLoop().needs == ()


def test_link_state_reuses_the_gap_answer_only_for_the_constraint():
    pb = problems.matrix_completion(7, 6, seed=6)
    solver, state = _state(pb)
    assert state.lmo() is state.gap_answer
    other = dataclasses.replace(state, gap_is_constraint=False)
    assert other.lmo() is not state.gap_answer and other.lmo().value == pytest.approx(state.gap_answer.value)
    X = Residual(solver.site)
    assert X.norm2() == 0.0 and X.inner(state.G) == 0.0


def test_storage_key_is_shared_by_views_and_tied_weights_only():
    a, b = torch.zeros(4, 3), torch.zeros(4, 3)
    assert storage_key(a) == storage_key(a.t()) == storage_key(a[1:])
    assert storage_key(a) != storage_key(b)
    p = torch.nn.Parameter(torch.zeros(2, 2))
    assert storage_key(p) == storage_key(p.data)
    m1, m2 = torch.zeros(2, 2, device="meta"), torch.zeros(2, 2, device="meta")
    assert storage_key(m1) != storage_key(m2) and storage_key(m1) == storage_key(m1)
    site = TensorSite(a, 1)
    with pytest.raises(ValueError, match="share one weight"):
        ResidualLowRankOptimizer([site, TensorSite(a.t(), 1, name="W2")], FrozenFactors([]))


def test_rank_in_range_is_the_one_rank_check():
    assert rank_in_range(np.int64(3), (5, 3)) == 3
    for bad in (0, 4, 2.0, True):
        with pytest.raises(ValueError, match=f"rank {bad!r} must be an integer in \\[1, 3\\]"):
            rank_in_range(bad, (5, 3))
    site = TensorSite(torch.zeros(5, 3), 2)
    with pytest.raises(ValueError, match="next_rank 4"):
        ResidualLowRankOptimizer([site], FrozenFactors(site.factors())).tie_knot(next_rank=4)
    with pytest.raises(ValueError, match="rank 4 must be an integer"):
        site.set_factors(torch.zeros(5, 4), torch.zeros(4, 3))


def test_the_chain_step_size_is_a_number():
    site = TensorSite(torch.zeros(3, 3), 1)
    with pytest.raises(ValueError, match="step_size"):
        ResidualLowRankOptimizer([site], FrozenFactors(site.factors()), step_size=lambda k: 0.5)
    chain = ResidualLowRankOptimizer([site], FrozenFactors(site.factors()), step_size=0.25)
    assert chain.current_step_size() == 0.25 and chain.tie_knot().step_size == 0.25


def test_a_solve_never_imports_torch_distributed_tensor():
    """The DTensor check costs nothing: no solve pays the 0.6-2.9 s import (issue 13)."""
    code = ("import sys; from cola_opt.objectives import problems; from cola_opt.fw.solver import minimize; "
            "from cola_opt.fw.sets import NuclearBall; from cola_opt.fw.refine import FactorRefinement; "
            "pb = problems.matrix_completion(30, seed=0); "
            "minimize(pb.objective, constraint=NuclearBall(pb.tau), refine=FactorRefinement(3), max_iter=3); "
            "print('torch.distributed.tensor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip() == "False"
