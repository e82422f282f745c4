"""probes.spectral: closed forms, the small-side identity for OV circuits, batching, precision,
and refusal of degenerate input."""

from __future__ import annotations

import math

import pytest
import torch

from probes.spectral import layer_ov_spectral_radius, ov_spectral_radius, spectral_radius

F64 = torch.float64


def random_ov(*shape, gen, dtype=F64):
    """W_V [*b, head, d_model, d_head] and W_O [*b, head, d_head, d_model] for shape =
    (*b, head, d_model, d_head), scaled so that ρ is O(1)."""
    *lead, d_model, d_head = shape
    w_v = torch.randn(*lead, d_model, d_head, generator=gen, dtype=F64) / math.sqrt(d_model)
    w_o = torch.randn(*lead, d_head, d_model, generator=gen, dtype=F64) / math.sqrt(d_head)
    return w_v.to(dtype), w_o.to(dtype)


@pytest.mark.parametrize("c", [-3.0, 0.0, 0.5, 2.0])
def test_spectral_radius_of_a_multiple_of_the_identity_is_its_absolute_value(c):
    assert float(spectral_radius(c * torch.eye(7, dtype=F64))) == pytest.approx(abs(c), abs=1e-12)


@pytest.mark.parametrize("angle", [0.1, 1.0, math.pi / 2, 3.0])
def test_spectral_radius_of_a_rotation_is_one(angle):
    c, s = math.cos(angle), math.sin(angle)
    rotation = torch.eye(4, dtype=F64)
    rotation[:2, :2] = torch.tensor([[c, -s], [s, c]], dtype=F64)
    assert float(spectral_radius(rotation)) == pytest.approx(1.0, abs=1e-12)


def test_spectral_radius_of_a_nilpotent_matrix_is_zero_and_below_its_norm():
    m = torch.triu(torch.ones(5, 5, dtype=F64), diagonal=1)
    assert float(spectral_radius(m)) <= 1e-12
    assert float(torch.linalg.matrix_norm(m, ord=2)) > 1


def test_spectral_radius_is_batched_over_leading_axes_like_a_loop():
    m = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    batched = spectral_radius(m)
    assert batched.shape == (2, 3)
    looped = torch.tensor([[float(spectral_radius(m[i, j])) for j in range(3)] for i in range(2)],
                          dtype=F64)
    assert torch.allclose(batched, looped, rtol=0, atol=1e-12)


def test_ov_spectral_radius_from_the_small_side_equals_the_d_model_square_product():
    w_v, w_o = random_ov(3, 12, 64, 8, gen=torch.Generator().manual_seed(1))
    direct = torch.linalg.eigvals(w_v @ w_o).abs().amax(-1)          # [3, 12] from 64 × 64
    got = ov_spectral_radius(w_v, w_o)
    assert got.shape == (3, 12)
    assert (got - direct).abs().max() <= 1e-10


def test_ov_spectral_radius_of_a_gram_pair_is_the_largest_squared_singular_value():
    w_v, _ = random_ov(4, 32, 5, gen=torch.Generator().manual_seed(2))
    sigma = torch.linalg.svdvals(w_v)[..., 0]
    assert (ov_spectral_radius(w_v, w_v.mT) - sigma**2).abs().max() <= 1e-12


def test_ov_spectral_radius_is_batched_over_layers_like_a_loop():
    w_v, w_o = random_ov(4, 6, 40, 5, gen=torch.Generator().manual_seed(3))
    batched = ov_spectral_radius(w_v, w_o)
    looped = torch.stack([ov_spectral_radius(w_v[l], w_o[l]) for l in range(4)])
    assert torch.allclose(batched, looped, rtol=0, atol=1e-12)


@pytest.mark.parametrize("heads", [2, 12])   # H·d_head below and equal to d_model
def test_layer_ov_spectral_radius_equals_that_of_the_summed_value_map(heads):
    w_v, w_o = random_ov(3, heads, 48, 4, gen=torch.Generator().manual_seed(4))
    v = (w_v @ w_o).sum(-3)
    expected = torch.linalg.eigvals(v).abs().amax(-1)
    got = layer_ov_spectral_radius(w_v, w_o)
    assert got.shape == (3,)
    assert (got - expected).abs().max() <= 1e-10


def test_layer_ov_spectral_radius_of_cancelling_heads_is_zero_up_to_sqrt_eps():
    w_v, w_o = random_ov(1, 16, 4, gen=torch.Generator().manual_seed(5))
    # V = 0, but the small side [[W_O W_V, W_O W_V], [−W_O W_V, −W_O W_V]] is nilpotent with
    # Jordan blocks of size 2, whose eigenvalues rounding moves by ~sqrt(eps)
    got = float(layer_ov_spectral_radius(torch.cat([w_v, w_v]), torch.cat([w_o, -w_o])))
    assert got <= 1e-6


def test_float32_is_within_1e_5_relative_of_float64():
    w_v, w_o = random_ov(6, 12, 64, 16, gen=torch.Generator().manual_seed(6))
    for f in (ov_spectral_radius, layer_ov_spectral_radius):
        r64 = f(w_v, w_o)
        r32 = f(w_v.float(), w_o.float())
        assert r32.dtype == torch.float32
        assert ((r32.double() - r64).abs() / r64).max() <= 1e-5


@pytest.mark.parametrize(("bad", "match"), [
    (torch.ones(3, 4, dtype=F64), r"\[\.\.\., n, n\]"),
    (torch.ones(3, 3, dtype=torch.int64), "floating"),
    (torch.ones(3, 3, dtype=torch.bfloat16), "float32 or float64"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]], dtype=F64), "non-finite"),
    (torch.ones(0, 0, dtype=F64), "at least 1 rows"),
])
def test_spectral_radius_refuses_degenerate_matrices(bad, match):
    with pytest.raises(ValueError, match=match):
        spectral_radius(bad)


@pytest.mark.parametrize("f", [ov_spectral_radius, layer_ov_spectral_radius])
@pytest.mark.parametrize(("w_v", "w_o", "match"), [
    (torch.ones(2, 8, 4, dtype=F64), torch.ones(2, 8, 4, dtype=F64), "same shape"),
    (torch.ones(2, 8, 4, dtype=F64), torch.ones(3, 4, 8, dtype=F64), "same shape"),
    (torch.ones(8, 4, dtype=F64), torch.ones(4, 8, dtype=F64), "at least 3 dims"),
    (torch.ones(2, 8, 0, dtype=F64), torch.ones(2, 0, 8, dtype=F64), "d_head"),
    (torch.ones(2, 8, 4, dtype=torch.int64), torch.ones(2, 4, 8, dtype=F64), "floating"),
    (torch.full((2, 8, 4), float("inf"), dtype=F64), torch.ones(2, 4, 8, dtype=F64), "non-finite"),
])
def test_ov_radii_refuse_mismatched_or_degenerate_weights(f, w_v, w_o, match):
    with pytest.raises(ValueError, match=match):
        f(w_v, w_o)
