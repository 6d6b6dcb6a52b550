"""What a knot does to the inner optimizer's state of the factor Parameters.

COLA resets the state fully at each knot (Xia, Qin and Hazan 2024, Algorithm 1); ReLoRA
prunes it by magnitude or at random (Lialin et al. 2023, Section 3); keeping it is an
ablation. State is always looked up by the Parameter object.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["FullReset", "KeepState", "PruneState", "ResetPolicy", "make_reset_policy"]


class ResetPolicy:
    """What a knot does to the inner optimizer's state of the factor Parameters."""

    def __call__(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter]) -> None:
        raise NotImplementedError


class FullReset(ResetPolicy):
    """Drop all state (COLA): the next link starts like a fresh optimizer.

    State is looked up by the Parameter object itself, never by name (the trap of
    axolotl #1414, where a by-name lookup reset nothing).
    """

    def __call__(self, optimizer, params):
        for p in params:
            optimizer.state.pop(p, None)

    def __repr__(self) -> str:
        return "full"


class KeepState(ResetPolicy):
    """Keep the state (an ablation). State whose shape no longer fits is dropped."""

    def __call__(self, optimizer, params):
        for p in params:
            st = optimizer.state.get(p)
            if st and any(torch.is_tensor(v) and v.ndim and v.shape != p.shape for v in st.values()):
                optimizer.state.pop(p, None)

    def __repr__(self) -> str:
        return "keep"


class PruneState(ResetPolicy):
    """Zero a fraction of every state tensor (ReLoRA, Lialin et al. 2023, Section 3).

    Args:
        ratio: fraction in ``[0, 1]`` of each tensor's entries set to zero.
        mode: ``"magnitude"`` zeros the smallest ``|entries|``; ``"random"`` zeros a
            uniformly random subset (drawn from ``generator``).

    Raises:
        ValueError: on a ratio outside ``[0, 1]`` or an unknown mode.
    """

    def __init__(self, ratio: float, mode: str = "magnitude", generator: torch.Generator | None = None) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"prune ratio {ratio} must be in [0, 1]")
        if mode not in ("magnitude", "random"):
            raise ValueError(f"prune mode {mode!r} must be 'magnitude' or 'random'")
        self.ratio, self.mode, self.generator = ratio, mode, generator

    @torch.no_grad()
    def __call__(self, optimizer, params):
        for p in params:
            st = optimizer.state.get(p)
            if not st:
                continue
            if any(torch.is_tensor(v) and v.ndim and v.shape != p.shape for v in st.values()):
                optimizer.state.pop(p, None)  # the rank changed: nothing to keep
                continue
            for v in st.values():
                if not (torch.is_tensor(v) and v.ndim and v.is_floating_point()):
                    continue  # the step counter and scalars stay
                k = int(self.ratio * v.numel())
                if k == 0:
                    continue
                if self.mode == "magnitude":
                    cut = v.abs().flatten().kthvalue(k).values
                    v.masked_fill_(v.abs() <= cut, 0.0)
                else:
                    drop = torch.rand(v.shape, generator=self.generator).to(v.device) < self.ratio
                    v.masked_fill_(drop, 0.0)

    def __repr__(self) -> str:
        return f"prune:{self.ratio}:{self.mode}"


def make_reset_policy(spec: str | ResetPolicy) -> ResetPolicy:
    """Parse ``"full"``, ``"keep"``, ``"prune:<ratio>"`` or ``"prune:<ratio>:random"``.

    Raises:
        ValueError: on any other string, naming it.
    """
    if isinstance(spec, ResetPolicy):
        return spec
    if spec == "full":
        return FullReset()
    if spec == "keep":
        return KeepState()
    parts = spec.split(":") if isinstance(spec, str) else []
    if parts and parts[0] == "prune" and len(parts) in (2, 3):
        try:
            ratio = float(parts[1])
        except ValueError:
            raise ValueError(f"optimizer reset {spec!r}: {parts[1]!r} is not a number") from None
        return PruneState(ratio, parts[2] if len(parts) == 3 else "magnitude")
    raise ValueError(f"unknown optimizer reset {spec!r}; use 'full', 'keep', 'prune:<ratio>' or 'prune:<ratio>:random'")
