"""Frank-Wolfe on the nuclear-norm ball, and the chain as a solver of explicit objectives.

- :mod:`.oracles`: residual solvers (exact LMO, block LMO, the inexact COLA link);
- :mod:`.step_sizes`: open loop ``2/(t+2)``, short step, exact line search, backtracking, constant;
- :mod:`.sets`: the nuclear-norm ball and the unconstrained set;
- :mod:`.active_set`: atoms for away and pairwise steps;
- :mod:`.solver`: :func:`minimize` and :class:`ChainSolver`, which compose them;
- :mod:`.refine`: low-rank factor refinement between LMO steps;
- :mod:`.spectral`: top singular pairs, capped-simplex projection, factor compression;
- :mod:`.result`: :class:`Result` and :class:`Trace`;
- :mod:`.bounds`: the right-hand sides of the convergence theorems.
"""

from .result import Result, Trace
from .solver import ChainSolver, minimize

__all__ = ["ChainSolver", "Result", "Trace", "minimize"]
