"""C5: rank growth of the chain, ``rank(X_k) <= k r`` after ``k`` links of rank ``r``.

Source: subadditivity of rank, ``rank(A + B) <= rank(A) + rank(B)``: every knot merges
``gamma (Delta - shrink X)`` with ``rank(Delta) <= r``, so ``X_{k+1}`` is a combination
of ``X_k`` and one rank-``r`` matrix (COLA's motivation: a chain of rank-``r`` links
reaches rank ``k r``; Xia, Qin and Hazan 2024, Section 3).

Assumptions: links of rank ``r`` (ExactLMO: 1; BlockLMO and InexactOracle: their rank).
``W0`` is a random full-rank matrix on half the shapes (as in fine-tuning: the bound is on
the residual ``X = W - W0``, not on ``W``), zero on the others.
Check: the numerical rank of ``X_k = W_k - W0`` (singular values above ``1e-5 sigma_max``,
float32 iterates), computed here from the recorded iterates with numpy's SVD
(:func:`proofs_check.common.rank_of`, not the product's ``numerical_rank``), after every link: ratio
``rank / (k r)``, and ``rank(X_0) = 0``.
Instances: vanilla FW, block FW, COLA unconstrained (r = 1, 2, 3), COLA as approximate FW; 20 shapes.
Broken variant: ``wrong_lmo`` (an oracle declared rank 1 that answers rank-2 matrices).
"""

from __future__ import annotations

import numpy as np

from cola_opt.fw import bounds
from cola_opt.fw.oracles import BlockLMO, ExactLMO, InexactOracle
from cola_opt.fw.sets import NuclearBall, Unconstrained
from cola_opt.fw.solver import ChainSolver
from cola_opt.fw.step_sizes import Constant, ExactLineSearch, OpenLoop
from cola_opt.objectives import problems

from .common import DoubleAtomBall, Tracker, check_broken, rank_of, run_links, with_start

NAME = "C5"
CLAIM = "rank(X_k) <= k r after k links of rank r"
BROKEN = ("wrong_lmo",)


def instances(quick: bool = False):
    """Matrix completion of shapes 6..25; ``W0`` zero on even seeds, ``N(0, 1)`` on odd ones."""
    rng = np.random.default_rng(5)
    out = []
    for seed in range(1 if quick else 20):
        m, n = (int(v) for v in rng.integers(6, 26, size=2))
        out.append((seed, with_start(problems.matrix_completion(m, n, rank=4, fraction=0.6, noise=0.1, tau_ratio=0.9,
                                                                seed=seed), (0.0, 1.0)[seed % 2], 1300 + seed)))
    return out


def run(broken: str | None = None, quick: bool = False, links: int = 10):
    check_broken(broken, BROKEN)
    tr = Tracker(NAME, CLAIM, slack=0.0, broken=broken)
    for seed, pb in instances(quick):
        ball = NuclearBall(pb.tau)
        if broken == "wrong_lmo":
            runs = [(1, dict(oracle=ExactLMO(), constraint=DoubleAtomBall(pb.tau), step_size=OpenLoop()))]
        else:
            runs = [(1, dict(oracle=ExactLMO(), constraint=ball, step_size=ExactLineSearch())),
                    (2, dict(oracle=BlockLMO(2), constraint=ball, step_size=OpenLoop())),
                    (2, dict(oracle=InexactOracle(2, 5, optimizer="sgd", lr=3.0, target="linear"), constraint=ball,
                             step_size=OpenLoop()))]
            runs += [(r, dict(oracle=InexactOracle(r, 10, lr=0.05), constraint=Unconstrained(),
                              step_size=Constant(1.0))) for r in (1, 2, 3)]
        W0 = pb.W0.astype(np.float64)
        for r, kw in runs:
            it = run_links(ChainSolver(pb.objective, pb.W0, record_rank="bound", seed=seed, **kw), links)
            tr.instances += 1
            for k, W in enumerate(it.W):
                rank = rank_of(W - W0)
                where = f"{pb.name} {kw['oracle']!r} k={k}"
                if k == 0:
                    tr.at_most(rank, 0, 0.0, where)
                else:
                    tr.ratio(rank, bounds.rank_bound(k, r), where)
    return tr.result()
