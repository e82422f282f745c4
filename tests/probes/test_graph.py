"""probes.graph: closed forms, agreement with a dense eigendecomposition on hard graphs, the
fallback, Sinkhorn balancing, and refusal of degenerate input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import eigh
from scipy.sparse.csgraph import laplacian

from probes import graph
from probes.graph import (
    attention_graph,
    fiedler_value,
    uniform_causal_fiedler,
    uniform_causal_pattern,
)

F64 = torch.float64


def reference_fiedler(s: torch.Tensor) -> torch.Tensor:
    """Second-smallest eigenvalue of L = I − D^{-1/2} S D^{-1/2}, self-loops kept, by a dense
    float64 eigendecomposition of L itself (the module works with M = I − L instead)."""
    s = s.double()
    r = s.sum(-1).rsqrt()
    lap = torch.eye(s.shape[-1], dtype=F64) - r[..., :, None] * s * r[..., None, :]
    return torch.linalg.eigvalsh(lap)[..., 1]


# --- graphs that are hard for an iterative eigensolver, as attention patterns (rows sum to 1) ---

def softmax_pattern(b, n, beta, causal, gen):
    logits = torch.randn(b, n, n, generator=gen, dtype=F64) * beta
    if causal:
        logits = logits.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf)
    return logits.softmax(-1)


def two_blocks(b, n, leak, gen):
    """Two dense random blocks joined by edges `leak` times weaker: λ₂ ≈ 2·leak."""
    w = torch.rand(b, n, n, generator=gen, dtype=F64)
    same = torch.zeros(n, n, dtype=torch.bool)
    same[: n // 2, : n // 2] = same[n // 2:, n // 2:] = True
    w = torch.where(same, w, leak * w)
    return w / w.sum(-1, keepdim=True)


def three_equal_blocks(n, leak):
    """Three identical blocks, equal weak links: λ₂ = λ₃ exactly (by symmetry)."""
    k = n // 3
    w = torch.full((3 * k, 3 * k), leak, dtype=F64)
    for i in range(3):
        w[i * k:(i + 1) * k, i * k:(i + 1) * k] = 1.0
    return (w / w.sum(-1, keepdim=True))[None]


def ring(n):
    """Attend to self and both cyclic neighbours: every eigenvalue but one is double."""
    i = torch.arange(n)
    a = torch.zeros(n, n, dtype=F64)
    a[i, i] = 0.5
    a[i, (i + 1) % n] = a[i, (i - 1) % n] = 0.25
    return a[None]


def previous_token(b, n, gen, sharpness=20.0):
    """A near one-hot previous-token head: a path graph, λ₂ ~ 1/n², spectrum packed near 1."""
    logits = torch.randn(b, n, n, generator=gen, dtype=F64)
    i = torch.arange(1, n)
    logits[:, i, i - 1] += sharpness
    logits[:, 0, 0] += sharpness
    return logits.softmax(-1)


def bipartite(b, n, gen, leak=1e-3):
    """Each half attends (almost) only to the other: eigenvalues of M near −1."""
    w = torch.rand(b, n, n, generator=gen, dtype=F64)
    other = torch.zeros(n, n, dtype=torch.bool)
    other[: n // 2, n // 2:] = other[n // 2:, : n // 2] = True
    w = torch.where(other, w, leak * w)
    return w / w.sum(-1, keepdim=True)


def hard_patterns():
    gen = torch.Generator().manual_seed(0)
    cases = {}
    for beta in (0.1, 1.0, 4.0, 16.0):
        cases[f"bidirectional softmax beta={beta}"] = softmax_pattern(3, 256, beta, False, gen)
        cases[f"causal softmax beta={beta}"] = softmax_pattern(3, 256, beta, True, gen)
    cases["two blocks, lambda2 ~ 1e-3"] = two_blocks(3, 256, 5e-4, gen)
    cases["two blocks, lambda2 ~ 1e-5"] = two_blocks(2, 256, 5e-6, gen)
    cases["three equal blocks (lambda2 double)"] = three_equal_blocks(255, 1e-3)
    cases["ring (double eigenvalues)"] = ring(200)
    cases["previous-token head (path)"] = previous_token(2, 256, gen)
    cases["bipartite-like"] = bipartite(3, 256, gen)
    cases["n = 2"] = softmax_pattern(4, 2, 1.0, False, gen)
    cases["n = 3"] = softmax_pattern(4, 3, 1.0, True, gen)
    return cases


HARD = hard_patterns()


@pytest.fixture
def dense_calls(monkeypatch):
    """Counts graphs handed to the dense fallback."""
    calls = []
    dense = graph._dense_mu2

    def counting(s):
        calls.append(s.shape)
        return dense(s)

    monkeypatch.setattr(graph, "_dense_mu2", counting)
    return calls


# --- closed forms ---

def test_two_disconnected_blocks_have_fiedler_value_zero():
    gen = torch.Generator().manual_seed(1)
    blocks = [torch.rand(40, 40, generator=gen, dtype=F64) for _ in range(2)]
    s = torch.block_diag(*[b + b.T for b in blocks])
    assert abs(float(fiedler_value(s))) <= 1e-6


@pytest.mark.parametrize("n", [2, 3, 10, 300])
def test_complete_graph_without_self_loops_has_fiedler_value_n_over_n_minus_1(n):
    s = torch.ones(n, n, dtype=F64) - torch.eye(n, dtype=F64)
    assert float(fiedler_value(s)) == pytest.approx(n / (n - 1), abs=1e-6)


@pytest.mark.parametrize("n", [2, 3, 10, 300])
def test_uniform_attention_keeps_self_loops_and_has_fiedler_value_one(n):
    s = attention_graph(torch.full((n, n), 1 / n, dtype=F64))
    assert float(fiedler_value(s)) == pytest.approx(1.0, abs=1e-6)


def test_scipy_laplacian_drops_self_loops_so_the_conventions_differ():
    n = 8
    s = torch.full((n, n), 1 / n, dtype=F64)
    scipy_value = eigh(laplacian(s.numpy(), normed=True), eigvals_only=True)[1]
    assert scipy_value == pytest.approx(n / (n - 1), abs=1e-12)          # J/n read as J − I
    assert float(fiedler_value(s)) == pytest.approx(1.0, abs=1e-6)        # self-loops kept
    no_loops = s - torch.diag(torch.diagonal(s))
    assert float(fiedler_value(no_loops)) == pytest.approx(scipy_value, abs=1e-6)


@pytest.mark.parametrize("n", [2, 3, 17, 64, 450])
def test_uniform_causal_fiedler_equals_a_direct_eigendecomposition(n):
    a = torch.zeros(n, n, dtype=F64)
    for i in range(n):
        a[i, : i + 1] = 1.0 / (i + 1)
    expected = reference_fiedler((a + a.T) / 2)
    assert float(uniform_causal_fiedler(n)) == pytest.approx(float(expected), abs=1e-12)
    assert float(fiedler_value(attention_graph(a))) == pytest.approx(float(expected), abs=1e-6)


def test_uniform_causal_fiedler_of_two_tokens_is_8_over_15():
    assert float(uniform_causal_fiedler(2)) == pytest.approx(8 / 15, abs=1e-12)


def test_uniform_causal_fiedler_returns_a_fresh_tensor_of_the_requested_dtype():
    first = uniform_causal_fiedler(64, dtype=torch.float32)
    assert first.dtype == torch.float32 and first.shape == ()
    first.fill_(-1.0)
    assert float(uniform_causal_fiedler(64, dtype=torch.float32)) > 0


# --- agreement with a dense eigendecomposition ---

@pytest.mark.parametrize("name", list(HARD))
def test_fiedler_value_equals_dense_eigvalsh_within_1e_6_in_float64(name):
    s = attention_graph(HARD[name])
    assert (fiedler_value(s) - reference_fiedler(s)).abs().max() <= 1e-6


@pytest.mark.parametrize("name", list(HARD))
def test_float32_graph_is_within_1e_6_of_its_float64_eigendecomposition(name):
    s32 = attention_graph(HARD[name].float())
    got = fiedler_value(s32)
    assert got.dtype == torch.float32
    # float32 Ritz values alone are off by up to ~5e-6 on the near-disconnected families; the
    # float64 Rayleigh quotient of the float32 Ritz vector is not
    assert (got.double() - reference_fiedler(s32.double())).abs().max() <= 1e-6


def test_float32_near_disconnected_graph_is_refined_in_float64_to_1e_6():
    # at 512 tokens float32 products alone put the Ritz value ~5e-6 off a λ₂ of ~1e-5
    s32 = attention_graph(two_blocks(2, 512, 5e-6, torch.Generator().manual_seed(9)).float())
    reference = reference_fiedler(s32.double())
    assert reference.max() < 2e-5
    assert (fiedler_value(s32).double() - reference).abs().max() <= 1e-6


def test_batched_call_equals_a_loop_over_graphs_and_keeps_leading_axes():
    gen = torch.Generator().manual_seed(2)
    patterns = softmax_pattern(6, 96, 2.0, False, gen).reshape(2, 3, 96, 96)
    s = attention_graph(patterns)
    batched = fiedler_value(s)
    assert batched.shape == (2, 3)
    looped = torch.tensor([[float(fiedler_value(s[i, j])) for j in range(3)] for i in range(2)],
                          dtype=F64)
    # one Gaussian start vector per position in the batch, so the two differ by rounding only
    assert (batched - looped).abs().max() <= 1e-7


def test_empty_batch_gives_an_empty_result():
    assert fiedler_value(torch.zeros(0, 5, 5, dtype=F64)).shape == (0,)


# --- the fallback ---

def test_graphs_not_converged_within_max_steps_fall_back_to_eigvalsh(dense_calls):
    s = attention_graph(HARD["bidirectional softmax beta=1.0"])
    got = fiedler_value(s, max_steps=3)
    assert len(dense_calls) == s.shape[0]
    assert (got - reference_fiedler(s)).abs().max() <= 1e-12


@pytest.mark.parametrize("max_steps", [1, 2, 5, 9, 16, 17, 40])
def test_every_step_budget_gives_the_same_value(max_steps):
    s = attention_graph(softmax_pattern(1, 64, 16.0, False, torch.Generator().manual_seed(11)))
    assert (fiedler_value(s, max_steps=max_steps) - reference_fiedler(s)).abs().max() <= 1e-6


def test_previous_token_heads_fall_back_at_the_default_budget(dense_calls):
    s = attention_graph(previous_token(2, 512, torch.Generator().manual_seed(3)))
    got = fiedler_value(s)
    assert len(dense_calls) == 2
    assert (got - reference_fiedler(s)).abs().max() <= 1e-10


def test_a_straggler_that_cannot_converge_in_budget_falls_back_before_max_steps(dense_calls,
                                                                                monkeypatch):
    gen = torch.Generator().manual_seed(10)
    patterns = torch.cat([softmax_pattern(15, 256, 1.0, False, gen), previous_token(1, 256, gen)])
    s = attention_graph(patterns)
    steps = []
    ritz = graph._ritz

    def recording(alpha, beta, tol):
        steps.append(alpha.shape[-1])
        return ritz(alpha, beta, tol)

    monkeypatch.setattr(graph, "_ritz", recording)
    got = fiedler_value(s, max_steps=128)
    assert len(dense_calls) == 1
    assert max(steps) < 128
    assert (got - reference_fiedler(s)).abs().max() <= 1e-6


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_attention_converges_without_the_fallback(dense_calls, causal):
    s = attention_graph(softmax_pattern(4, 512, 1.0, causal, torch.Generator().manual_seed(4)))
    fiedler_value(s)
    assert dense_calls == []


def test_an_invariant_krylov_space_ends_lanczos_without_the_fallback(dense_calls):
    n = 300
    s = torch.full((2, n, n), 1 / n, dtype=F64)    # M = v₁v₁ᵀ: every other vector maps to 0
    assert (fiedler_value(s) - 1).abs().max() <= 1e-12
    assert dense_calls == []


# --- the attention graph and Sinkhorn balancing ---

def test_attention_graph_is_exactly_symmetric_and_keeps_the_diagonal():
    a = softmax_pattern(3, 50, 1.0, True, torch.Generator().manual_seed(5)).float()
    s = attention_graph(a)
    assert torch.equal(s, s.mT)
    assert torch.equal(torch.diagonal(s, dim1=-2, dim2=-1), torch.diagonal(a, dim1=-2, dim2=-1))


def test_sinkhorn_balances_a_bidirectional_pattern_to_rows_and_columns_within_tol():
    a = softmax_pattern(3, 64, 2.0, False, torch.Generator().manual_seed(6))
    tol = 1e-6
    p = graph._sinkhorn(a, 100, tol)
    assert (p.sum(-1) - 1).abs().max() <= tol
    assert (p.sum(-2) - 1).abs().max() <= 1e-12
    s = attention_graph(a, sinkhorn=True, n_iter=100, tol=tol)
    assert (s.sum(-1) - 1).abs().max() <= tol          # degree (row + column sum)/2


def test_sinkhorn_drives_a_causal_pattern_toward_the_identity_and_its_fiedler_value_to_zero():
    a = uniform_causal_pattern(20)
    values = [float(fiedler_value(attention_graph(a, sinkhorn=True, n_iter=k)))
              for k in (10, 100, 1000)]
    assert values[0] > values[1] > values[2]
    assert values[2] < 1e-3
    p = graph._sinkhorn(a, 1000, 1e-6)
    assert float(torch.diagonal(p).min()) > 0.9       # the only balancing inside a triangle is I


def test_sinkhorn_with_the_seed_floor_reproduces_its_causal_baseline():
    # the seed: clip at 1e-12, 100 row/column sweeps, scipy's self-loop-free Laplacian, n = 20
    s = attention_graph(uniform_causal_pattern(20), sinkhorn=True, n_iter=100, floor=1e-12)
    value = eigh(laplacian(s.numpy(), normed=True), eigvals_only=True)[1]
    assert round(float(value), 6) == 0.108894


# --- refused input ---

@pytest.mark.parametrize(("bad", "match"), [
    (torch.ones(3, 4, dtype=F64), r"\[\.\.\., n, n\]"),
    (torch.ones(1, 1, dtype=F64), "at least 2 nodes"),
    (torch.ones(3, 3, dtype=torch.int64), "floating"),
    (torch.ones(3, 3, dtype=torch.float16), "float32 or float64"),
    (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]], dtype=F64), "non-finite"),
    (torch.tensor([[1.0, float("inf")], [float("inf"), 1.0]], dtype=F64), "non-finite"),
    (torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=F64), "negative weights"),
    (torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64), "smallest node degree"),
    (torch.tensor([[0.5, 0.5], [0.1, 0.9]], dtype=F64), "symmetric"),
])
def test_fiedler_value_refuses_degenerate_graphs(bad, match):
    with pytest.raises(ValueError, match=match):
        fiedler_value(bad)


def test_fiedler_value_refuses_a_raw_attention_pattern():
    a = softmax_pattern(2, 32, 1.0, True, torch.Generator().manual_seed(7))
    with pytest.raises(ValueError, match="symmetric"):
        fiedler_value(a)


def test_fiedler_value_refuses_a_step_budget_below_one():
    with pytest.raises(ValueError, match="max_steps"):
        fiedler_value(torch.ones(3, 3, dtype=F64), max_steps=0)


@pytest.mark.parametrize(("bad", "kwargs", "match"), [
    (torch.ones(2, 3, dtype=F64), {}, r"\[\.\.\., n, n\]"),
    (torch.ones(2, 2, dtype=torch.int32), {}, "floating"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]], dtype=F64), {}, "non-finite"),
    (torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64), {"sinkhorn": True}, "attends to nothing"),
    (torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=F64), {"sinkhorn": True}, "nothing attends to"),
    (torch.tensor([[1.5, -0.5], [0.0, 1.0]], dtype=F64), {"sinkhorn": True}, "negative"),
    (torch.eye(2, dtype=F64), {"sinkhorn": True, "n_iter": 0}, "n_iter"),
    (torch.eye(2, dtype=F64), {"sinkhorn": True, "floor": -1.0}, "floor"),
    (torch.eye(2, dtype=F64), {"floor": 1e-12}, "Sinkhorn balancing only"),
])
def test_attention_graph_refuses_degenerate_patterns(bad, kwargs, match):
    with pytest.raises(ValueError, match=match):
        attention_graph(bad, **kwargs)


def test_uniform_causal_baseline_refuses_fewer_than_two_tokens():
    with pytest.raises(ValueError, match="n >= 2"):
        uniform_causal_fiedler(1)
    with pytest.raises(ValueError, match="n must be >= 1"):
        uniform_causal_pattern(0)


def test_reference_implementation_agrees_with_scipy_on_a_graph_without_self_loops():
    """The test's own reference is checked once against scipy, on a graph where the two
    conventions coincide."""
    gen = torch.Generator().manual_seed(8)
    w = torch.rand(30, 30, generator=gen, dtype=F64)
    s = (w + w.T).fill_diagonal_(0.0)
    scipy_value = eigh(laplacian(s.numpy(), normed=True), eigvals_only=True)[1]
    assert float(reference_fiedler(s)) == pytest.approx(float(np.float64(scipy_value)), abs=1e-12)
