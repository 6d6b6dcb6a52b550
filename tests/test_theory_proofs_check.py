"""Every claim check passes on the real algorithms and catches its deliberately broken variants."""

import pytest
import torch

from proofs_check import CLAIMS
from proofs_check.__main__ import main

torch.set_num_threads(1)

BROKEN = [(name, b) for name, mod in CLAIMS.items() for b in mod.BROKEN]


def test_every_claim_states_its_source_and_has_a_broken_variant():
    for name, mod in CLAIMS.items():
        doc = mod.__doc__
        assert mod.NAME == name and mod.BROKEN
        for word in ("Source", "Assumptions", "Broken"):
            assert word.lower() in doc.lower(), (name, word)


@pytest.mark.parametrize("name,broken", BROKEN, ids=[f"{n}-{b}" for n, b in BROKEN])
def test_checker_catches_broken_variant(name, broken):
    result = CLAIMS[name].run(broken=broken, quick=True)
    assert result.violations > 0 and result.verdict == "FAIL"
    assert result.worst_ratio > 1.0


def test_quick_run_is_green_and_the_cli_exit_codes(capsys):
    assert main(["--quick"]) == 0
    out = capsys.readouterr().out
    for name in CLAIMS:
        assert f"\n{name} " in out
    assert "all bounds hold" in out
    assert main(["--quick", "--claims", "C5", "--broken", "wrong_lmo"]) == 1
    assert "VIOLATED: C5" in capsys.readouterr().out


def test_every_frank_wolfe_claim_checks_the_every_iterate_invariants():
    """Feasibility, f >= f*_lo and the reported gap at every iterate of every FW variant, on W0 != 0 too."""
    for name in ("C1", "C2", "C3"):
        result = CLAIMS[name].run(quick=True)
        for check in ("feasible", "f >= f*_lo", "gap = g_t"):
            assert result.checks[check].count > 0 and result.checks[check].violations == 0, (name, check)
        assert any(c in result.checks and result.checks[c].count > 0 for c in ("one step", "decrease")), name
        assert any("+W0(" in pb.name for pb in CLAIMS[name].instances(quick=True)), name  # W0 != 0 instances


def test_the_away_pairwise_and_block_steps_get_their_descent_checks():
    """C2's away, pairwise and block runs are checked against their one-step guarantees, not only monotone f."""
    result = CLAIMS["C2"].run(quick=True)
    for check in ("block step", "drop steps", "steeper than FW", "one step (reported gamma)",
                  "direction (fw steps)", "decrease (fw steps)"):
        assert result.checks[check].count > 0 and result.checks[check].violations == 0, check


def test_c4_asserts_the_oracle_quality_a_priori_on_the_stochastic_instances_too():
    result = CLAIMS["C4"].run(quick=True)
    stochastic = [batch for _, _, batch in CLAIMS["C4"].instances(quick=True) if batch is not None]
    assert stochastic
    # every link of every instance, full batch and mini-batch, is held to eps_t <= delta g_t
    assert result.checks["eps <= delta g"].count == 30 * len(CLAIMS["C4"].instances(quick=True))
    for check in ("stochastic bound", "stochastic, delta", "gap = g_t"):
        assert result.checks[check].count > 0 and result.checks[check].violations == 0, check
    assert result.passed


def test_every_claim_runs_instances_with_a_nonzero_start():
    from cola_opt.objectives import problems

    starts = {
        "C1": [pb.W0 for pb in CLAIMS["C1"].instances()],
        "C2": [pb.W0 for pb in CLAIMS["C2"].instances()],
        "C3": [pb.W0 for pb in CLAIMS["C3"].instances()],
        "C4": [pb.W0 for pb, _, _ in CLAIMS["C4"].instances()],
        "C5": [pb.W0 for _, pb in CLAIMS["C5"].instances()],
        "C7": [problems.two_layer_mlp(8, 6, seed=0).W0],  # C7's MLP layers start from a "pretrained" W0
    }
    for name, W0s in starts.items():
        assert any(float(abs(W0).max()) > 0.1 for W0 in W0s), name


def test_the_default_run_has_at_least_1000_instances_across_c1_to_c6():
    """Counted from the instance lists and variants, without running them (the slow test below runs them)."""
    import inspect

    counts = {name: sum(len(CLAIMS[name].variants(pb, None)) for pb in CLAIMS[name].instances())
              for name in ("C1", "C2", "C3")}
    counts["C4"] = len(CLAIMS["C4"].instances())
    counts["C5"] = 6 * len(CLAIMS["C5"].instances())  # six runs per shape
    counts["C6"] = inspect.signature(CLAIMS["C6"].run).parameters["instances"].default
    assert sum(counts.values()) >= 1000, counts


@pytest.mark.slow
def test_full_run_is_green_with_at_least_1000_instances(capsys):
    assert main([]) == 0
    tail = capsys.readouterr().out.strip().splitlines()[-1]
    assert int(tail.split(" claims, ")[1].split(" instances")[0]) >= 1000, tail


@pytest.mark.slow
def test_every_mutation_is_caught_by_the_full_claim_set(capsys):
    assert main(["--mutations"]) == 0
    assert "NOT CAUGHT" not in capsys.readouterr().out


def test_unknown_broken_variant_is_a_value_error():
    with pytest.raises(ValueError, match="'nonsense'"):
        CLAIMS["C1"].run(broken="nonsense")


@pytest.mark.parametrize("family", ["rows", "entries"])
def test_mini_batch_gradients_are_unbiased_and_noisy(family):
    import numpy as np

    from cola_opt.objectives import problems
    from proofs_check.stochastic import MiniBatchEntries, MiniBatchRows

    if family == "rows":
        base = problems.indefinite_least_squares(6, 5, mu=0.5, seed=1).objective
        wrapped = MiniBatchRows(base, base.A.shape[0] // 4, seed=0)
    else:
        base = problems.cauchy_completion(6, 5, seed=1).objective
        wrapped = MiniBatchEntries(base, base.rows.size // 4, seed=0)
    W = np.random.default_rng(2).standard_normal(base.shape)
    full = base.gradient(W).toarray()
    draws = np.stack([wrapped.gradient(W).toarray() for _ in range(4000)])
    assert len(wrapped.drawn) == 4000 and wrapped.value(W) == base.value(W)
    spread = np.linalg.norm(draws - full, axis=(1, 2)).mean()
    assert spread > 0.05 * np.linalg.norm(full)  # a quarter batch is noisy ...
    assert np.linalg.norm(draws.mean(axis=0) - full) < 0.05 * spread  # ... and unbiased (4000 draws: ~spread/63)
