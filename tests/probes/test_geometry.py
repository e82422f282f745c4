"""probes.geometry: closed forms, a second formulation, vectorised = loop, float32 ≈ float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probes.geometry import (
    EFFECTIVE_RANK_VARIANTS,
    effective_rank,
    gram,
    inner_product_histogram,
    mass_near_one,
    nn_stability,
    to_sphere,
)

F64 = torch.float64
# Closed forms are checked in float64 to the accuracy the probes promise.
EXACT = 1e-6


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthonormal_columns(rows: int, cols: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=_gen(seed), dtype=F64))
    return q


def _with_singular_values(sigma: list[float], n: int, d: int, seed: int) -> torch.Tensor:
    """x = U diag(σ) Vᵀ with random orthonormal U (n × k), V (d × k)."""
    k = len(sigma)
    u, v = _orthonormal_columns(n, k, seed), _orthonormal_columns(d, k, seed + 1)
    return u @ torch.diag(torch.tensor(sigma, dtype=F64)) @ v.mT


def _erank_closed_form(sigma: list[float], variant: str) -> float:
    if variant == "participation":
        lam = [s * s for s in sigma]
        return sum(lam) ** 2 / sum(v * v for v in lam)
    w = sigma if variant == "entropy" else [s * s for s in sigma]
    p = [v / sum(w) for v in w]
    return math.exp(-sum(q * math.log(q) for q in p if q > 0))


def _pair_gram(pairs: list[tuple[int, int]], n: int) -> torch.Tensor:
    """A Gram where the tokens of each listed pair are close (0.95), all others far (0.1)."""
    g = torch.full((n, n), 0.1, dtype=F64)
    for i, j in pairs:
        g[i, j] = g[j, i] = 0.95
    return g.fill_diagonal_(1.0)


# --- to_sphere and gram ---------------------------------------------------------------------

def test_to_sphere_gives_unit_rows_pointing_the_same_way():
    x = torch.randn(3, 5, 7, generator=_gen(0), dtype=F64) * 10
    x_hat = to_sphere(x)
    torch.testing.assert_close(x_hat.norm(dim=-1), torch.ones(3, 5, dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(x_hat * x.norm(dim=-1, keepdim=True), x, rtol=1e-14, atol=0)


def test_to_sphere_forgets_a_positive_rescaling_of_each_row():
    x = torch.randn(6, 4, generator=_gen(1), dtype=F64)
    c = torch.rand(6, 1, generator=_gen(2), dtype=F64) * 100 + 0.01
    torch.testing.assert_close(to_sphere(c * x), to_sphere(x), rtol=0, atol=1e-15)


def test_gram_entries_are_the_cosines_between_tokens():
    x = torch.randn(5, 3, generator=_gen(3), dtype=F64)
    g = gram(to_sphere(x))
    for i in range(5):
        for j in range(5):
            cos = float(x[i] @ x[j] / (x[i].norm() * x[j].norm()))
            assert abs(float(g[i, j]) - cos) < 1e-14


# --- effective_rank -------------------------------------------------------------------------

@pytest.mark.parametrize(("variant", "published"), [
    ("entropy", 1.88988), ("entropy_sq", 1.64938), ("participation", 25 / 17)])
def test_effective_rank_of_singular_values_2_and_1_is_the_closed_form_whatever_the_rotation(
        variant, published):
    closed = _erank_closed_form([2.0, 1.0], variant)
    assert abs(closed - published) < 5e-6  # the five digits quoted in the docs
    for seed in (0, 10, 20):  # U diag(2, 1) Vᵀ for three random orthonormal U, V
        x = _with_singular_values([2.0, 1.0], n=9, d=6, seed=seed)
        assert abs(float(effective_rank(x, variant)) - closed) < EXACT
        assert abs(float(effective_rank(x.mT, variant)) - closed) < EXACT  # n < d side too


@pytest.mark.parametrize("variant", EFFECTIVE_RANK_VARIANTS)
@pytest.mark.parametrize("k", [1, 2, 5])
def test_effective_rank_of_the_identity_I_k_is_k(variant, k):
    assert abs(float(effective_rank(torch.eye(k, dtype=F64), variant)) - k) < EXACT
    rotated = _with_singular_values([3.0] * k, n=8, d=7, seed=k)  # k equal σ inside a bigger x
    assert abs(float(effective_rank(rotated, variant)) - k) < EXACT


@pytest.mark.parametrize("variant", EFFECTIVE_RANK_VARIANTS)
def test_effective_rank_is_exact_on_a_collapsed_cloud_with_hundreds_of_zero_singular_values(
        variant):
    # A rank-2 cloud of 128 tokens in 96 dims, the regime of late-layer clustering: taking
    # σ_i = √λ_i from the Gram's eigenvalues puts "entropy" off by 5e-6 here (94 σ_i ~ 1e-8).
    x = _with_singular_values([2.0, 1.0], n=128, d=96, seed=4)
    assert abs(float(effective_rank(x, variant)) - _erank_closed_form([2.0, 1.0], variant)) < EXACT


def test_effective_rank_of_a_single_token_is_one():
    x = torch.randn(1, 5, generator=_gen(5), dtype=F64)
    for variant in EFFECTIVE_RANK_VARIANTS:
        assert abs(float(effective_rank(x, variant)) - 1) < EXACT


def test_effective_rank_is_of_x_as_given_so_row_norms_matter_unless_projected():
    # Two orthogonal directions, one token 10x longer: raw X has one dominant σ, X̂ has two
    # equal ones.
    x = torch.tensor([[10.0, 0.0], [0.0, 1.0]], dtype=F64)
    assert abs(float(effective_rank(to_sphere(x))) - 2) < EXACT
    assert abs(float(effective_rank(x)) - _erank_closed_form([10.0, 1.0], "entropy")) < EXACT


# --- mass_near_one --------------------------------------------------------------------------

def test_mass_near_one_of_identical_tokens_is_one():
    x = torch.randn(1, 16, generator=_gen(6), dtype=F64).expand(12, 16) * torch.arange(
        1, 13, dtype=F64)[:, None]
    assert float(mass_near_one(gram(to_sphere(x)))) == 1.0


def test_mass_near_one_of_orthonormal_tokens_is_zero():
    x_hat = _orthonormal_columns(10, 6, seed=7).mT  # 6 orthonormal tokens in 10 dims
    assert float(mass_near_one(gram(x_hat))) == 0.0


def test_mass_near_one_counts_pairs_i_less_than_j_strictly_above_the_threshold():
    g = _pair_gram([(0, 1), (2, 3)], n=4)  # 2 close pairs among C(4, 2) = 6
    assert abs(float(mass_near_one(g)) - 2 / 6) < EXACT
    assert float(mass_near_one(g, threshold=0.95)) == 0.0  # 0.95 itself is not above 0.95
    assert abs(float(mass_near_one(g, threshold=0.1)) - 2 / 6) < EXACT
    assert float(mass_near_one(g, threshold=0.0)) == 1.0


# --- inner_product_histogram ----------------------------------------------------------------

def test_histogram_of_a_known_gram_puts_each_pair_in_its_bin():
    # Bins [-1, -0.5), [-0.5, 0), [0, 0.5), [0.5, 1]. Pairs (0,1)=0.9 → bin 3; (0,2)=-0.9 → 0;
    # (0,3)=-0.3 → 1; (1,2)=0.0 → 2 and (1,3)=0.5 → 3 (a left edge belongs to its bin);
    # (2,3)=1.0 → 3 (the closed right edge).
    g = torch.tensor([[1.0, 0.9, -0.9, -0.3],
                      [0.9, 1.0, 0.0, 0.5],
                      [-0.9, 0.0, 1.0, 1.0],
                      [-0.3, 0.5, 1.0, 1.0]], dtype=F64)
    h = inner_product_histogram(g, 4)
    torch.testing.assert_close(h, torch.tensor([1, 1, 1, 3], dtype=F64) / 6, rtol=0, atol=EXACT)


def test_histogram_equals_numpy_histogram_over_the_upper_triangle():
    x_hat = to_sphere(torch.randn(40, 5, generator=_gen(8), dtype=F64))
    g = gram(x_hat)
    upper = g.numpy()[np.triu_indices(40, k=1)]
    for bins in (1, 7, 50):
        counts, _ = np.histogram(upper, bins=bins, range=(-1, 1))
        expected = torch.from_numpy(counts / upper.size)
        torch.testing.assert_close(inner_product_histogram(g, bins), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_histogram_of_collapsed_tokens_is_all_in_the_last_bin_even_past_1_by_roundoff(dtype):
    x = torch.randn(1, 384, generator=_gen(9), dtype=dtype).expand(30, 384) * torch.rand(
        30, 1, generator=_gen(10), dtype=dtype)
    h = inner_product_histogram(gram(to_sphere(x)), 10)
    assert h.tolist() == [0.0] * 9 + [1.0]


def test_histogram_fractions_sum_to_one():
    g = gram(to_sphere(torch.randn(4, 33, 8, generator=_gen(11), dtype=F64)))
    torch.testing.assert_close(inner_product_histogram(g, 13).sum(-1), torch.ones(4, dtype=F64))


# --- nn_stability ---------------------------------------------------------------------------

def test_nn_stability_of_identical_grams_is_one():
    g = gram(to_sphere(torch.randn(3, 20, 6, generator=_gen(12), dtype=F64)))
    assert nn_stability(g, g).tolist() == [1.0, 1.0, 1.0]


def test_nn_stability_with_regrouped_neighbours_is_the_fraction_that_kept_theirs():
    # Neighbours 1,0,3,2,5,4 become 1,0,4,5,2,3: only tokens 0 and 1 keep theirs.
    before = _pair_gram([(0, 1), (2, 3), (4, 5)], n=6)
    after = _pair_gram([(0, 1), (2, 4), (3, 5)], n=6)
    assert abs(float(nn_stability(before, after)) - 2 / 6) < EXACT
    perm = torch.tensor([1, 2, 3, 4, 5, 0])  # relabel every token: all neighbours change
    shifted = before[perm][:, perm]
    assert float(nn_stability(before, shifted)) == 0.0


def test_nn_stability_never_picks_the_token_itself_and_breaks_ties_to_the_lowest_index():
    # Token 0 ties between tokens 1 and 2 in `tied`; the seed's argmax (and ours) takes 1.
    tied = torch.tensor([[1.0, 0.5, 0.5], [0.5, 1.0, 0.2], [0.5, 0.2, 1.0]], dtype=F64)
    to_1 = torch.tensor([[1.0, 0.6, 0.5], [0.6, 1.0, 0.2], [0.5, 0.2, 1.0]], dtype=F64)
    to_2 = torch.tensor([[1.0, 0.5, 0.6], [0.5, 1.0, 0.2], [0.6, 0.2, 1.0]], dtype=F64)
    assert float(nn_stability(tied, to_1)) == 1.0
    assert abs(float(nn_stability(tied, to_2)) - 2 / 3) < EXACT


def test_nn_stability_of_two_tokens_is_always_one():
    a = torch.tensor([[1.0, -0.9], [-0.9, 1.0]], dtype=F64)
    b = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=F64)
    assert float(nn_stability(a, b)) == 1.0


# --- vectorised = loop; float32 ≈ float64 -----------------------------------------------------

def _batch(seed: int, dtype=F64) -> torch.Tensor:
    """[2, 3, 24, 10]: tokens with a shared direction, so pairs spread over (-1, 1)."""
    g = _gen(seed)
    x = torch.randn(2, 3, 24, 10, generator=g, dtype=F64) + torch.randn(
        2, 3, 1, 10, generator=g, dtype=F64)
    return x.to(dtype)


PER_MATRIX = {
    "to_sphere": lambda x: to_sphere(x),
    "gram": lambda x: gram(to_sphere(x)),
    "mass_near_one": lambda x: mass_near_one(gram(to_sphere(x)), 0.5),
    "histogram": lambda x: inner_product_histogram(gram(to_sphere(x)), 9),
    **{f"erank_{v}": (lambda x, v=v: effective_rank(x, v)) for v in EFFECTIVE_RANK_VARIANTS},
}


@pytest.mark.parametrize("name", list(PER_MATRIX))
def test_batched_call_equals_a_python_loop_over_the_leading_axes(name):
    f, x = PER_MATRIX[name], _batch(13)
    looped = torch.stack([torch.stack([f(x[i, j]) for j in range(3)]) for i in range(2)])
    torch.testing.assert_close(f(x), looped, rtol=1e-12, atol=1e-14)


def test_batched_nn_stability_equals_a_python_loop_over_the_leading_axes():
    g_prev, g_next = gram(to_sphere(_batch(14))), gram(to_sphere(_batch(15)))
    g_next[0, 0] = g_prev[0, 0]  # one batch entry at stability 1
    looped = torch.tensor([[float(nn_stability(g_prev[i, j], g_next[i, j])) for j in range(3)]
                           for i in range(2)], dtype=F64)
    assert torch.equal(nn_stability(g_prev, g_next), looped)
    assert looped[0, 0] == 1.0 and (looped < 1).any()


# Measured max difference float32 vs float64 over 20 random [3, 64, 48] inputs: to_sphere 8e-8,
# gram 5e-7 (absolute); effective rank 1.2e-6 relative (all variants, X and X̂). Tolerances
# below are ~10x those.
F32_TOL = {"to_sphere": (0, 1e-6), "gram": (0, 5e-6),
           **{f"erank_{v}": (1e-5, 0) for v in EFFECTIVE_RANK_VARIANTS}}


@pytest.mark.parametrize("name", list(F32_TOL))
def test_float32_agrees_with_float64_within_the_measured_tolerance(name):
    f, x = PER_MATRIX[name], _batch(16)
    out32 = f(x.float())
    assert out32.dtype == torch.float32
    rtol, atol = F32_TOL[name]
    torch.testing.assert_close(out32.double(), f(x), rtol=rtol, atol=atol)


def test_counting_probes_agree_exactly_in_float32_away_from_edges_and_ties():
    x = _batch(17)
    g64, g32 = gram(to_sphere(x)), gram(to_sphere(x.float()))
    edges = torch.cat([torch.linspace(-1, 1, 10, dtype=F64), torch.tensor([0.5], dtype=F64)])
    off = ~torch.eye(24, dtype=torch.bool)
    # Precondition: no inner product within float32 roundoff (1e-5) of a bin edge of 9 bins or
    # of the threshold 0.5.
    assert ((g64[..., off].unsqueeze(-1) - edges).abs().min() > 1e-5)
    torch.testing.assert_close(inner_product_histogram(g32, 9).double(),
                               inner_product_histogram(g64, 9), rtol=0, atol=1e-7)
    pairs = 24 * 23 // 2  # compare counts: the fractions themselves round differently
    assert torch.equal((mass_near_one(g32, 0.5) * pairs).round().double(),
                       (mass_near_one(g64, 0.5) * pairs).round())
    # The next layer: the same tokens moved a little, so some neighbours change and some not.
    x_next = x + 0.3 * torch.randn(x.shape, generator=_gen(18), dtype=F64)
    h64, h32 = gram(to_sphere(x_next)), gram(to_sphere(x_next.float()))
    for g in (g64, h64):  # precondition: every nearest neighbour wins by more than roundoff
        top2 = g.masked_fill(~off, -2).topk(2, dim=-1).values
        assert (top2[..., 0] - top2[..., 1]).min() > 1e-5
    kept64, kept32 = nn_stability(g64, h64) * 24, nn_stability(g32, h32) * 24
    assert torch.equal(kept32.round().double(), kept64.round())
    assert ((kept64 > 0.5) & (kept64 < 23.5)).all()  # neither trivially 0 nor 1


# --- bad input ------------------------------------------------------------------------------

G3 = torch.eye(3, dtype=F64)

BAD = [
    ("zero row", lambda: to_sphere(torch.zeros(2, 3)), "all-zero vector"),
    ("nan", lambda: to_sphere(torch.tensor([[1.0, float("nan")]])), "non-finite"),
    ("integer", lambda: to_sphere(torch.ones(2, 3, dtype=torch.int64)), "floating"),
    ("gram nan", lambda: gram(torch.tensor([[float("inf"), 0.0]])), "non-finite"),
    ("gram 1-d", lambda: gram(torch.ones(3)), "at least 2 dims"),
    ("one token", lambda: mass_near_one(torch.ones(1, 1)), "at least 2 tokens"),
    ("not square", lambda: mass_near_one(torch.ones(3, 4)), r"\[\.\.\., n, n\]"),
    ("threshold 1", lambda: mass_near_one(G3, threshold=1.0), r"threshold must lie in \[-1, 1\)"),
    ("gram inf", lambda: mass_near_one(G3 * float("inf")), "non-finite"),
    ("variant", lambda: effective_rank(G3, "roy"), "variant must be one of"),
    ("zero matrix", lambda: effective_rank(torch.zeros(2, 4, 3)), "all-zero matrix"),
    ("no tokens", lambda: effective_rank(torch.ones(0, 3)), "at least 1 tokens"),
    ("erank nan", lambda: effective_rank(G3 * float("nan")), "non-finite"),
    ("shapes", lambda: nn_stability(G3, torch.eye(4, dtype=F64)), "same shape"),
    ("nn one token", lambda: nn_stability(torch.ones(1, 1), torch.ones(1, 1)), "2 tokens"),
    ("bins 0", lambda: inner_product_histogram(G3, 0), "bins must be a positive int"),
    ("bins float", lambda: inner_product_histogram(G3, 2.5), "bins must be a positive int"),
    ("not unit", lambda: inner_product_histogram(G3 + 1.5, 4), r"outside \[-1, 1\] beyond"),
]


@pytest.mark.parametrize(("case", "call", "match"), BAD, ids=[b[0] for b in BAD])
def test_degenerate_input_is_refused_with_a_message(case, call, match):
    with pytest.raises(ValueError, match=match):
        call()
