"""Executable checks of the theory behind cola_opt: one module per claim.

Run ``python -m proofs_check``: every claim runs its generated instances and asserts its
bound and its every-iterate invariants; a table of claim, instances, worst ratio
(observed / bound) per check and verdict is printed, and the exit status is 1 on any
violation. Each module states its claim, source, assumptions and constants, and accepts
``run(broken=...)`` to run a deliberately broken variant that the check must catch
(tests/test_theory_proofs_check.py). ``python -m proofs_check --mutations`` patches the
product's own functions with the mutations of :mod:`proofs_check.mutations` and shows
which check catches each; ``python -m proofs_check.noise_floor`` measures the term of
C4's stochastic bound that a fixed batch size leaves behind.
"""

from . import (
    c1_primal_rate,
    c2_gap_certificate,
    c3_nonconvex_rate,
    c4_cola_inexact,
    c5_rank_growth,
    c6_knot_invariance,
    c7_llm_chain,
)

CLAIMS = {
    "C1": c1_primal_rate,
    "C2": c2_gap_certificate,
    "C3": c3_nonconvex_rate,
    "C4": c4_cola_inexact,
    "C5": c5_rank_growth,
    "C6": c6_knot_invariance,
    "C7": c7_llm_chain,
}

__all__ = ["CLAIMS"]
