"""Interaction energy against its closed forms, a direct sum, and the violation criterion."""

from __future__ import annotations

import math

import pytest
import torch

from probes.energy import (
    energy_violations,
    interaction_energy,
    log_energy_violation_mask,
    log_energy_violations,
    log_interaction_energy,
)

SEED_BETAS = [0.1, 1.0, 2.0, 5.0]


def unit_rows(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (x / x.norm(dim=-1, keepdim=True)).to(dtype)


def gram(x: torch.Tensor) -> torch.Tensor:
    return x @ x.mT


def direct_energy(g: torch.Tensor, beta: float) -> torch.Tensor:
    """The definition, summed as written (float64, small β only)."""
    n = g.shape[-1]
    return torch.exp(beta * g).sum(dim=(-2, -1)) / (2 * beta * n * n)


def collapse_energy(beta: float) -> float:
    return math.exp(beta) / (2 * beta)


def orthonormal_energy(n: int, beta: float) -> float:
    return (n * math.exp(beta) + n * (n - 1)) / (2 * beta * n * n)


# --- closed forms ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 7, 40])
def test_full_collapse_energy_is_e_to_the_beta_over_two_beta(n):
    g = torch.ones(n, n, dtype=torch.float64)
    expected = torch.tensor([collapse_energy(b) for b in SEED_BETAS], dtype=torch.float64)
    torch.testing.assert_close(interaction_energy(g, SEED_BETAS), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [2, 7, 40])
def test_orthonormal_tokens_energy_is_n_e_beta_plus_n_n_minus_1_over_2_beta_n2(n):
    g = torch.eye(n, dtype=torch.float64)
    expected = torch.tensor([orthonormal_energy(n, b) for b in SEED_BETAS], dtype=torch.float64)
    torch.testing.assert_close(interaction_energy(g, SEED_BETAS), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_log_energy_at_beta_100_matches_both_closed_forms_without_overflow(dtype, atol):
    n, beta = 16, 100.0
    log_collapse = beta - math.log(2 * beta)
    # ln[(n e^β + n(n−1)) / (2βn²)] = β + ln(n + n(n−1)e^{−β}) − ln(2βn²), with no e^β formed.
    log_orthonormal = (beta + math.log(n + n * (n - 1) * math.exp(-beta))
                       - math.log(2 * beta * n * n))
    got = log_interaction_energy(torch.stack([torch.ones(n, n), torch.eye(n)]).to(dtype), beta)
    assert got.dtype == dtype and got.isfinite().all()
    expected = torch.tensor([[log_collapse], [log_orthonormal]], dtype=dtype)
    torch.testing.assert_close(got, expected, rtol=0, atol=atol)


def test_energy_at_beta_100_in_float64_is_finite_and_equals_the_closed_form():
    e = interaction_energy(torch.ones(8, 8, dtype=torch.float64), [100.0])
    assert e.isfinite().all()
    torch.testing.assert_close(e, torch.tensor([collapse_energy(100.0)], dtype=torch.float64),
                               rtol=1e-12, atol=0)


def test_energy_refuses_float32_beta_whose_energy_could_exceed_float32():
    # e^β/(2β) passes float32's largest number (3.4e38) near β = 93.9, whatever the tokens.
    spread = torch.eye(64)                 # tokens whose E_100 would fit; refused all the same
    with pytest.raises(ValueError, match="log_interaction_energy"):
        interaction_energy(spread, [1.0, 100.0])
    e90 = interaction_energy(torch.ones(4, 4), 90.0)
    assert e90.isfinite().all()
    torch.testing.assert_close(e90.double(), torch.tensor([collapse_energy(90.0)],
                                                          dtype=torch.float64), rtol=2e-5, atol=0)


# --- second formulation and properties ------------------------------------------------------


def test_energy_equals_the_direct_sum_on_random_unit_vectors():
    g = gram(unit_rows(5, 30, 8))
    got = interaction_energy(g, SEED_BETAS)
    expected = torch.stack([direct_energy(g, b) for b in SEED_BETAS], dim=-1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


def test_energy_lies_between_the_regular_simplex_and_full_collapse():
    n = 9
    centred = torch.eye(n, dtype=torch.float64) - 1 / n          # regular simplex in R^n
    simplex = gram(centred / centred.norm(dim=-1, keepdim=True))
    for beta in SEED_BETAS:
        lower = (n * math.exp(beta) + n * (n - 1) * math.exp(-beta / (n - 1))) / (2 * beta * n * n)
        assert float(interaction_energy(simplex, beta)) == pytest.approx(lower, rel=1e-12)
        e = interaction_energy(gram(unit_rows(20, n, 4, seed=1)), beta)
        assert (e >= lower).all() and (e <= collapse_energy(beta)).all()


def test_single_beta_number_gives_one_column():
    g = gram(unit_rows(3, 6, 5))
    assert interaction_energy(g, 2.0).shape == (3, 1)
    torch.testing.assert_close(interaction_energy(g, 2.0), interaction_energy(g, [2.0]))
    torch.testing.assert_close(interaction_energy(g, torch.tensor([2.0])),
                               interaction_energy(g, 2.0))


def test_energy_batched_over_leading_axes_equals_a_loop():
    g = gram(unit_rows(3, 4, 12, 6))                          # e.g. [layer, head, n, n]
    batched = interaction_energy(g, SEED_BETAS)
    assert batched.shape == (3, 4, len(SEED_BETAS))
    for i in range(3):
        for j in range(4):
            torch.testing.assert_close(batched[i, j], interaction_energy(g[i, j], SEED_BETAS),
                                       rtol=1e-14, atol=0)


def test_float32_energy_equals_float64_within_1e_5_relative():
    g64 = gram(unit_rows(6, 64, 16))
    e32 = interaction_energy(g64.float(), SEED_BETAS)
    assert e32.dtype == torch.float32
    torch.testing.assert_close(e32.double(), interaction_energy(g64, SEED_BETAS),
                               rtol=1e-5, atol=0)
    l32 = log_interaction_energy(g64.float(), [100.0])
    torch.testing.assert_close(l32.double(), log_interaction_energy(g64, [100.0]),
                               rtol=1e-6, atol=0)


def test_log_energy_is_differentiable_in_the_gram_matrix():
    g = gram(unit_rows(5, 3)).requires_grad_()
    assert torch.autograd.gradcheck(lambda g: log_interaction_energy(g, [0.5, 3.0]), (g,))


# --- violations ---------------------------------------------------------------------------


def test_non_decreasing_energy_has_no_violations():
    e = torch.tensor([1.0, 1.0, 1.2, 1.2, 5.0, 5.0, 80.0], dtype=torch.float64)
    e = torch.stack([e, 2 * e, e + 3], dim=-1)                  # [layer, n_beta]
    assert energy_violations(e).tolist() == [0, 0, 0]
    assert energy_violations(e, rel_tol=0, abs_tol=0).tolist() == [0, 0, 0]


def test_planted_decreases_are_counted_exactly_per_beta():
    layers = 12
    e = torch.linspace(1.0, 1.1, layers, dtype=torch.float64).unsqueeze(-1).repeat(1, 3)  # +<1%
    planted = {0: [3], 1: [2, 5, 9], 2: []}                     # β column → layers that fall
    for column, falls in planted.items():
        for layer in falls:
            e[layer:, column] -= 0.05 * e[layer - 1, column]    # a net drop of ~4%, kept after
    mask = log_energy_violation_mask(e.log())
    assert energy_violations(e).tolist() == [1, 3, 0]
    for column, falls in planted.items():
        assert (mask[:, column].nonzero().flatten() + 1).tolist() == falls


def seed_relative_count(e: list[float], rel_tol: float) -> int:
    """Seed's current criterion: (E_prev − E_curr)/|E_prev| > rel_tol."""
    return sum((a - b) / abs(a) > rel_tol for a, b in zip(e, e[1:]))


def seed_absolute_count(e: list[float], abs_tol: float) -> int:
    """Seed's first criterion: E_curr − E_prev < −abs_tol."""
    return sum(b - a < -abs_tol for a, b in zip(e, e[1:]))


def test_tolerances_reproduce_both_seed_criteria():
    gen = torch.Generator().manual_seed(3)
    e = (1 + 0.01 * torch.randn(50, 4, generator=gen, dtype=torch.float64).cumsum(0)).abs()
    relative = energy_violations(e, rel_tol=1e-3, abs_tol=0)
    absolute = energy_violations(e, rel_tol=0, abs_tol=1e-6)
    for column in range(4):
        series = e[:, column].tolist()
        assert int(relative[column]) == seed_relative_count(series, 1e-3)
        assert int(absolute[column]) == seed_absolute_count(series, 1e-6)
    assert (relative > 0).all()                                  # the series do fall


def test_a_drop_counts_only_when_it_exceeds_both_tolerances():
    e = torch.tensor([[1000.0], [999.5],                 # abs 0.5 > 1e-6, rel 5e-4 < 1e-3: no
                      [1e-4], [0.995e-4],                # rel 5e-3 > 1e-3, abs 5e-7 < 1e-6: no
                      [2e-4], [1e-4]], dtype=torch.float64)   # rel 0.5, abs 1e-4: yes
    mask = log_energy_violation_mask(e.log())[:, 0].tolist()
    assert mask == [False, True, False, False, True]     # 999.5 → 1e-4 is the other drop


def test_log_violations_work_where_the_energy_overflows():
    log_e = torch.tensor([[95.0], [96.0], [94.0], [94.0 - 1e-4], [97.0]], dtype=torch.float32)
    assert log_energy_violation_mask(log_e)[:, 0].tolist() == [False, True, False, False]
    assert log_energy_violations(log_e).tolist() == [1]
    assert log_energy_violations(log_e, rel_tol=0, abs_tol=0).tolist() == [2]


def test_violations_from_energies_equal_those_from_log_energies():
    e = torch.tensor([[1.0, 3.0], [0.5, 3.5], [0.6, 2.0], [0.59, 2.1]], dtype=torch.float64)
    for kwargs in ({}, {"rel_tol": 0.05}, {"rel_tol": 0, "abs_tol": 0}):
        assert energy_violations(e, **kwargs).tolist() == log_energy_violations(e.log(),
                                                                                **kwargs).tolist()


def test_violations_batched_over_leading_axes_equal_a_loop():
    gen = torch.Generator().manual_seed(4)
    e = 1 + torch.rand(3, 5, 20, 4, generator=gen, dtype=torch.float64)
    batched = energy_violations(e)
    assert batched.shape == (3, 5, 4) and batched.dtype == torch.int64
    for i in range(3):
        for j in range(5):
            assert batched[i, j].tolist() == energy_violations(e[i, j]).tolist()


def test_float32_violations_equal_float64_away_from_the_threshold():
    gen = torch.Generator().manual_seed(5)
    e = 1 + torch.rand(40, 4, generator=gen, dtype=torch.float64)
    rel_drop = (e[:-1] - e[1:]) / e[:-1]
    assert ((rel_drop - 1e-3).abs() > 1e-5).all()               # no case within rounding
    assert energy_violations(e.float()).tolist() == energy_violations(e).tolist()


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("g, beta, match", [
    (torch.ones(3, 4), 1.0, r"\[\.\.\., n, n\]"),
    (torch.ones(1, 1), 1.0, "at least 2 tokens"),
    (torch.tensor([[1.0, float("nan")], [0.5, 1.0]]), 1.0, "non-finite"),
    (torch.ones(3, 3, dtype=torch.int64), 1.0, "floating"),
    (torch.ones(3, 3), 0.0, "beta must be > 0"),
    (torch.ones(3, 3), [1.0, -2.0], "beta must be > 0"),
    (torch.ones(3, 3), float("nan"), "beta has non-finite"),
    (torch.ones(3, 3), [[1.0, 2.0]], "1-D"),
    (torch.ones(3, 3), [], "non-empty"),
])
def test_bad_energy_input_raises(g, beta, match):
    for fn in (interaction_energy, log_interaction_energy):
        with pytest.raises(ValueError, match=match):
            fn(g, beta)


@pytest.mark.parametrize("e, kwargs, match", [
    (torch.ones(1, 4), {}, "at least 2 layers"),
    (torch.ones(5), {}, "at least 2 dims"),
    (torch.tensor([[1.0], [0.0]]), {}, "must be > 0"),
    (torch.tensor([[1.0], [-2.0]]), {}, "must be > 0"),
    (torch.tensor([[1.0], [float("inf")]]), {}, "non-finite"),
    (torch.ones(3, 2, dtype=torch.int32), {}, "floating"),
    (torch.ones(3, 2), {"rel_tol": 1.0}, r"rel_tol must be in \[0, 1\)"),
    (torch.ones(3, 2), {"rel_tol": -1e-3}, r"rel_tol must be in \[0, 1\)"),
    (torch.ones(3, 2), {"abs_tol": -1.0}, "abs_tol must be"),
    (torch.ones(3, 2), {"abs_tol": float("nan")}, "abs_tol must be"),
])
def test_bad_violation_input_raises(e, kwargs, match):
    with pytest.raises(ValueError, match=match):
        energy_violations(e, **kwargs)
