"""probes.similarity: invariances, two formulations of CKA, Song's unbiased HSIC, pairs = loop."""

from __future__ import annotations

import pytest
import torch

from probes.similarity import cka_matrix, linear_cka

F64 = torch.float64
EXACT = 1e-9
# linear_cka works in feature space (d×d products) when the widths are small against n and in
# example space (n×n Grams) otherwise; every property is checked on both sides.
SHAPES = {"narrow": (30, 4, 6), "wide": (10, 12, 20)}  # (n, d1, d2)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair(shape: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x, and a y partly driven by x so that CKA sits inside (0, 1)."""
    n, d1, d2 = SHAPES[shape]
    g = _gen(seed)
    x = torch.randn(n, d1, generator=g, dtype=F64) * 2 + 3
    y = x @ torch.randn(d1, d2, generator=g, dtype=F64) + torch.randn(n, d2, generator=g,
                                                                        dtype=F64)
    return x, y


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=_gen(seed), dtype=F64))
    return q


def _plain_cka_features(x, y):
    """‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred X, Y (Kornblith 2019, eq. 5)."""
    x, y = x - x.mean(0), y - y.mean(0)
    return (y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm())


def _plain_cka_examples(x, y):
    """⟨HKH, HLH⟩_F / (‖HKH‖_F ‖HLH‖_F) with K = XXᵀ, L = YYᵀ of the raw inputs."""
    n = x.shape[0]
    h = torch.eye(n, dtype=x.dtype) - torch.ones(n, n, dtype=x.dtype) / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    return (k * l).sum() / (k.norm() * l.norm())


def _song_unbiased_hsic(k, l):
    """HSIC_1 of Song et al. 2012, eq. 5, on Grams with their diagonals zeroed."""
    n = k.shape[0]
    k, l = k - torch.diag(torch.diag(k)), l - torch.diag(torch.diag(l))
    one = torch.ones(n, dtype=k.dtype)
    return (torch.trace(k @ l)
            + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))


def _plain_debiased_cka(x, y):
    k, l = x @ x.T, y @ y.T  # raw, uncentred: the estimator is translation invariant
    return _song_unbiased_hsic(k, l) / (_song_unbiased_hsic(k, k)
                                        * _song_unbiased_hsic(l, l)).sqrt()


# --- invariances and closed forms -----------------------------------------------------------

@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_cka_is_one_for_a_rotated_scaled_translated_copy(shape, debiased):
    x, _ = _pair(shape, 0)
    d = x.shape[1]
    b = torch.randn(1, d, generator=_gen(1), dtype=F64) * 5
    for c in (0.01, 1.0, 70.0):
        y = c * x @ _orthogonal(d, seed=2) + b
        assert abs(float(linear_cka(x, y, debiased)) - 1) < EXACT


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_is_one_for_an_isometric_embedding_into_more_dimensions(debiased):
    x, _ = _pair("narrow", 3)
    embed = _orthogonal(9, seed=4)[:4]  # 4 → 9 dims, orthonormal rows
    assert abs(float(linear_cka(x, 3 * x @ embed - 1, debiased)) - 1) < EXACT


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_cka_of_x_with_itself_is_one(shape, debiased):
    x, _ = _pair(shape, 5)
    assert abs(float(linear_cka(x, x, debiased)) - 1) < EXACT


def test_cka_is_not_invariant_to_stretching_one_direction():
    x, _ = _pair("narrow", 6)
    stretched = x * torch.tensor([1.0, 1.0, 1.0, 30.0], dtype=F64)
    assert float(linear_cka(x, stretched)) < 0.95
    assert float(linear_cka(x, stretched, debiased=True)) < 0.95


def test_cka_of_features_uncorrelated_across_tokens_is_zero_and_debiased_can_reach_minus_one():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=F64)
    assert abs(float(linear_cka(x, x.abs()))) < EXACT
    # Four tokens: the unbiased estimate of HSIC(x, |x|) is exactly minus that of HSIC(x, x).
    assert abs(float(linear_cka(x, x.abs(), debiased=True)) + 1) < EXACT


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_cka_is_symmetric_in_its_two_arguments(shape, debiased):
    x, y = _pair(shape, 7)
    assert abs(float(linear_cka(x, y, debiased)) - float(linear_cka(y, x, debiased))) < EXACT


# --- second formulations ----------------------------------------------------------------------

@pytest.mark.parametrize("shape", list(SHAPES))
def test_cka_from_examples_equals_cka_from_features(shape):
    for seed in range(3):
        x, y = _pair(shape, 10 + seed)
        by_features, by_examples = _plain_cka_features(x, y), _plain_cka_examples(x, y)
        assert abs(float(by_features - by_examples)) < EXACT
        assert abs(float(linear_cka(x, y)) - float(by_features)) < EXACT
        assert 0.05 < float(by_features) < 0.95  # a non-trivial value was compared


@pytest.mark.parametrize("shape", [*SHAPES, "four tokens"])
def test_debiased_cka_equals_the_unbiased_hsic_formula_of_song_et_al(shape):
    for seed in range(3):
        if shape == "four tokens":  # the fewest the estimator allows
            g = _gen(20 + seed)
            x, y = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, 5, generator=g,
                                                                          dtype=F64)
        else:
            x, y = _pair(shape, 20 + seed)
        expected = _plain_debiased_cka(x, y)
        assert abs(float(linear_cka(x, y, debiased=True)) - float(expected)) < EXACT
        assert abs(float(expected) - float(_plain_cka_examples(x, y))) > 1e-4  # not the biased one


def test_debiased_cka_of_independent_inputs_is_near_zero_where_biased_cka_is_large():
    # 50 tokens in 100 dims: the biased estimator's upward bias is large when d > n.
    for seed in range(5):
        g = _gen(30 + seed)
        x, y = torch.randn(2, 50, 100, generator=g, dtype=F64).unbind()
        assert float(linear_cka(x, y)) > 0.5
        assert abs(float(linear_cka(x, y, debiased=True))) < 0.1


# --- cka_matrix -----------------------------------------------------------------------------

def _layers(seed: int, shape=(5, 20, 8)) -> torch.Tensor:
    """A drifting stack of layers: each is the last plus noise, so CKA decays with distance."""
    g = _gen(seed)
    steps = torch.randn(*shape, generator=g, dtype=F64)
    return steps.cumsum(dim=-3) + 2


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_equals_linear_cka_of_every_pair_and_is_symmetric_with_unit_diagonal(debiased):
    xs = _layers(40)
    m = cka_matrix(xs, debiased)
    looped = torch.tensor([[float(linear_cka(a, b, debiased)) for b in xs] for a in xs], dtype=F64)
    torch.testing.assert_close(m, looped, rtol=0, atol=EXACT)
    torch.testing.assert_close(m, m.mT, rtol=0, atol=1e-15)
    torch.testing.assert_close(torch.diagonal(m), torch.ones(5, dtype=F64), rtol=0, atol=1e-15)
    assert float(m[0, 1]) > float(m[0, 4])  # drift: near layers are more alike than far ones


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_with_leading_batch_axes_equals_a_loop(debiased):
    xs = _layers(41, shape=(2, 3, 4, 12, 6))  # [prompt, head, layer, n, d]
    m = cka_matrix(xs, debiased)
    assert m.shape == (2, 3, 4, 4)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(m[i, j], cka_matrix(xs[i, j], debiased), rtol=0, atol=EXACT)


# --- vectorised = loop; float32 ≈ float64 -----------------------------------------------------

@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_batched_linear_cka_equals_a_python_loop_over_the_leading_axes(shape, debiased):
    pairs = [_pair(shape, 50 + k) for k in range(6)]
    x = torch.stack([p[0] for p in pairs]).reshape(2, 3, *pairs[0][0].shape)
    y = torch.stack([p[1] for p in pairs]).reshape(2, 3, *pairs[0][1].shape)
    looped = torch.tensor([[float(linear_cka(x[i, j], y[i, j], debiased)) for j in range(3)]
                           for i in range(2)], dtype=F64)
    torch.testing.assert_close(linear_cka(x, y, debiased), looped, rtol=0, atol=EXACT)


# Measured max |float32 - float64| over 10-20 random inputs per case (both paths, both
# variants, n from 10 to 512, CKA from ~0 to ~0.8): 2.1e-7. Tolerance: 10x that.
F32_TOL = 2e-6


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_float32_agrees_with_float64_within_the_measured_tolerance(shape, debiased):
    x, y = _pair(shape, 60)
    out32 = linear_cka(x.float(), y.float(), debiased)
    assert out32.dtype == torch.float32
    assert abs(float(out32) - float(linear_cka(x, y, debiased))) < F32_TOL
    xs = _layers(61)
    m32 = cka_matrix(xs.float(), debiased)
    assert m32.dtype == torch.float32
    torch.testing.assert_close(m32.double(), cka_matrix(xs, debiased), rtol=0, atol=F32_TOL)


# --- bad input ------------------------------------------------------------------------------

X = torch.randn(6, 3, generator=_gen(70), dtype=F64)

BAD = [
    ("token counts", lambda: linear_cka(X, X[:5]), r"same batch and token axes"),
    ("batch axes", lambda: linear_cka(X.expand(2, 6, 3), X), r"same batch and token axes"),
    ("dtypes", lambda: linear_cka(X, X.float()), "same dtype"),
    ("integer", lambda: linear_cka(X.long(), X.long()), "floating"),
    ("one token", lambda: linear_cka(X[:1], X[:1]), "at least 2 tokens"),
    ("3 tokens debiased", lambda: linear_cka(X[:3], X[:3], debiased=True),
     "at least 4 tokens for debiased CKA"),
    ("nan", lambda: linear_cka(X, X * float("nan")), "y has non-finite"),
    ("identical tokens x", lambda: linear_cka(torch.ones(6, 3, dtype=F64), X),
     "x has zero variance"),
    ("identical tokens y", lambda: linear_cka(X, torch.ones(6, 3, dtype=F64), True),
     "y has a zero unbiased HSIC estimate"),
    ("equidistant debiased", lambda: linear_cka(X[:4], torch.eye(4, dtype=F64), True),
     "y has a zero unbiased HSIC estimate.*equidistant"),
    ("wide identical", lambda: linear_cka(torch.ones(6, 50, dtype=F64), X), "x has zero variance"),
    ("matrix 2-d", lambda: cka_matrix(X), "at least 3 dims"),
    ("matrix one token", lambda: cka_matrix(X[:1].expand(3, 1, 3)), "at least 2 tokens"),
    ("matrix identical layer", lambda: cka_matrix(torch.stack([X, torch.zeros_like(X)])),
     "xs has zero variance"),
    ("matrix equidistant debiased", lambda: cka_matrix(torch.eye(8, dtype=F64)[None], True),
     "xs has a zero unbiased HSIC estimate"),
    ("matrix inf", lambda: cka_matrix(torch.stack([X, X * float("inf")])), "non-finite"),
]


@pytest.mark.parametrize(("case", "call", "match"), BAD, ids=[b[0] for b in BAD])
def test_degenerate_input_is_refused_with_a_message(case, call, match):
    with pytest.raises(ValueError, match=match):
        call()
