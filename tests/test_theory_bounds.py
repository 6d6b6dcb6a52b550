"""cola_opt.fw.bounds: exact values at known inputs, so that a wrong constant fails a test."""

import math

import pytest

from cola_opt.fw import bounds

# (function name, arguments, exact value worked out by hand from the docstring's formula)
EXACT = [
    ("nuclear_diameter", (1.5,), 3.0),                          # 2 tau
    ("curvature_bound", (2.0, 3.0), 18.0),                      # L D^2
    ("fw_primal_bound", (1, 1.0, 2.0), 8.0 / 3.0),              # 2 L D^2 / (t + 2) = 8 / 3
    ("fw_primal_bound", (8, 0.5, 4.0), 1.6),                    # 2 * 0.5 * 16 / 10
    ("fw_min_gap_bound", (2, 1.0, 2.0), 6.75),                  # 2 (27/8) 4 / 4
    ("fw_min_gap_bound", (6, 1.0, 2.0), 3.375),                 # 2 (27/8) 4 / 8
    ("nonconvex_min_gap_bound", (3, 1.0, 1.0, 1.0), 1.0),       # max(2 h0, L D^2) / sqrt(T + 1) = 2 / 2
    ("nonconvex_min_gap_bound", (0, 0.25, 2.0, 1.0), 2.0),      # max(0.5, 2) / 1
    ("cola_step_size", (2.0, 1.0, 1.0, 8), 0.5),                # sqrt(M / (beta D^2 T)) = sqrt(1/4)
    ("cola_step_size", (100.0, 1.0, 1.0, 1), 1.0),              # min(1, 10)
    ("cola_step_size", (1.0, 4.0, 0.5, 16), 0.25),              # sqrt(1 / (4 * 0.25 * 16))
    ("cola_bound", (4, 1.0, 4.0, 3.0, 0.5), 6.5),               # 2 sqrt(4) 3 / 2 + 0.5
    ("cola_prefix_bound", (2, 0.5, 1.0, 2.0, 1.0, 0.1), 1.6),   # M/(eta t) + beta eta D^2 / 2 + eps = 1 + 0.5 + 0.1
    ("rank_bound", (3, 2), 6),                                   # k r
]


def _mismatches():
    return [(name, args) for name, args, want in EXACT if not math.isclose(getattr(bounds, name)(*args), want,
                                                                             rel_tol=1e-15, abs_tol=0.0)]


def test_exact_values():
    assert bounds.JAGGI_BETA == 27.0 / 8.0
    assert _mismatches() == []


def test_the_theorem_step_gives_the_sharper_constant_three_halves():
    """At eta = sqrt(M / (beta D^2 T)) the prefix bound (C4.3) at T is (3/2) sqrt(M beta) D / sqrt(T) (docs/theory.md)."""
    M, beta, D, T = 2.0, 1.0, 1.0, 8
    eta = bounds.cola_step_size(M, beta, D, T)
    assert bounds.cola_prefix_bound(T, eta, M, beta, D, 0.0) == pytest.approx(0.75, rel=1e-15)
    assert bounds.cola_bound(T, M, beta, D, 0.0) == pytest.approx(1.0, rel=1e-15)


@pytest.mark.parametrize("call,match", [
    (lambda: bounds.fw_primal_bound(0, 1.0, 1.0), "t >= 1"),
    (lambda: bounds.fw_min_gap_bound(1, 1.0, 1.0), "K >= 2"),
    (lambda: bounds.nonconvex_min_gap_bound(-1, 1.0, 1.0, 1.0), "T = -1"),
    (lambda: bounds.nonconvex_min_gap_bound(1, -1.0, 1.0, 1.0), "h0 = -1"),
    (lambda: bounds.cola_step_size(0.0, 1.0, 1.0, 4), "must be > 0"),
    (lambda: bounds.cola_step_size(1.0, 1.0, 1.0, 0), "T = 0"),
    (lambda: bounds.cola_bound(4, 1.0, 1.0, 1.0, -0.1), "eps = -0.1"),
    (lambda: bounds.cola_prefix_bound(0, 0.5, 1.0, 1.0, 1.0, 0.0), "t = 0"),
    (lambda: bounds.curvature_bound(math.inf, 1.0), "L = inf"),
    (lambda: bounds.rank_bound(-1, 2), "links -1"),
])
def test_bad_constants_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


MUTATIONS = {
    "Jaggi beta 27/8 -> 27/4": ("JAGGI_BETA", 27.0 / 4.0),
    "curvature L D^2 -> L D": ("curvature_bound", lambda L, D: L * D),
    "primal bound 2 L D^2 -> 4 L D^2": ("fw_primal_bound", lambda t, L, D: 4.0 * L * D * D / (t + 2.0)),
    "nonconvex 2 h0 -> h0": ("nonconvex_min_gap_bound", lambda T, h0, L, D: max(h0, L * D * D) / math.sqrt(T + 1.0)),
    "COLA step eta x 4": ("cola_step_size", lambda M, b, D, T: min(1.0, 4.0 * math.sqrt(M / (b * D * D * T)))),
    "COLA step eta x 10": ("cola_step_size", lambda M, b, D, T: min(1.0, 10.0 * math.sqrt(M / (b * D * D * T)))),
    "COLA bound 2 -> 4": ("cola_bound", lambda T, M, b, D, e: 4.0 * math.sqrt(M * b) * D / math.sqrt(T) + e),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_every_wrong_constant_fails_an_exact_value(name, monkeypatch):
    attr, value = MUTATIONS[name]
    monkeypatch.setattr(bounds, attr, value)
    assert _mismatches()  # the exact-value test would fail
