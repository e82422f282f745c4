"""The attention graph of a layer and its algebraic connectivity (Fiedler value).

An attention head's pattern A (rows sum to 1) read as a weighted graph on tokens gives
S = (A + Aᵀ)/2; its normalised Laplacian L = I − D^{-1/2} S D^{-1/2} has eigenvalues in [0, 2],
and λ₂ (the Fiedler value, the algebraic connectivity) is ≈ 0 when the tokens split into groups
that barely attend across, and large when attention mixes everything. One call covers every
layer and head: `fiedler_value(attention_graph(trace.pattern))` → [layer, head].

Why this module does not call `eigvalsh`: one eigenvalue is wanted, and a dense
eigendecomposition of 72 graphs of 512 tokens costs ~0.7 s (float32) to ~5 s (float64, batched)
on a 2-core CPU. λ₂ = 1 − μ₂, where μ₂ is the largest eigenvalue of M = D^{-1/2} S D^{-1/2} on
the complement of its known top eigenvector D^{1/2}1 (eigenvalue 1). Lanczos finds μ₂ from
products with M alone; its cost is a few dozen passes over the graphs, and where it has not
converged within its step budget the graph falls back to a float64 `eigvalsh` (see
`fiedler_value`).
"""

from __future__ import annotations

import functools

import torch
from jaxtyping import Float
from torch import Tensor

from probes import _checks as check

__all__ = ["attention_graph", "fiedler_value", "uniform_causal_fiedler", "uniform_causal_pattern"]


def attention_graph(
    pattern: Float[Tensor, "*b n n"],
    sinkhorn: bool = False,
    n_iter: int = 100,
    tol: float = 1e-6,
    floor: float = 0.0,
) -> Float[Tensor, "*b n n"]:
    """Symmetrised attention graph S = (A + Aᵀ)/2, optionally of the Sinkhorn-balanced pattern.

    S_ij = (A_ij + A_ji)/2: the weight between tokens i and j is the mean of the attention each
    pays the other; the diagonal (self-attention) is kept as a self-loop. With rows of A summing
    to 1, node i's degree is (1 + Σ_k A_ki)/2 ≥ 1/2 and the total weight is n.
    Range: S_ij ∈ [0, 1], symmetric (exactly: a + b = b + a in floating point).
    Limiting cases: uniform attention A = J/n gives S = J/n; one-hot self-attention gives S = I.

    sinkhorn=True first balances A to doubly stochastic (Sinkhorn–Knopp, as the seed code did):
    each iteration divides every row by its sum, then every column by its sum, so the columns
    sum to 1 exactly and the iteration stops once every row sum is within `tol` of 1, or after
    `n_iter` iterations (the seed's defaults: 100 and 1e-6; it stopped on the largest change of
    an entry instead, and later raised the cap to 500 after finding it hit silently).
    Balancing keeps the zero pattern of A. A causal (lower-triangular) pattern therefore has no
    doubly stochastic balancing except the identity — a doubly stochastic matrix is a mixture of
    permutations (Birkhoff) and the only permutation inside a lower triangle is the identity — and
    the iteration converges to I at rate ~1/k: every off-diagonal weight decays, the graph falls
    apart into self-loops, and its λ₂ sinks toward 0 with n_iter (uniform causal attention over
    20 tokens: λ₂ ≈ 0.0045 after 100 iterations, 0.0009 after 500). What comes back for a causal
    pattern is a function of `n_iter`, not of the attention; it is not doubly stochastic.
    The seed code clipped A at 1e-12 first (`floor`): every entry then is positive, balancing
    exists, and it moves O(1/n) weight into the masked upper triangle, an amount set by the floor
    (same 20 tokens, scipy's self-loop-free λ₂ of the balanced graph: floor 1e-6 → 0.280,
    1e-9 → 0.158, 1e-12 → 0.109, the seed's causal baseline, 1e-15 → 0.085). `floor` is here to
    reproduce that (with sinkhorn=True only); 0 (default) adds nothing.

    >>> A = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    >>> attention_graph(A)
    tensor([[1.0000, 0.2500],
            [0.2500, 0.5000]], dtype=torch.float64)
    >>> A = torch.tensor([[0.9, 0.1], [0.3, 0.7]], dtype=torch.float64)
    >>> P = attention_graph(A, sinkhorn=True)
    >>> round(float(P.sum(-1).sub(1).abs().max()), 6), round(float(P.sum(-2).sub(1).abs().max()), 6)
    (0.0, 0.0)
    """
    check.floating(pattern, "pattern")
    check.square(pattern, "pattern")
    check.at_least(pattern, -1, 1, "pattern", "tokens")
    # The row sums are finite exactly when every entry is (a NaN or inf anywhere propagates),
    # and cost a fraction of an elementwise isfinite over the whole pattern.
    check.finite(pattern.sum(-1), "pattern")
    if floor < 0 or (floor > 0 and not sinkhorn):
        raise ValueError(f"floor must be >= 0 and applies to Sinkhorn balancing only, got "
                         f"floor={floor}, sinkhorn={sinkhorn}.")
    a = pattern
    if sinkhorn:
        if n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {n_iter}.")
        if bool((pattern < 0).any()):
            raise ValueError("pattern has negative entries; Sinkhorn balancing needs weights >= 0.")
        # clamp: the seed's floor, only when asked for (see the docstring for what it does)
        a = _sinkhorn(pattern.clamp_min(floor) if floor > 0 else pattern, n_iter, tol)
    return (a + a.mT).mul_(0.5)


def _sinkhorn(a: Tensor, n_iter: int, tol: float) -> Tensor:
    """Alternate row and column normalisation of every matrix in the batch; stop when every row
    sum (the columns are exact after each column step) is within tol of 1."""
    # Scaling keeps a zero row zero (and a nonzero one nonzero), so this is the only moment a
    # division by zero can arise.
    if bool((a.sum(-1) == 0).any()):
        raise ValueError("pattern has a token that attends to nothing (an all-zero row); it "
                         "cannot be balanced to doubly stochastic.")
    if bool((a.sum(-2) == 0).any()):
        raise ValueError("pattern has a token that nothing attends to (an all-zero column); it "
                         "cannot be balanced to doubly stochastic.")
    p = a
    for _ in range(n_iter):
        p = p / p.sum(-1, keepdim=True)
        p = p / p.sum(-2, keepdim=True)
        if bool((p.sum(-1) - 1).abs().amax() <= tol):
            break
    return p


def fiedler_value(
    graph: Float[Tensor, "*b n n"],
    *,
    tol: float = 1e-6,
    max_steps: int = 128,
) -> Float[Tensor, "*b"]:
    """Fiedler value λ₂: second-smallest eigenvalue of the normalised Laplacian of each graph.

    L = I − D^{-1/2} S D^{-1/2}, D = diag(S1). Self-loops are kept: S_ii is an edge of node i to
    itself and counts in its degree (self-attention is attention). scipy's
    `csgraph.laplacian(normed=True)`, which the seed code used, drops the diagonal instead, so the
    two conventions give different numbers for the same graph.
    Range: [0, n/(n−1)] (0 iff the graph is disconnected; L's eigenvalues lie in [0, 2] and sum
    to n − Σ S_ii/d_i).
    Closed forms: complete graph without self-loops (S = J − I): n/(n−1). Uniform attention with
    self-loops (S = J/n): M = 11ᵀ/n has eigenvalue 0 on 1⊥, so λ₂ = 1. Two disconnected blocks: 0.

    `graph` must be symmetric with weights >= 0 and no node of zero degree; it is checked for
    finiteness, nonnegativity, degrees and — as a necessary condition that catches a raw
    pattern passed by mistake — equal row and column sums. A full symmetry check would cost
    more than the computation.

    Algorithm: Lanczos on M = D^{-1/2} S D^{-1/2} restricted to v₁⊥, v₁ = D^{1/2}1/‖D^{1/2}1‖
    (M v₁ = v₁), from one Gaussian start vector (fixed seed) per graph, in the graph's dtype.
    Each step is one product with every graph still running, taken a few graphs at a time on
    the CPU so that consecutive steps reuse the cache. v₁ is projected out of every new vector
    (selective orthogonalisation against the one eigenvector known exactly); the others are not
    reorthogonalised: in finite precision, orthogonality is lost only along Ritz vectors that
    have converged (Paige), which is where this stops.
    Stopping rule, per graph, checked at steps 8, 12, 16, … (spacing growing to 15%): the
    residual r = ‖M x − θ₁ x‖ of the top Ritz pair of the Lanczos tridiagonal T (from T, no
    extra product) is ≤ tol. For a symmetric matrix r bounds the distance from θ₁ to an
    eigenvalue. The sharper r²/gap is not used to stop: while two eigenvalues near μ₂ are
    still unresolved, one Ritz value sits between them with a gap to the next Ritz value far
    wider than theirs, and r²/gap then reports convergence at errors up to 1e-4 (seen on
    near one-hot random attention). If the Lanczos vector vanishes (β ≤ tol: the Krylov space
    is invariant, e.g. uniform attention), T's top eigenvalue is final.
    Value and certificate: the Ritz vector x (from the stored Lanczos vectors) is refined in
    float64 — θ = xᵀMx with one float64 product, its residual r₆₄ = ‖Mx − θx‖ — and accepted
    when min(r₆₄, r₆₄²/g) ≤ tol, g the gap from θ₁ to the next Ritz value more than tol below.
    A float32 run carries float32 rounding (~√n·eps, up to ~1e-5 at 512 tokens on
    near-disconnected graphs) into its Ritz values but not into this Rayleigh quotient, whose
    error is ~r₆₄²/g.
    Fallback: a graph not converged after `max_steps` steps, or not certified, gets `eigvalsh`
    of M in float64 — and so, from step max_steps/2 on, while at most 1/8 of the batch is still
    running, does one whose residual, shrinking at its rate since the previous check, would not
    reach tol within max_steps (once few graphs are left a step costs about as much per graph
    as the whole batch did, and ~100 steps as much as the fallback). It catches the path-like
    graphs of previous-token heads (λ₂ ~ 1/n², a spectrum packed near 1), which need about as
    many Lanczos steps as there are tokens: 1 of the 72 heads of the real MiniLM at 512 tokens,
    none of random softmax patterns at logit scales 0.1 to 4, under a tenth at 16 and about a
    quarter at 64 (near one-hot: near-disconnected graphs with many eigenvalues close to 1).
    Accuracy: within tol of the float64 eigendecomposition for float32 and float64 graphs alike
    (largest error seen over the test families and a 12-seed sweep of them: 2e-7).
    Cost (python -m benchmarks.fiedler, 2-core CPU, float32): ~0.14 s for MiniLM's 72 graphs of
    512 tokens (a plain HF forward of MiniLM: ~0.12 s) against ~0.75 s for batched eigvalsh.
    Memory: the Lanczos vectors, B × max_steps × n in the graph's dtype (a quarter of the graphs
    themselves at n = 512 and the default max_steps), touched only as far as they are used.

    >>> n = 6
    >>> complete = torch.ones(n, n, dtype=torch.float64) - torch.eye(n, dtype=torch.float64)
    >>> round(float(fiedler_value(complete)), 6)
    1.2
    >>> round(float(fiedler_value(torch.full((n, n), 1 / n, dtype=torch.float64))), 6)
    1.0
    >>> two_blocks = torch.block_diag(torch.ones(3, 3), torch.ones(3, 3)).double()
    >>> abs(round(float(fiedler_value(two_blocks)), 6))  # 0 up to rounding, of either sign
    0.0
    """
    check.floating(graph, "graph")
    check.single_or_double(graph, "graph", "half precision cannot resolve λ₂")
    check.square(graph, "graph")
    check.at_least(graph, -1, 2, "graph", "nodes")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
    batch, n = graph.shape[:-2], graph.shape[-1]
    g = graph.reshape(-1, n, n)
    if g.shape[0] == 0:
        return graph.new_zeros(batch)
    lo, hi = torch.aminmax(g)  # NaN anywhere makes both NaN
    check.finite(torch.stack([lo, hi]), "graph")
    if bool(lo < 0):
        raise ValueError(f"graph has negative weights (smallest {float(lo):.3g}); the normalised "
                         f"Laplacian needs weights >= 0.")
    degree = g.sum(-1)
    check.positive(degree.amin(), "the smallest node degree (row sum)")
    col = torch.bmm(torch.ones_like(g[:, :1, :]), g).squeeze(1)
    # Summation order alone makes row and column sums of a symmetric matrix differ by ~n·eps
    # relative; sqrt(eps) leaves room for that and still catches a non-symmetric pattern, whose
    # column sums differ from its row sums by O(1).
    asym = ((col - degree).abs() / degree).amax()
    if bool(asym > torch.finfo(g.dtype).eps ** 0.5):
        raise ValueError(f"graph must be symmetric (attention_graph(pattern) makes it so); its row "
                         f"and column sums differ by up to {float(asym):.3g} relative.")
    mu, certified = _lanczos_top(g, degree, tol, max_steps)
    for i in (~certified).nonzero().flatten().tolist():
        mu[i] = _dense_mu2(g[i])
    return (1.0 - mu).to(graph.dtype).reshape(batch)


def _dense_mu2(s: Tensor) -> Tensor:
    """Second-largest eigenvalue of D^{-1/2} S D^{-1/2} by a float64 eigendecomposition."""
    s = s.double()
    r = s.sum(-1).rsqrt()
    return torch.linalg.eigvalsh(r[:, None] * s * r[None, :])[-2]


# Graphs processed together in one Lanczos step on the CPU: small enough that their matrices
# stay in the last-level cache between consecutive steps (measured on the benchmark CPU, 32 MiB
# L3 shared with other tenants: 8 MiB cuts the cost of a step by a quarter to a third against
# streaming all graphs from memory, where 16 MiB sometimes gains nothing).
_CHUNK_BYTES = 8 << 20
# Lanczos steps run on one chunk before moving to the next (fewer early, while checks are dense).
_STEPS_PER_VISIT = (4, 8)


def _lanczos_top(g: Tensor, degree: Tensor, tol: float, max_steps: int) -> tuple[Tensor, Tensor]:
    """μ₂ (float64) of each graph [B, n, n] with degrees [B, n] by Lanczos on v₁⊥, and whether
    it was certified; uncertified rows of μ₂ are left at 0."""
    B, n, _ = g.shape
    dtype, device, f64 = g.dtype, g.device, torch.float64
    scale = degree.rsqrt()
    v1 = degree.sqrt()
    v1 = v1 / torch.linalg.vector_norm(v1, dim=-1, keepdim=True)
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(B, n, generator=gen, dtype=dtype, device=device)
    q -= torch.linalg.vecdot(q, v1).unsqueeze(-1) * v1
    q /= torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    q_prev = torch.zeros_like(q)
    b_prev = torch.zeros(B, dtype=dtype, device=device)
    # Lanczos vectors by graph (not by running row, so finishing graphs costs no copy); memory
    # is only touched where written.
    basis = torch.empty(B, max_steps, n, dtype=dtype, device=device)
    alpha = torch.zeros(B, max_steps, dtype=f64, device=device)
    beta = torch.zeros(B, max_steps, dtype=f64, device=device)
    mu = torch.zeros(B, dtype=f64, device=device)
    certified = torch.zeros(B, dtype=torch.bool, device=device)
    # float64 copy of one graph at a time for _refine, allocated once: a float64 copy of every
    # graph, or a fresh buffer per call, would cost more in page faults than the products.
    buffer = None if dtype == f64 else torch.empty(n, n, dtype=f64, device=device)
    active = torch.arange(B, device=device)  # graph index of each row of the state above
    per_chunk = max(1, _CHUNK_BYTES // (n * n * g.element_size())) if device.type == "cpu" else B
    chunks = _chunks(g, active.tolist(), per_chunk)
    tiny = torch.finfo(dtype).tiny
    step, next_check = 0, 8
    last_resid, last_step = None, 0
    while step < max_steps and active.numel():
        per_visit = _STEPS_PER_VISIT[0] if step < 16 else _STEPS_PER_VISIT[1]
        visit = min(per_visit, max_steps - step, next_check - step)
        for lo, hi, runs, u, gu, products in chunks:
            qc, qpc, bpc = q[lo:hi], q_prev[lo:hi], b_prev[lo:hi]
            sc, vc = scale[lo:hi], v1[lo:hi]
            qs, als, bts = [], [], []
            for _ in range(visit):
                torch.mul(qc, sc, out=u)
                for ur, gr, out in products:  # runs of consecutive graphs: no copy of g
                    torch.bmm(ur, gr, out=out)
                w = gu * sc  # w = M q (g symmetric: uᵀ g = (g u)ᵀ)
                al = torch.linalg.vecdot(w, qc)
                w.addcmul_(al.unsqueeze(-1), qc, value=-1)
                w.addcmul_(bpc.unsqueeze(-1), qpc, value=-1)
                w.addcmul_(torch.linalg.vecdot(w, vc).unsqueeze(-1), vc, value=-1)
                bt = torch.linalg.vector_norm(w, dim=-1)
                qs.append(qc)
                als.append(al)
                bts.append(bt)
                # β = 0 means the Krylov space is invariant; dividing by `tiny` instead of 0
                # keeps that row finite until the next check ends it at that step.
                qpc, qc, bpc = qc, w.div_(bt.clamp_min(tiny).unsqueeze(-1)), bt
            visited = torch.stack(qs, 1)  # copies qs[0], a view of q, before q is written below
            for a, b, r in runs:
                basis[a:b, step:step + visit] = visited[r:r + b - a]
            alpha[lo:hi, step:step + visit] = torch.stack(als, -1)
            beta[lo:hi, step:step + visit] = torch.stack(bts, -1)
            q_prev[lo:hi] = qpc  # before q: after a one-step visit qpc is a view of q
            q[lo:hi] = qc
            b_prev[lo:hi] = bpc
        step += visit
        if step < next_check and step < max_steps:
            continue
        resid, gap, y = _ritz(alpha[:, :step], beta[:, :step], tol)
        done = resid <= tol
        # Stragglers: once few graphs are left, a step costs about as much per graph as the
        # whole batch did, and ~100 of them as much as the dense fallback; a graph whose
        # residual, shrinking at its rate since the last check, would not reach tol within
        # max_steps goes to the fallback now rather than at max_steps (path-like graphs).
        give_up = torch.zeros_like(done)
        if last_resid is not None and step >= max_steps // 2 and active.numel() <= max(1, B // 8):
            rate = (resid / last_resid).log() / (step - last_step)
            needed = torch.where(rate < 0, (tol / resid).log() / rate, torch.inf)
            give_up = ~done & (step + needed > max_steps)
        last_resid, last_step = resid, step
        next_check = max(step + 4, int(step * 1.15))
        if bool(done.any()):
            ids = active[done]
            x = torch.einsum("ak,akn->an", y[done], basis[ids, :step].to(f64))
            mu[ids], certified[ids] = _refine(g, degree, ids, x, gap[done], tol, buffer)
        if bool((done | give_up).any()):
            keep = ~(done | give_up)
            active, last_resid = active[keep], last_resid[keep]
            q, q_prev, b_prev = q[keep], q_prev[keep], b_prev[keep]
            scale, v1 = scale[keep], v1[keep]
            alpha, beta = alpha[keep], beta[keep]
            chunks = _chunks(g, active.tolist(), per_chunk)
    return mu, certified


def _chunks(g: Tensor, active: list[int], per_chunk: int) -> list[tuple]:
    """Split the running rows into chunks of at most per_chunk (as even as possible). Each chunk
    is (first row, end row, runs, u, gu, products): a run (first graph, end graph, its first row
    in the chunk) is a stretch of consecutive graph indices, which bmm reads as one slice of the
    batch; products pairs, per run, the views of the chunk's input buffer u [rows, n], of g, and
    of its output buffer gu, made once here rather than at every step."""
    if not active:
        return []
    n = g.shape[-1]
    n_chunks = -(-len(active) // per_chunk)
    size = -(-len(active) // n_chunks)
    out = []
    for lo in range(0, len(active), size):
        hi = min(lo + size, len(active))
        runs: list[list[int]] = []
        for row in range(lo, hi):
            i = active[row]
            if runs and runs[-1][1] == i:
                runs[-1][1] = i + 1
            else:
                runs.append([i, i + 1, row - lo])
        u = torch.empty(hi - lo, n, dtype=g.dtype, device=g.device)
        gu = torch.empty_like(u)
        products = [(u[r:r + b - a].unsqueeze(1), g[a:b], gu[r:r + b - a].unsqueeze(1))
                    for a, b, r in runs]
        out.append((lo, hi, [tuple(r) for r in runs], u, gu, products))
    return out


def _ritz(alpha: Tensor, beta: Tensor, tol: float) -> tuple[Tensor, Tensor, Tensor]:
    """For each Lanczos tridiagonal T (α diagonal, β[:-1] off-diagonal, β[-1] the coupling to the
    next Lanczos vector): the residual ‖M x − θ₁ x‖ of its top Ritz pair, the Ritz gap θ₁ − θ₂,
    and the Ritz vector's coordinates y (x = Σ_k y_k q_k).

    A row whose β fell to <= tol at step k is cut there: T[:k, :k] spans an invariant space up
    to that β, and what follows it is noise. Its later diagonal is set below M's spectrum
    [−1, 1] and its couplings to 0, so no Ritz value of the noise can come out on top."""
    A, k = alpha.shape
    position = torch.arange(k, device=alpha.device)
    broken = beta <= tol
    cut = torch.where(broken.any(-1), broken.int().argmax(-1), k - 1).unsqueeze(-1)
    a = torch.where(position > cut, -2.0, alpha)
    b = torch.where(position >= cut, 0.0, beta)[:, :-1]
    t = _tridiagonal(a, b)
    theta = torch.linalg.eigvalsh(t)
    th1 = theta[:, -1]
    # Ritz vector of θ₁ by one step of inverse iteration: eigvalsh gives θ₁ to ~1e-16·‖T‖, and a
    # shift 1e-10 above it leaves the y₁ direction dominant by (gap)/1e-10 after one solve. The
    # clamp makes the offset absolute where |θ₁| < 1, so a θ₁ near 0 still gets one.
    shift = th1 + 1e-10 * th1.abs().clamp_min(1.0)
    eye = torch.eye(k, dtype=t.dtype, device=t.device)
    ones = torch.ones_like(alpha).unsqueeze(-1)
    y, _ = torch.linalg.solve_ex(t - shift[:, None, None] * eye, ones)
    y = y.squeeze(-1)
    y = y / torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    # Residual of (θ₁, Q y) against M, from the uncut T: inside the Krylov space (T y − θ₁ y:
    # ≈ 0, plus the cut coupling of a broken row) and out of it (β_k y_k, the Lanczos relation).
    full = _tridiagonal(alpha, beta[:, :-1])
    inner = torch.bmm(full, y.unsqueeze(-1)).squeeze(-1) - th1.unsqueeze(-1) * y
    resid = torch.sqrt((inner * inner).sum(-1) + (beta[:, -1] * y[:, -1]) ** 2)
    # Gap to the next Ritz value more than tol below θ₁: closer ones are copies of θ₁ that
    # float32 Lanczos makes once θ₁ has converged (Paige), or eigenvalues within tol of μ₂,
    # which do not matter at tol. None (0 below) leaves the linear bound alone in _refine.
    below = torch.where(theta < th1.unsqueeze(-1) - tol, theta, -torch.inf).amax(-1)
    gap = torch.where(below.isfinite(), th1 - below, 0.0)
    return resid, gap, y


def _tridiagonal(diagonal: Tensor, off: Tensor) -> Tensor:
    t = torch.diag_embed(diagonal)
    if off.shape[-1]:
        t = t + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    return t


def _refine(g: Tensor, degree: Tensor, ids: Tensor, x: Tensor, gap: Tensor, tol: float,
            buffer: Tensor | None) -> tuple[Tensor, Tensor]:
    """Rayleigh quotient θ = xᵀMx of each Ritz vector x (float64) of the graphs g[ids], with one
    float64 product, and whether min(r, r²/gap) <= tol for its float64 residual r = ‖Mx − θx‖.

    A float32 Lanczos run carries the rounding of float32 products (~√n·eps, up to ~1e-5 at
    n = 512 on near-disconnected graphs) into its Ritz values; its Ritz vectors are as good, and
    their Rayleigh quotient is off by only ~r²/gap. The gap comes from T's Ritz values, which
    can overstate the true gap only if a cluster of eigenvalues around μ₂ wider than tol is
    unresolved — and Lanczos stopped on a residual <= tol of its own, which resolves it.
    `buffer` [n, n] float64 takes a float32 graph's float64 copy (None for float64 graphs)."""
    f64 = torch.float64
    d = degree[ids].to(f64)
    s = d.rsqrt()
    v1 = d.sqrt()
    v1 = v1 / torch.linalg.vector_norm(v1, dim=-1, keepdim=True)
    x = x - torch.linalg.vecdot(x, v1).unsqueeze(-1) * v1
    x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    p = s * x
    sp = torch.empty_like(p)
    for row, i in enumerate(ids.tolist()):
        torch.mv(g[i] if buffer is None else buffer.copy_(g[i]), p[row], out=sp[row])
    mx = s * sp
    theta = torch.linalg.vecdot(x, mx)
    r = torch.linalg.vector_norm(mx - theta.unsqueeze(-1) * x, dim=-1)
    # clamp: a zero gap (no Ritz value more than tol below θ₁) leaves the linear bound r alone
    est = torch.minimum(r, r * r / gap.clamp_min(torch.finfo(f64).tiny))
    return theta, est <= tol


def uniform_causal_pattern(n: int, dtype: torch.dtype = torch.float64,
                           device: torch.device | str | None = None) -> Float[Tensor, "n n"]:
    """Uniform causal attention of length n: A_ij = 1/(i+1) for j <= i, else 0 (rows sum to 1).

    What a causal head with constant logits attends; the content-free null of a causal model.

    >>> uniform_causal_pattern(3)
    tensor([[1.0000, 0.0000, 0.0000],
            [0.5000, 0.5000, 0.0000],
            [0.3333, 0.3333, 0.3333]], dtype=torch.float64)
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    i = torch.arange(1, n + 1, dtype=dtype, device=device)
    return torch.ones(n, n, dtype=dtype, device=device).tril_().div_(i[:, None])


def uniform_causal_fiedler(n: int, *, sinkhorn: bool = False, n_iter: int = 100, tol: float = 1e-6,
                           floor: float = 0.0, dtype: torch.dtype = torch.float64,
                           device: torch.device | str | None = None) -> Float[Tensor, ""]:
    """λ₂ of the attention graph of uniform causal attention of length n: the causal null.

    fiedler_value(attention_graph(uniform_causal_pattern(n), sinkhorn, n_iter, tol, floor)),
    computed once per setting by a float64 eigendecomposition and cached. A causal mask lowers
    λ₂ with no help from content (early tokens are attended by everyone, late ones by few), so a
    causal model's λ₂ is reported as λ₂ − uniform_causal_fiedler(n) with the same graph settings.
    No closed form is known to us (node i's degree is (1 + H_n − H_i)/2, H the harmonic numbers).
    Values (self-loops kept, no Sinkhorn): n = 2: 8/15 (S = [[1, 1/4], [1/4, 1/2]], M has trace
    1 + 7/15); it rises to 0.5841 at n = 16, then falls slowly: 0.5787 at 64, 0.5689 at 512.
    Uniform bidirectional attention has λ₂ = 1.

    >>> round(float(uniform_causal_fiedler(2)), 6)
    0.533333
    """
    if n < 2:
        raise ValueError(f"uniform_causal_fiedler needs n >= 2 tokens, got {n}.")
    cached = _uniform_causal_fiedler(n, sinkhorn, n_iter, tol, floor)
    return cached.to(dtype=dtype, device=device, copy=True)  # a copy: callers may write to it


@functools.lru_cache(maxsize=256)
def _uniform_causal_fiedler(n: int, sinkhorn: bool, n_iter: int, tol: float,
                            floor: float) -> Tensor:
    s = attention_graph(uniform_causal_pattern(n), sinkhorn=sinkhorn, n_iter=n_iter, tol=tol,
                        floor=floor)
    return 1.0 - _dense_mu2(s)
