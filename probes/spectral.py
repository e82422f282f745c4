"""Spectral radius of value maps: how strongly a head's (or a layer's) OV circuit can amplify.

In the attention dynamics of Geshkovski et al., the value matrix V decides the regime: V = +I
makes the interaction energy grow (tokens attract and cluster), V = −I makes it fall. For a
trained model the natural per-head object is the OV circuit W_V W_O (d_model × d_model, rank at
most d_head, row-vector convention x ↦ x W_V W_O as in TransformerLens). Its eigenvalues are
those of the small d_head × d_head product W_O W_V plus zeros (AB and BA share their nonzero
eigenvalues), so ρ comes from the small side at a fraction of the cost. OV maps are not
symmetric: eigenvalues are complex in general, and this module uses the general eigensolver.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from probes import _checks as check

__all__ = ["layer_ov_spectral_radius", "ov_spectral_radius", "spectral_radius"]


def spectral_radius(m: Float[Tensor, "*b k k"]) -> Float[Tensor, "*b"]:
    """Spectral radius ρ(m) = max |λ| over the (complex) eigenvalues λ of a square matrix.

    From `torch.linalg.eigvals` (general, non-symmetric). Range: [0, ∞); ρ(m) <= ‖m‖ for every
    induced norm, with equality for normal matrices. Limiting cases: ρ(c·I) = |c|; a rotation
    has ρ = 1; a nilpotent matrix has ρ = 0. Eigenvalues of a non-normal matrix can be
    ill-conditioned (a Jordan block of size k moves them by ~eps^(1/k)); for well-conditioned
    ones float32 agrees with float64 to ~1e-6 relative.

    >>> round(float(spectral_radius(-2.5 * torch.eye(3, dtype=torch.float64))), 6)
    2.5
    >>> c, s = 0.6, 0.8
    >>> round(float(spectral_radius(torch.tensor([[c, -s], [s, c]], dtype=torch.float64))), 6)
    1.0
    """
    check.floating(m, "m")
    check.single_or_double(m, "m", "what the eigensolver takes")
    check.square(m, "m")
    check.at_least(m, -1, 1, "m", "rows")
    check.finite(m, "m")
    return torch.linalg.eigvals(m).abs().amax(-1).to(m.dtype)


def _check_ov(W_V: Tensor, W_O: Tensor) -> None:
    check.floating(W_V, "W_V")
    check.floating(W_O, "W_O")
    check.at_least(W_V, -3, 1, "W_V", "heads")
    check.at_least(W_O, -3, 1, "W_O", "heads")
    check.at_least(W_V, -1, 1, "W_V", "head dimensions (d_head)")
    check.same_shape(W_V.mT, W_O, "W_V [..., head, d_model, d_head] transposed and W_O [..., head, "
                                  "d_head, d_model]")
    check.finite(W_V, "W_V")
    check.finite(W_O, "W_O")


def ov_spectral_radius(
    W_V: Float[Tensor, "*b head d_model d_head"],
    W_O: Float[Tensor, "*b head d_head d_model"],
) -> Float[Tensor, "*b head"]:
    """Spectral radius of each head's OV circuit W_V W_O, computed from the small side W_O W_V.

    ρ(W_V W_O) = ρ(W_O W_V): the d_model × d_model product has the eigenvalues of the
    d_head × d_head one plus d_model − d_head zeros. Range: [0, ‖W_V‖‖W_O‖].
    Limiting cases: W_O = W_Vᵀ gives the Gram matrix W_VᵀW_V, ρ = σ_max(W_V)²; W_O W_V = c·I
    (e.g. W_V = [I; 0], W_O = [c·I, 0]) gives ρ = |c|.

    >>> W_V = torch.tensor([[[1.0], [0.0]]], dtype=torch.float64)   # 1 head, d_model 2, d_head 1
    >>> W_O = torch.tensor([[[3.0, 4.0]]], dtype=torch.float64)     # W_V W_O = [[3, 4], [0, 0]]
    >>> [round(float(r), 6) for r in ov_spectral_radius(W_V, W_O)]
    [3.0]
    """
    _check_ov(W_V, W_O)
    return spectral_radius(W_O @ W_V)


def layer_ov_spectral_radius(
    W_V: Float[Tensor, "*b head d_model d_head"],
    W_O: Float[Tensor, "*b head d_head d_model"],
) -> Float[Tensor, "*b"]:
    """Spectral radius ρ(V) of a layer's value map V = Σ_h W_V[h] W_O[h] (d_model × d_model).

    The seed's ρ(V): the OV circuits of all heads summed, the layer's value map if every head
    attended alike (V in the attention dynamics of Geshkovski et al.). V = W_V' W_O' with
    W_V' = [W_V[1] … W_V[H]] (d_model × H·d_head) and W_O' the W_O[h] stacked (H·d_head ×
    d_model), so when H·d_head < d_model the eigenvalues come from the smaller W_O' W_V'
    (H·d_head square); otherwise from V itself. Range: [0, Σ_h ‖W_V[h]‖‖W_O[h]‖].
    Limiting cases: one head gives ov_spectral_radius; heads whose OV maps are c_h·P_h on
    orthogonal coordinate blocks give max |c_h|; heads that cancel (W_O[2] = −W_O[1],
    W_V[2] = W_V[1]) give 0 — up to ~sqrt(eps)·‖W_O W_V‖ from the small side, which is then
    nilpotent (Jordan blocks of size 2, eigenvalues ill-conditioned).

    >>> W_V = torch.tensor([[[1.0], [0.0]], [[0.0], [1.0]]], dtype=torch.float64)  # 2 heads
    >>> W_O = torch.tensor([[[2.0, 0.0]], [[0.0, -3.0]]], dtype=torch.float64)  # V = diag(2, -3)
    >>> round(float(layer_ov_spectral_radius(W_V, W_O)), 6)
    3.0
    """
    _check_ov(W_V, W_O)
    *batch, heads, d_model, d_head = W_V.shape
    if heads * d_head < d_model:
        v_cat = W_V.movedim(-3, -2).reshape(*batch, d_model, heads * d_head)   # [W_V[1] … W_V[H]]
        o_cat = W_O.reshape(*batch, heads * d_head, d_model)                   # W_O[h] stacked
        return spectral_radius(o_cat @ v_cat)
    return spectral_radius(torch.einsum("...hmk,...hkn->...mn", W_V, W_O))
