"""Similarity of two representations of the same tokens: linear CKA (Kornblith et al. 2019).

CKA compares the n×n similarity structure of two sets of features for the same n tokens, so x
and y may have different widths (two layers, two models). With column-centred X, Y and their
Grams K = XXᵀ, L = YYᵀ (already double-centred because X, Y are),

    CKA(X, Y) = ⟨K, L⟩_F / (‖K‖_F ‖L‖_F) = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F),

the cosine between the two Grams. The debiased variant replaces each Frobenius product by the
unbiased HSIC estimator of Song et al. (2012), i.e. the cosine between "unbiased-centred" Grams.
Both are invariant to an orthogonal map, an isotropic scaling and a translation of either input.
The seed's code has the biased variant only and clips it to [0, 1]; nothing here is clipped, so
a value outside the stated range would expose a bug instead of hiding it.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from probes import _checks


def _cka_input(x: Tensor, name: str, debiased: bool) -> None:
    _checks.floating(x, name)
    _checks.at_least(x, -1, 1, name, "features")
    if debiased:
        # The unbiased HSIC estimator averages over 4 distinct tokens (it divides by n(n-3)).
        _checks.at_least(x, -2, 4, name, "tokens for debiased CKA")
    else:
        _checks.at_least(x, -2, 2, name, "tokens")
    _checks.finite(x, name)


def _nonzero_norm(sq_norm: Tensor, name: str, debiased: bool) -> None:
    """The denominator ‖K‖²_F (debiased: ‖K_u‖²_F) is not zero."""
    if (sq_norm > 0).all():
        return
    if debiased:
        raise ValueError(f"{name} has a zero unbiased HSIC estimate ‖K_u‖ in some batch entry: "
                         f"its tokens are all equal up to translation, or all pairwise equidistant "
                         f"(e.g. orthonormal); debiased CKA is 0/0 there. Expected tokens whose "
                         f"pairwise inner products differ.")
    raise ValueError(f"{name} has zero variance across tokens in some batch entry (all tokens "
                     f"equal up to translation); CKA is 0/0 there. Expected tokens that differ.")


def _centred(x: Float[Tensor, "*b n d"]) -> Float[Tensor, "*b n d"]:
    return x - x.mean(dim=-2, keepdim=True)


def _unbiased_centre(k: Float[Tensor, "*b n n"]) -> Float[Tensor, "*b n n"]:
    """K_u with ⟨K_u, L_u⟩_F = n(n-3)·HSIC_1(K, L), Song et al. 2012 (Kornblith's center_gram).

    Zero the diagonal, subtract from each row and column its sum over n - 2 less a common
    correction, and zero the diagonal again.
    """
    n = k.shape[-1]
    off = torch.eye(n, dtype=torch.bool, device=k.device)
    k = k.masked_fill(off, 0)
    means = k.sum(dim=-2) / (n - 2)
    means = means - means.sum(dim=-1, keepdim=True) / (2 * (n - 1))
    k = k - means.unsqueeze(-1) - means.unsqueeze(-2)
    return k.masked_fill(off, 0)


def _centred_gram(x: Float[Tensor, "*b n d"], debiased: bool) -> Float[Tensor, "*b n n"]:
    xc = _centred(x)
    k = xc @ xc.mT
    return _unbiased_centre(k) if debiased else k


def _debiased_dot(xty: Tensor, rows_x: Tensor, rows_y: Tensor, n: int) -> Tensor:
    """n(n-3)·HSIC_1 from centred features (Kornblith's _debiased_dot_product_similarity_helper).

    ⟨K, L⟩ - n/(n-2)·Σ_i K_ii L_ii + tr K · tr L / ((n-1)(n-2)), with K_ii = ‖x_i‖² of the
    centred rows; for centred K this is Song's formula with 1ᵀK̃1 = -tr K, 1ᵀK̃L̃1 = Σ K_ii L_ii.
    """
    return (xty - n / (n - 2) * (rows_x * rows_y).sum(dim=-1)
            + rows_x.sum(dim=-1) * rows_y.sum(dim=-1) / ((n - 1) * (n - 2)))


def linear_cka(x: Float[Tensor, "*b n d1"], y: Float[Tensor, "*b n d2"], debiased: bool = False
               ) -> Float[Tensor, "*b"]:
    """Linear CKA between two representations of the same n tokens (Kornblith et al. 2019).

    CKA = ‖Y_cᵀX_c‖²_F / (‖X_cᵀX_c‖_F ‖Y_cᵀY_c‖_F) on column-centred X_c, Y_c, equivalently the
    cosine ⟨K, L⟩_F / (‖K‖_F ‖L‖_F) between the centred Grams K = X_cX_cᵀ, L = Y_cY_cᵀ.

    Biased (default): range [0, 1] (K, L are positive semidefinite); 1 iff L = c²K, e.g.
    Y = c·XQ + 1bᵀ with Q orthogonal and c > 0 (so CKA(X, X) = 1); 0 iff every feature of x is
    uncorrelated with every feature of y over the tokens. For unrelated inputs it is biased
    upward, towards 1 as d grows relative to n (independent Gaussians, n = 50, d = 100: > 0.6).

    ``debiased=True``: each Frobenius product is replaced by n(n-3) times the unbiased HSIC
    estimator (Song et al. 2012), as in Kornblith's ``feature_space_linear_cka(debiased=True)``.
    It is still a cosine (between unbiased-centred Grams), so its range is [-1, 1]: it is
    near 0 for unrelated inputs, can be negative, and is 1 on the same invariances as above.
    Needs n ≥ 4 tokens (biased: n ≥ 2; n = 2 always gives 1).

    Not clipped. A zero denominator is an error: tokens all equal up to translation, and for
    the debiased variant also tokens all pairwise equidistant (e.g. orthonormal, whose
    unbiased-centred Gram vanishes). The check is for an exact zero, as in ``to_sphere``: a
    set that is degenerate only up to roundoff gives a number dominated by roundoff.
    The cost is min(n·(d1² + d1·d2 + d2²), n²·(d1 + d2)): the feature-space form when the
    widths are small against n, the Gram form otherwise.

    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    >>> q = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64)
    >>> round(float(linear_cka(x, 3 * x @ q + 1)), 6), round(float(linear_cka(x, x.abs())), 6)
    (1.0, 0.0)
    """
    _cka_input(x, "x", debiased)
    _cka_input(y, "y", debiased)
    if x.shape[:-1] != y.shape[:-1]:
        raise ValueError(f"x and y must have the same batch and token axes [*b, n], got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}.")
    if x.dtype != y.dtype:
        raise ValueError(f"x and y must have the same dtype, got {x.dtype} and {y.dtype}.")
    n, d1, d2 = x.shape[-2], x.shape[-1], y.shape[-1]
    if d1 * d1 + d1 * d2 + d2 * d2 > n * (d1 + d2):
        k, l = _centred_gram(x, debiased), _centred_gram(y, debiased)
        xy, xx, yy = (k * l).sum((-2, -1)), k.square().sum((-2, -1)), l.square().sum((-2, -1))
    else:
        xc, yc = _centred(x), _centred(y)
        xy = (yc.mT @ xc).square().sum((-2, -1))
        xx = (xc.mT @ xc).square().sum((-2, -1))
        yy = (yc.mT @ yc).square().sum((-2, -1))
        if debiased:
            rows_x, rows_y = xc.square().sum(dim=-1), yc.square().sum(dim=-1)
            xy = _debiased_dot(xy, rows_x, rows_y, n)
            xx = _debiased_dot(xx, rows_x, rows_x, n)
            yy = _debiased_dot(yy, rows_y, rows_y, n)
    _nonzero_norm(xx, "x", debiased)
    _nonzero_norm(yy, "y", debiased)
    return xy / (xx * yy).sqrt()


def cka_matrix(xs: Float[Tensor, "*b layer n d"], debiased: bool = False
               ) -> Float[Tensor, "*b layer layer"]:
    """Linear CKA between every pair of layers: M_lm = linear_cka(xs[l], xs[m]).

    All pairs at once: the L centred (debiased: unbiased-centred) n×n Grams are flattened,
    multiplied in one [L, n²] × [n², L] product, and normalised by the square root of its
    diagonal. Cost L·n²·d + L²·n² instead of L² separate CKAs.

    Symmetric with unit diagonal; off-diagonal entries in [0, 1] (debiased: [-1, 1]). Same
    invariances, token-count requirements and errors as ``linear_cka``.

    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    >>> m = cka_matrix(torch.stack([x, 2 * x, x.abs()]))
    >>> [[round(float(v), 6) for v in row] for row in m]
    [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    _cka_input(xs, "xs", debiased)
    _checks.at_least(xs, -3, 1, "xs", "layers")
    grams = _centred_gram(xs, debiased).flatten(-2)
    products = grams @ grams.mT
    sq_norms = torch.diagonal(products, dim1=-2, dim2=-1)
    _nonzero_norm(sq_norms, "xs", debiased)
    norms = sq_norms.sqrt()
    return products / (norms.unsqueeze(-1) * norms.unsqueeze(-2))
