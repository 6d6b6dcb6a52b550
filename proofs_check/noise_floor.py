"""``python -m proofs_check.noise_floor``: the stochastic term of Theorem 4.1 at a fixed batch does not vanish.

C4's stochastic bound is ``(1/T) sum g_t <= M / (eta T) + beta eta D^2 / 2 + mean eps_hat + 2 D mean ||grad f - g_hat||``.
With ``eta = sqrt(M / (beta D^2 T))`` the first two terms fall like ``1/sqrt(T)``; the last is
the mini-batch noise at the iterates, a property of the batch size, so it stays. This
prints, for one indefinite least squares (24 rows, ``12 x 10``) and batches of 6 and 24
rows (the full batch), the two parts of the bound and the observed mean FW gap at
``T = 30, 120, 480``. Measured values are in docs/theory.md (C4).
"""

from __future__ import annotations

import warnings

import numpy as np


def main() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from cola_opt.fw import bounds
    from cola_opt.fw.oracles import InexactOracle
    from cola_opt.fw.sets import NuclearBall
    from cola_opt.fw.solver import ChainSolver
    from cola_opt.fw.step_sizes import Constant
    from cola_opt.objectives import problems

    from .common import fw_quantities, run_links
    from .stochastic import MiniBatchRows

    pb = problems.indefinite_least_squares(12, 10, mu=0.6, seed=0)
    base, W0 = pb.objective, pb.W0.astype(np.float64)
    beta, D = base.smoothness, bounds.nuclear_diameter(pb.tau)
    M = base.value(pb.W0) - base.lower_bound(pb.tau, pb.W0)
    print("| batch (of 24 rows) | T | η | M/(ηT) + βηD²/2 | 2D mean ‖∇f − ĝ‖ | mean g_t | mean g_t, last 10 links |")
    print("|---|---|---|---|---|---|---|")
    for batch in (6, 24):
        for T in (30, 120, 480):
            obj = MiniBatchRows(base, batch, 0)
            eta = bounds.cola_step_size(M, beta, D, T)
            oracle = InexactOracle(2, 15, optimizer="sgd", lr=10.0, target="linear")
            it = run_links(ChainSolver(obj, pb.W0, oracle=oracle, constraint=NuclearBall(pb.tau),
                                       step_size=Constant(eta), seed=0, record_rank="bound"), T)
            qs = [fw_quantities(base, W, W0, pb.tau) for W in it.W[:T]]
            noise = np.array([np.linalg.norm(q.G - g) for q, g in zip(qs, obj.drawn[:T])])
            g = np.array([q.gap for q in qs])
            core = M / (eta * T) + 0.5 * beta * eta * D * D
            print(f"| {batch} | {T} | {eta:.3g} | {core:.4g} | {2 * D * noise.mean():.4g} | {g.mean():.4g} | "
                  f"{g[-10:].mean():.4g} |", flush=True)


if __name__ == "__main__":
    main()
