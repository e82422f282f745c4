"""Attention entropy and VDI against closed forms, a row-by-row loop, and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from probes.attention import attention_entropy, vdi, vdi_null


def uniform_pattern(t: int, causal: bool, dtype=torch.float64) -> torch.Tensor:
    allowed = torch.ones(t, t, dtype=dtype)
    if causal:
        allowed = allowed.tril()
    return allowed / allowed.sum(dim=-1, keepdim=True)


def softmax_pattern(*shape: int, causal: bool, seed: int = 0, dtype=torch.float64,
                    scale: float = 2.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(*shape, generator=gen, dtype=torch.float64)
    if causal:
        t = shape[-1]
        logits = logits.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), -math.inf)
    return logits.to(dtype).softmax(dim=-1)


def per_row_loop(pattern: torch.Tensor, causal: bool) -> float:
    """VDI of one [q, k] pattern, row by row, as the docstring states it."""
    q, k = pattern.shape
    ratios = []
    for i in range(q):
        m = i + 1 if causal else k
        if m == 1:
            continue
        row = pattern[i]
        h = -sum(float(p) * math.log(float(p)) for p in row if p > 0)
        ratios.append(h / math.log(m))
    return sum(ratios) / len(ratios)


# --- closed forms ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5, 64])
def test_entropy_of_a_uniform_row_is_ln_k_and_of_a_one_hot_row_is_zero(k):
    p = torch.stack([torch.full((k,), 1 / k, dtype=torch.float64),
                     torch.eye(k, dtype=torch.float64)[k // 2]])
    h = attention_entropy(p)
    torch.testing.assert_close(h, torch.tensor([math.log(k), 0.0], dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_entropy_equals_torch_special_entr_summed_including_exact_zeros():
    p = softmax_pattern(3, 4, 10, 10, causal=True)
    torch.testing.assert_close(attention_entropy(p), torch.special.entr(p).sum(-1),
                               rtol=0, atol=0)


@pytest.mark.parametrize("t", [2, 3, 6, 50])
@pytest.mark.parametrize("causal", [True, False])
def test_vdi_of_uniform_attention_is_one_per_row(t, causal):
    assert float(vdi(uniform_pattern(t, causal), causal)) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("t", [2, 3, 6, 10, 100])
def test_seq_len_vdi_of_uniform_causal_attention_is_ln_t_factorial_over_t_ln_t(t):
    got = float(vdi(uniform_pattern(t, causal=True), causal=True, normalise="seq_len"))
    assert got == pytest.approx(math.lgamma(t + 1) / (t * math.log(t)), abs=1e-12)


def test_seq_len_vdi_of_uniform_causal_attention_over_6_tokens_is_0_6119917():
    got = float(vdi(uniform_pattern(6, causal=True), causal=True, normalise="seq_len"))
    assert abs(got - 0.6119917) < 1e-6


@pytest.mark.parametrize("normalise", ["per_row", "seq_len"])
def test_vdi_of_one_hot_rows_is_zero(normalise):
    t = 7
    on_self = torch.eye(t, dtype=torch.float64)                  # allowed under the causal mask
    on_first = torch.zeros(t, t, dtype=torch.float64)
    on_first[:, 0] = 1.0
    for pattern in (on_self, on_first):
        assert float(vdi(pattern, causal=True, normalise=normalise)) == 0.0
        assert float(vdi(pattern, causal=False, normalise=normalise)) == 0.0


@pytest.mark.parametrize("n", [2, 3, 6, 17])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("normalise", ["per_row", "seq_len"])
def test_vdi_null_equals_vdi_of_an_explicit_uniform_pattern(n, causal, normalise):
    null = vdi_null(n, causal, normalise, dtype=torch.float64)
    explicit = vdi(uniform_pattern(n, causal), causal, normalise)
    assert float(null) == pytest.approx(float(explicit), abs=1e-12)


def test_vdi_null_takes_dtype_and_device():
    null = vdi_null(6, True, "seq_len", dtype=torch.float64, device="cpu")
    assert null.dtype == torch.float64 and null.device.type == "cpu" and null.ndim == 0
    assert vdi_null(6, True).dtype == torch.get_default_dtype()


# --- the per-row rule -----------------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False])
def test_per_row_vdi_equals_a_row_by_row_loop_that_skips_single_key_rows(causal):
    p = softmax_pattern(9, 9, causal=causal, seed=1)
    assert float(vdi(p, causal)) == pytest.approx(per_row_loop(p, causal), abs=1e-12)


def test_per_row_vdi_leaves_out_the_causal_first_row():
    # Every row uniform over its allowed keys; row 0 has one key whatever the model does.
    # Scoring row 0 as 0 would give (T − 1)/T; leaving it out gives exactly 1.
    t = 8
    p = uniform_pattern(t, causal=True)
    ratios = attention_entropy(p)[1:] / torch.arange(2, t + 1, dtype=torch.float64).log()
    assert float(ratios.sum() / t) == pytest.approx((t - 1) / t, abs=1e-12)
    assert float(vdi(p, causal=True)) == pytest.approx(1.0, abs=1e-12)


def test_bidirectional_vdi_allows_fewer_queries_than_keys():
    p = softmax_pattern(3, 5, 11, causal=False)                  # [head, query, key]
    got = vdi(p, causal=False)
    assert got.shape == (3,)
    for h in range(3):
        assert float(got[h]) == pytest.approx(per_row_loop(p[h], False), abs=1e-12)


# --- batching, dtype, gradients -------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("normalise", ["per_row", "seq_len"])
def test_vdi_batched_over_layer_and_head_equals_a_loop(causal, normalise):
    p = softmax_pattern(3, 4, 12, 12, causal=causal, seed=2)     # [layer, head, n, n]
    batched = vdi(p, causal, normalise)
    entropy = attention_entropy(p)
    assert batched.shape == (3, 4) and entropy.shape == (3, 4, 12)
    for layer in range(3):
        for head in range(4):
            assert float(batched[layer, head]) == pytest.approx(
                float(vdi(p[layer, head], causal, normalise)), abs=1e-14)


@pytest.mark.parametrize("causal", [True, False])
def test_float32_vdi_equals_float64_within_1e_5(causal):
    p64 = softmax_pattern(2, 512, 512, causal=causal, seed=3)
    p32 = softmax_pattern(2, 512, 512, causal=causal, seed=3, dtype=torch.float32)
    got = vdi(p32, causal)                        # a float32 softmax passes the row check
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), vdi(p64, causal), rtol=0, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("normalise", ["per_row", "seq_len"])
def test_vdi_passes_gradcheck_through_a_softmax(causal, normalise):
    t = 4
    mask = torch.ones(t, t, dtype=torch.bool).triu(1)
    logits = torch.randn(2, t, t, generator=torch.Generator().manual_seed(4),
                         dtype=torch.float64, requires_grad=True)

    def loss(logits):
        if causal:
            logits = logits.masked_fill(mask, -math.inf)
        return vdi(logits.softmax(dim=-1), causal, normalise)

    assert torch.autograd.gradcheck(loss, (logits,))


def test_vdi_passes_gradcheck_in_the_pattern_itself():
    p = softmax_pattern(2, 4, 4, causal=False, seed=5).requires_grad_()
    # gradcheck's perturbations (1e-6) leave rows off 1, beyond the float64 row check, so
    # the rows are renormalised inside the checked function.
    assert torch.autograd.gradcheck(lambda p: vdi(p / p.sum(-1, keepdim=True), causal=False),
                                    (p,))


def test_vdi_gradient_through_a_causal_softmax_is_finite_where_entr_gives_nan():
    t = 6
    mask = torch.ones(t, t, dtype=torch.bool).triu(1)
    logits = torch.randn(t, t, generator=torch.Generator().manual_seed(6),
                         dtype=torch.float64, requires_grad=True)
    vdi(logits.masked_fill(mask, -math.inf).softmax(-1), causal=True).backward()
    assert logits.grad.isfinite().all()
    assert (logits.grad[mask] == 0).all() and (logits.grad[~mask].abs() > 0).any()
    # The reason for _Entr: torch.special.entr's derivative at 0 is inf, and 0·inf is NaN.
    naive = logits.detach().requires_grad_()
    torch.special.entr(naive.masked_fill(mask, -math.inf).softmax(-1)).sum().backward()
    assert naive.grad.isnan().any()


def test_vdi_leaves_its_input_unchanged():
    p = softmax_pattern(3, 8, 8, causal=True, seed=7)
    before = p.clone()
    vdi(p, causal=True)
    vdi(p, causal=True, normalise="seq_len")
    assert torch.equal(p, before)


# --- bad input ----------------------------------------------------------------------------


def bad_rows() -> torch.Tensor:
    p = uniform_pattern(4, causal=False)
    p[2] *= 1.01
    return p


def negative_entry() -> torch.Tensor:
    p = uniform_pattern(4, causal=False)
    p[1, 0], p[1, 1] = -0.25, 0.75
    return p


def nan_entry() -> torch.Tensor:
    p = uniform_pattern(4, causal=False)
    p[0, 0] = math.nan
    return p


@pytest.mark.parametrize("pattern, match", [
    (bad_rows(), "rows must sum to 1"),
    (negative_entry(), "negative entries"),
    (nan_entry(), "non-finite"),
    (torch.ones(4, 4, dtype=torch.int64), "floating"),
    (torch.ones(4), r"\[\.\.\., query, key\]"),
    (torch.ones(0, 4), "at least one query"),
])
def test_bad_pattern_raises_in_entropy_and_vdi(pattern, match):
    with pytest.raises(ValueError, match=match):
        attention_entropy(pattern)
    with pytest.raises(ValueError, match=match):
        vdi(pattern, causal=False)


def test_vdi_of_a_single_key_raises():
    with pytest.raises(ValueError, match="at least 2 keys"):
        vdi(torch.ones(3, 1), causal=False)
    with pytest.raises(ValueError, match="at least 2 keys"):
        vdi(torch.ones(1, 1), causal=True)


def test_causal_vdi_of_a_bidirectional_pattern_raises():
    with pytest.raises(ValueError, match="above the diagonal"):
        vdi(uniform_pattern(5, causal=False), causal=True)


def test_causal_vdi_of_a_non_square_pattern_raises():
    with pytest.raises(ValueError, match=r"\[\.\.\., n, n\]"):
        vdi(torch.full((3, 5), 0.2), causal=True)


def test_unknown_normalise_raises():
    with pytest.raises(ValueError, match="normalise must be one of"):
        vdi(uniform_pattern(4, causal=True), causal=True, normalise="seqlen")
    with pytest.raises(ValueError, match="normalise must be one of"):
        vdi_null(4, causal=True, normalise="row")


@pytest.mark.parametrize("n", [1, 0, 2.0, True])
def test_vdi_null_of_fewer_than_two_tokens_or_a_non_int_raises(n):
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        vdi_null(n, causal=True)
