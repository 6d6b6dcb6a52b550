"""cola_opt: Chain of LoRA (Xia, Qin and Hazan 2024, arXiv 2401.04151) as a residual low-rank optimizer."""

import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    # OpenMP threads that spin while waiting made CPU training 10x slower here whenever
    # another process shared the cores (22 s vs 2 s per step, measured). Passive waiting
    # costs nothing on an idle machine. Set OMP_WAIT_POLICY yourself to override.
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .chain.optimizer import KnotRecord, NonFiniteUpdateError, ResidualLowRankOptimizer
from .chain.reset import FullReset, KeepState, PruneState, ResetPolicy, make_reset_policy
from .chain.schedules import epoch_knots, step_down_ranks, uniform_knots, validate_knots
from .chain.sites import Site, TensorSite, reinit_factors_
from .fw.result import Result, Trace
from .fw.solver import ChainSolver, minimize

__version__ = "0.1.0"

__all__ = [
    "ChainSolver",
    "FullReset",
    "KeepState",
    "KnotRecord",
    "NonFiniteUpdateError",
    "PruneState",
    "ResetPolicy",
    "ResidualLowRankOptimizer",
    "Result",
    "Site",
    "TensorSite",
    "Trace",
    "epoch_knots",
    "make_reset_policy",
    "minimize",
    "reinit_factors_",
    "step_down_ranks",
    "uniform_knots",
    "validate_knots",
]
