"""Every mutation of the product's code in proofs_check.mutations is caught: 100% killed.

Each mutation monkeypatches a real function of cola_opt (the table of issue 13, plus two
slowdowns and a skipped optimizer reset); the claims it names must then report a violation
on their quick instances, and the patch must be undone afterwards.
"""

import pytest
import torch

from cola_opt.fw.oracles import ExactLMO
from proofs_check import CLAIMS
from proofs_check.mutations import MUTATIONS, run_mutation

torch.set_num_threads(1)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_mutation_is_caught(mutation):
    caught = run_mutation(mutation, {name: CLAIMS[name] for name in mutation.caught_by}, quick=True)
    assert set(caught) == set(mutation.caught_by), caught
    assert all(caught[name] for name in caught)


def test_a_mutation_is_undone_after_its_run():
    real = ExactLMO.__dict__["propose"]
    drop = next(m for m in MUTATIONS if m.name == "drop_shrink")
    with drop.patch():
        assert ExactLMO.__dict__["propose"] is not real
    assert ExactLMO.__dict__["propose"] is real
    assert CLAIMS["C5"].run(quick=True).passed  # the product is whole again
