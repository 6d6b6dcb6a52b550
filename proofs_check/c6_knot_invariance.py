"""C6: a knot keeps the function and moves ``W`` by exactly its update; the next link is fresh.

Claims, for a knot with step ``gamma`` and shrink ``rho`` on a site with factors
``(B, A)`` and scaling ``s``:

(a) ``W' = W + gamma (s B A - rho (W - W0))`` up to float32 rounding of the one merge;
(b) with ``gamma = 1, rho = 0`` (COLA), the network's function is unchanged:
    ``net(W + s B A) = net(W' + s B' A')`` with the new ``B' = 0`` (LoRA's zero init,
    Hu et al. 2021, Section 4.1; COLA Algorithm 1);
(c) the new link starts fresh: ``B' = 0`` and the inner optimizer holds no state for
    the factors (COLA's optimizer reset; the trap of axolotl #1414 is a reset that
    resets nothing).

Assumptions: a float32 site (``TensorSite``), a merge formed in float32 and cast once,
dropout off (a plain tensor model has none).

Source: the knot's definition (DESIGN §2; Xia, Qin and Hazan 2024, Algorithm 1).
Tolerances: (a) ``2e-6 * max(1, |W|_max, |update|_max)`` per entry (two float32
roundings); (b) ``1e-5 * max(1, |output|_max)``; (c) exact.
Instances: 300 random sites of shapes 2..24, ranks, ``lora_alpha``, ``gamma``, ``rho``, a small MLP
(tanh) whose first layer is the site, one Adam step before each knot.
Broken variants: ``skipped_reset`` (optimizer state kept), ``no_reinit`` (factors not
re-initialised), ``wrong_sign`` (the merge subtracts the update).
"""

from __future__ import annotations

import numpy as np
import torch

from cola_opt.chain.optimizer import ResidualLowRankOptimizer
from cola_opt.chain.sites import TensorSite

from .common import Tracker, check_broken

NAME = "C6"
CLAIM = "knot: W' = W + gamma(Delta - rho X); function kept; fresh link and optimizer"
BROKEN = ("skipped_reset", "no_reinit", "wrong_sign")


class _NoReinitSite(TensorSite):
    """Broken: a knot that forgets to re-initialise the factors."""

    def reset_factors(self, rank=None, generator=None):
        return None


class _WrongSignSite(TensorSite):
    """Broken: a merge with the wrong sign."""

    def merge(self, update):
        super().merge(-update)


def _net(W: torch.Tensor, V: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ W.t()) @ V


def run(broken: str | None = None, quick: bool = False, instances: int = 300):
    check_broken(broken, BROKEN)
    tr = Tracker(NAME, CLAIM, slack=0.0, broken=broken)
    rng = np.random.default_rng(0)
    site_cls = {"no_reinit": _NoReinitSite, "wrong_sign": _WrongSignSite}.get(broken, TensorSite)
    for i in range(instances // (20 if quick else 1)):
        m, n = (int(v) for v in rng.integers(2, 25, size=2))
        r = int(rng.integers(1, min(m, n) + 1))
        alpha = [None, float(r), 2.0 * r][i % 3]
        g = torch.Generator().manual_seed(i)
        W = torch.randn(m, n, generator=g)
        site = site_cls(W, r, lora_alpha=alpha, generator=g)
        chain = ResidualLowRankOptimizer([site], torch.optim.Adam(list(site.factors()), lr=1e-2), seed=i,
                                         reset="keep" if broken == "skipped_reset" else "full")
        V = torch.randn(m, 3, generator=g)
        x = torch.randn(5, n, generator=g)
        tr.instances += 1
        for k in range(3):
            with torch.no_grad():
                site.lora_B.copy_(0.3 * torch.randn(site.lora_B.shape, generator=g))
            loss = _net(site.effective_weight(), V, x).square().sum()
            loss.backward()
            chain.step()
            chain.zero_grad()
            cola = k % 2 == 0
            gamma, rho = (1.0, 0.0) if cola else (float(rng.uniform(0.1, 1.0)), float(rng.choice([0.0, 1.0])))
            with torch.no_grad():
                before = _net(site.effective_weight(), V, x)
                update = gamma * (site.delta() - rho * site.residual())
                expected = site.weight + update
            chain.tie_knot(step_size=gamma, shrink=rho)
            where = f"{m}x{n} r={r} alpha={alpha} knot {k}"
            scale = max(1.0, float(expected.abs().max()), float(update.abs().max()))
            tr.ratio(float((site.weight - expected).abs().max()), 2e-6 * scale, where + " (a)", check="bound")
            if cola:
                with torch.no_grad():
                    after = _net(site.effective_weight(), V, x)
                tr.ratio(float((after - before).abs().max()), 1e-5 * max(1.0, float(before.abs().max())),
                         where + " (b)", check="function kept")
            stale = sum(len(chain.optimizer.state.get(p, {})) for p in chain.factor_parameters())
            tr.at_most(float(stale) + float(site.lora_B.abs().max() > 0), 0.0, 0.0, where + " (c)", check="fresh link")
    return tr.result()
