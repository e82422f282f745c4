"""Geometry of a token cloud on the unit sphere: its Gram matrix, clustering and spread.

Seed 003 reads metastability off the normalised residual stream X̂ (rows of X divided by their
L2 norm, n tokens × d) of every layer: how much of the pairwise mass sits near inner product 1,
how many directions the cloud spans, and whether each token keeps its nearest neighbour from one
layer to the next. Every quantity that needs pairwise inner products takes the Gram matrix
G = X̂X̂ᵀ as an explicit argument, so a study computes it once per layer and hands it to each
probe: ``g = gram(to_sphere(resid))`` covers every layer (and head) in one batched call.

Pairs are the n(n-1)/2 unordered pairs i < j, read from the upper triangle of G; the diagonal
(G_ii = 1) never counts.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from probes import _checks

EFFECTIVE_RANK_VARIANTS = ("entropy", "entropy_sq", "participation")


def _gram_input(g: Tensor, name: str) -> None:
    """A batch of square, finite, floating matrices over at least 2 tokens."""
    _checks.floating(g, name)
    _checks.square(g, name)
    _checks.at_least(g, -1, 2, name, "tokens")
    _checks.finite(g, name)


def _pairs(g: Float[Tensor, "*b n n"]) -> Float[Tensor, "*b pairs"]:
    """The entries G_ij with i < j, row by row: n(n-1)/2 of them."""
    n = g.shape[-1]
    i, j = torch.triu_indices(n, n, offset=1, device=g.device)
    return g.flatten(-2).index_select(-1, i * n + j)


def to_sphere(x: Float[Tensor, "*b n d"]) -> Float[Tensor, "*b n d"]:
    """Project each token onto the unit sphere: x̂_i = x_i / ‖x_i‖₂.

    Only L2 normalisation (no centring, no LayerNorm gain or bias). Every output row has norm 1
    up to roundoff; the direction of x_i is kept and its length dropped, so scaling a row by
    c > 0 leaves the output unchanged. A zero row has no direction and is an error.

    >>> to_sphere(torch.tensor([[3.0, 4.0], [0.0, -2.0]], dtype=torch.float64)).tolist()
    [[0.6, 0.8], [0.0, -1.0]]
    """
    _checks.floating(x, "x")
    _checks.at_least(x, -1, 1, "x", "features")
    _checks.finite(x, "x")
    _checks.nonzero_rows(x, "x")
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def gram(x_hat: Float[Tensor, "*b n d"]) -> Float[Tensor, "*b n n"]:
    """Gram matrix of the tokens: G = X̂X̂ᵀ, G_ij = ⟨x̂_i, x̂_j⟩.

    For unit rows (``to_sphere``) G_ij is the cosine similarity, in [-1, 1] with G_ii = 1;
    identical directions give G_ij = 1, orthogonal ones 0, antipodal ones -1. Symmetric and
    positive semidefinite of rank ≤ min(n, d).

    >>> x_hat = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    >>> gram(x_hat).tolist()
    [[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]]
    """
    _checks.floating(x_hat, "x_hat")
    _checks.at_least(x_hat, -2, 1, "x_hat", "tokens")
    _checks.finite(x_hat, "x_hat")
    return x_hat @ x_hat.mT


def mass_near_one(g: Float[Tensor, "*b n n"], threshold: float = 0.9) -> Float[Tensor, "*b"]:
    """Fraction of token pairs that point the same way: #{i < j : G_ij > threshold} / C(n, 2).

    The seed's "mass-near-1" (threshold 0.9, strict inequality, pairs i < j), a direct reading
    of clustering: it rises towards 1 as tokens gather into one cluster. Range [0, 1]:
    all tokens identical gives 1, mutually orthogonal (or any G_ij ≤ threshold) gives 0.
    `threshold` must lie in [-1, 1), where the count is not trivially 0.

    >>> same = gram(to_sphere(torch.ones(4, 3, dtype=torch.float64)))
    >>> round(float(mass_near_one(same)), 6), round(float(mass_near_one(torch.eye(4))), 6)
    (1.0, 0.0)
    """
    _gram_input(g, "g")
    if not -1.0 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [-1, 1) (inner products of unit vectors), "
                         f"got {threshold}.")
    return (_pairs(g) > threshold).to(g.dtype).mean(dim=-1)


def effective_rank(x: Float[Tensor, "*b n d"], variant: str = "entropy") -> Float[Tensor, "*b"]:
    """Effective number of directions the rows of x span, from its singular values σ.

    Of x as given: pass X̂ = ``to_sphere(x)`` for the spread of directions on the sphere, or the
    raw X to let token norms weigh in (the seed's code uses raw X with "entropy_sq").

    - ``"entropy"`` (Roy & Vetterli 2007): exp(H(p)), p_i = σ_i / Σσ, H(p) = -Σ p_i log p_i.
    - ``"entropy_sq"``: exp(H(p)), p_i = σ_i² / Σσ² (the variant in the seed's code).
    - ``"participation"``: (Σλ)² / Σλ² with λ = σ² (= tr(G)² / ‖G‖²_F for G = XᵀX).

    0·log 0 = 0 (``torch.special.entr``). Each lies in [1, min(n, d)]: 1 for a rank-1 x, k for
    k equal nonzero singular values (x = I_k gives k in every variant). The three differ
    otherwise: σ = (2, 1) gives 1.88988, 1.64938 and 25/17 = 1.47059.

    "entropy" needs σ accurate down to the smallest one, so it uses ``svdvals``: the
    eigenvalues of the small-side Gram give σ_i = √λ_i with an absolute error of
    √(eps·λ_max), which on a collapsed (near low-rank) cloud in float64 moved erank by
    1e-5 relative (float32: 1e-1). "entropy_sq" needs only λ, whose error from ``eigvalsh``
    of the min(n, d)-side Gram is O(eps·λ_max): within 2e-13 of svdvals in float64 and 2.5x
    faster. "participation" needs no decomposition at all. A single token (n = 1) has
    effective rank 1; an all-zero x has no spectrum and is an error.

    >>> u, v = torch.eye(3, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    >>> x = u[:, :2] @ torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64)) @ v
    >>> [round(float(effective_rank(x, k)), 5) for k in EFFECTIVE_RANK_VARIANTS]
    [1.88988, 1.64938, 1.47059]
    """
    if variant not in EFFECTIVE_RANK_VARIANTS:
        raise ValueError(f"variant must be one of {EFFECTIVE_RANK_VARIANTS}, got {variant!r}.")
    _checks.floating(x, "x")
    _checks.at_least(x, -2, 1, "x", "tokens")
    _checks.at_least(x, -1, 1, "x", "features")
    _checks.finite(x, "x")
    if not (x != 0).flatten(-2).any(dim=-1).all():
        raise ValueError("x has an all-zero matrix; effective rank needs at least one nonzero "
                         "singular value.")
    if variant == "entropy":
        s = torch.linalg.svdvals(x)
        return torch.special.entr(s / s.sum(dim=-1, keepdim=True)).sum(dim=-1).exp()
    n, d = x.shape[-2:]
    g = x.mT @ x if d <= n else x @ x.mT  # same nonzero eigenvalues σ², on the smaller side
    if variant == "participation":
        return torch.diagonal(g, dim1=-2, dim2=-1).sum(dim=-1).square() / g.square().sum((-2, -1))
    # eigvalsh of a positive semidefinite matrix returns its zero eigenvalues as ±O(eps·λ_max);
    # a negative one would make entr -inf, so roundoff negatives are set to their true value 0.
    lam = torch.linalg.eigvalsh(g).clamp(min=0)
    return torch.special.entr(lam / lam.sum(dim=-1, keepdim=True)).sum(dim=-1).exp()


def nn_stability(g_prev: Float[Tensor, "*b n n"], g_next: Float[Tensor, "*b n n"]
                 ) -> Float[Tensor, "*b"]:
    """Fraction of tokens whose nearest neighbour is the same in two layers.

    nn(i) = argmax_{j ≠ i} G_ij; stability = (1/n) #{i : nn_prev(i) = nn_next(i)}. Ties go to
    the lowest index j (``torch.argmax``). Range [0, 1]: identical Grams give 1; n = 2 always
    gives 1 (each token has one candidate). Consecutive layers are ``nn_stability(g[:-1], g[1:])``.

    This matches the seed's code (``nearest_neighbor_indices``: diagonal set to -inf, row
    argmax, first index on ties; then the mean of equal indices), including its tie rule.

    Token 2's neighbour moves from token 1 to token 0; tokens 0 and 1 keep each other:

    >>> g = torch.tensor([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
    >>> h = torch.tensor([[1.0, 0.9, 0.3], [0.9, 1.0, 0.2], [0.3, 0.2, 1.0]])
    >>> round(float(nn_stability(g, g)), 6), round(float(nn_stability(g, h)), 6)
    (1.0, 0.666667)
    """
    _gram_input(g_prev, "g_prev")
    _gram_input(g_next, "g_next")
    _checks.same_shape(g_prev, g_next, "g_prev and g_next")
    n = g_prev.shape[-1]
    self_pair = torch.eye(n, dtype=torch.bool, device=g_prev.device)
    nn_prev = g_prev.masked_fill(self_pair, float("-inf")).argmax(dim=-1)
    nn_next = g_next.masked_fill(self_pair, float("-inf")).argmax(dim=-1)
    return (nn_prev == nn_next).to(g_prev.dtype).mean(dim=-1)


def inner_product_histogram(g: Float[Tensor, "*b n n"], bins: int) -> Float[Tensor, "*b bins"]:
    """Distribution of the pairwise inner products G_ij, i < j, over `bins` equal bins of [-1, 1].

    Bin k holds the fraction of pairs with -1 + 2k/bins ≤ G_ij < -1 + 2(k+1)/bins; the last bin
    is closed at 1, as in ``numpy.histogram(..., range=(-1, 1))``. The fractions sum to 1.
    Full collapse puts all mass in the last bin; orthonormal tokens put it in the bin holding 0.
    The seed stores the counts with 50 bins; counts = fractions × n(n-1)/2.

    G must be the Gram of unit vectors: an entry with |G_ij| > 1 + √eps of its dtype (far
    beyond roundoff, ~4 eps measured) is an error, not a count.

    Pairs (0, 1), (0, 2), (1, 2) have G = 0.9, -0.9, 0.1: one each in [0.5, 1], [-1, -0.5)
    and [0, 0.5):

    >>> g = torch.tensor([[1.0, 0.9, -0.9], [0.9, 1.0, 0.1], [-0.9, 0.1, 1.0]])
    >>> [round(float(f), 6) for f in inner_product_histogram(g, 4)]
    [0.333333, 0.0, 0.333333, 0.333333]
    """
    _gram_input(g, "g")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}.")
    pairs = _pairs(g)
    # Unit vectors give |G_ij| ≤ 1 up to roundoff of a d-term dot product (~d·eps at worst);
    # √eps (3e-4 in float32) sits far above that and far below a Gram of unnormalised rows.
    if (pairs.abs() > 1 + torch.finfo(g.dtype).eps ** 0.5).any():
        raise ValueError("g has inner products outside [-1, 1] beyond roundoff; expected the "
                         "Gram of unit vectors, gram(to_sphere(x)).")
    edges = torch.linspace(-1, 1, bins + 1, dtype=g.dtype, device=g.device)
    # Counting interior edges ≤ G_ij gives the bin; G_ij = 1 lands in the last bin (closed right
    # edge), and roundoff a few ulp past ±1 lands in the end bins rather than being dropped.
    index = torch.bucketize(pairs, edges[1:-1], right=True)
    counts = torch.zeros(*pairs.shape[:-1], bins, dtype=g.dtype, device=g.device)
    counts.scatter_add_(-1, index, torch.ones_like(pairs))
    return counts / pairs.shape[-1]
