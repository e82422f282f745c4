"""Interaction energy of tokens on the sphere, and the layers where it falls.

Geshkovski, Letrouit, Polyanskiy and Rigollet model attention with Q = K = V = I as a flow of
unit vectors that never decreases

    E_β = (1 / (2β n²)) Σ_{i,j} exp(β ⟨x_i, x_j⟩)        (diagonal included)

so a layer whose energy falls is evidence of a force the idealised model cannot produce.

Why the log domain is the primitive: the theory's metastability is a large-β phenomenon, and
E_β grows like e^β. At β = 100 that is ~1e41, past float32's largest number (3.4e38), while
log E_β ≈ 95 is an ordinary number in any dtype. `log_interaction_energy` is therefore the
primitive (a logsumexp, accurate at any β), `interaction_energy` its exponential for β where that
is representable, and the violation criterion is stated once, on log-energies
(`log_energy_violation_mask`), so that it works at every β too.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from probes import _checks

Beta = Float[Tensor, " n_beta"] | float | Sequence[float]


def _betas(beta: Beta, like: Tensor) -> Float[Tensor, " n_beta"]:
    """β as a 1-D tensor of `like`'s dtype and device; a single number becomes n_beta = 1."""
    b = torch.as_tensor(beta, dtype=like.dtype, device=like.device)
    if b.ndim == 0:
        b = b.reshape(1)
    if b.ndim != 1 or b.numel() == 0:
        raise ValueError(f"beta must be a number or a non-empty 1-D sequence of numbers, got "
                         f"shape {tuple(b.shape)}.")
    _checks.finite(b, "beta")
    _checks.positive(b, "beta")
    return b


def _check_gram(g: Tensor) -> None:
    _checks.floating(g, "g")
    _checks.square(g, "g")
    _checks.at_least(g, -1, 2, "g", "tokens")
    _checks.finite(g, "g")


def log_interaction_energy(
    g: Float[Tensor, "*b n n"], beta: Beta
) -> Float[Tensor, "*b n_beta"]:
    """Logarithm of the interaction energy E_β, for several β at once.

    log E_β = logsumexp_{i,j}(β G_ij) − ln(2β) − 2 ln n, with G = X̂X̂ᵀ the Gram matrix of the
    n unit-norm token vectors (diagonal included). Stable and overflow-free at any β: the
    logsumexp subtracts the largest exponent before exponentiating.

    `beta` is a number or a 1-D sequence/tensor of n_beta values (> 0); a single number gives
    n_beta = 1. Output [*b, n_beta], in g's dtype and device.

    Range, for unit vectors (G_ii = 1, |G_ij| ≤ 1):
    ln[(n e^β + n(n−1) e^{−β/(n−1)}) / (2βn²)] ≤ log E_β ≤ β − ln(2β). The upper bound is full
    collapse (all tokens equal); the lower bound is a regular simplex (needs d ≥ n − 1), by
    Jensen's inequality and Σ_{i≠j} G_ij = ‖Σ_i x_i‖² − n ≥ −n. Orthonormal tokens give
    ln[(n e^β + n(n−1)) / (2βn²)]. As β → 0, E_β ≈ 1/(2β) + mean(G)/2. Nothing here checks
    that G comes from unit vectors; the closed forms and the range assume it.

    >>> import torch
    >>> ones = torch.ones(4, 4, dtype=torch.float64)             # full collapse of 4 tokens
    >>> [round(float(v), 6) for v in log_interaction_energy(ones, [1.0, 100.0])]
    [0.306853, 94.701683]
    >>> import math
    >>> round(1 - math.log(2), 6), round(100 - math.log(200), 6)   # β − ln 2β
    (0.306853, 94.701683)
    """
    _check_gram(g)
    return _log_energy(g, _betas(beta, g))


def _log_energy(g: Tensor, b: Tensor) -> Tensor:
    n = g.shape[-1]
    # [*b, n_beta, n²]: one pass for every β at once (n_beta times g's memory).
    scaled = g.flatten(-2).unsqueeze(-2) * b.unsqueeze(-1)
    return torch.logsumexp(scaled, dim=-1) - torch.log(2 * b) - 2 * math.log(n)


def interaction_energy(g: Float[Tensor, "*b n n"], beta: Beta) -> Float[Tensor, "*b n_beta"]:
    """Interaction energy E_β = (1/(2βn²)) Σ_{i,j} exp(β G_ij), for several β at once.

    G = X̂X̂ᵀ is the Gram matrix of the n unit-norm tokens; the diagonal is included, as in
    Geshkovski et al. and the seed code. Computed as exp(log_interaction_energy), so it is
    stable wherever the result is representable.

    Large β: E_β ≤ e^β/(2β), which exceeds the largest finite number of g's dtype from
    β ≈ 93.96 in float32 and β ≈ 717.05 in float64. For such β this function raises ValueError
    (whatever the tokens) rather than return inf, and names the way out:
    `log_interaction_energy`, which is accurate at any β, or float64 input. The refusal depends on
    β and the dtype only, so a β grid that works on one prompt works on every prompt.
    float32 results carry a relative error of about |log E_β|·1e-7 from the exponential.

    Range (unit vectors): (n e^β + n(n−1) e^{−β/(n−1)})/(2βn²) ≤ E_β ≤ e^β/(2β); full collapse
    gives the upper bound, orthonormal tokens (n e^β + n(n−1))/(2βn²), a regular simplex the
    lower bound. As β → 0, E_β ≈ 1/(2β) + mean(G)/2. Output [*b, n_beta].

    >>> import math, torch
    >>> ones = torch.ones(5, 5, dtype=torch.float64)             # full collapse: e^β / (2β)
    >>> [round(float(v), 6) for v in interaction_energy(ones, [1.0, 2.0])]
    [1.359141, 1.847264]
    >>> eye = torch.eye(3, dtype=torch.float64)                  # orthonormal: (3e + 6) / 18
    >>> round(float(interaction_energy(eye, 1.0)[0]), 6), round((3 * math.e + 6) / 18, 6)
    (0.78638, 0.78638)
    """
    _check_gram(g)
    b = _betas(beta, g)
    largest_log = math.log(torch.finfo(g.dtype).max)
    too_large = b - torch.log(2 * b) > largest_log
    if too_large.any():
        raise ValueError(
            f"beta {b[too_large].tolist()} can give E_beta up to e^beta/(2 beta), beyond the "
            f"largest {g.dtype} ({torch.finfo(g.dtype).max:.3g}); use log_interaction_energy "
            f"(accurate at any beta) or float64 input.")
    return _log_energy(g, b).exp()


def _check_tolerances(rel_tol: float, abs_tol: float) -> None:
    if not 0 <= rel_tol < 1:
        raise ValueError(f"rel_tol must be in [0, 1) (a relative drop of a positive energy is "
                         f"below 1), got {rel_tol}.")
    if not 0 <= abs_tol < math.inf:
        raise ValueError(f"abs_tol must be a finite number >= 0, got {abs_tol}.")


def log_energy_violation_mask(
    log_e_by_layer: Float[Tensor, "*b layer n_beta"],
    rel_tol: float = 1e-3,
    abs_tol: float = 1e-6,
) -> Bool[Tensor, "*b transition n_beta"]:
    """Which layer-to-layer transitions lower the energy beyond tolerance: the one criterion.

    Transition l → l+1 (l = 0 … L−2) is a violation when the energy drop exceeds both
    tolerances: E_l − E_{l+1} > max(abs_tol, rel_tol · E_l). It is evaluated on log-energies
    (rel_drop = 1 − exp(log E_{l+1} − log E_l), and E_l · rel_drop > abs_tol compared as logs),
    so it never forms E and works at any β. Input [*b, layer, n_beta] (layer axis second to
    last, as `log_interaction_energy` of a [*b, layer, n, n] stack gives); output
    [*b, layer − 1, n_beta], True where the energy fell.

    Relation to the seed (ZachData/MetastableStateAnalysis), whose code has held two criteria in
    turn: first an absolute one, ΔE < −1e-6 (here rel_tol=0, abs_tol=1e-6), then a relative
    one, (E_l − E_{l+1})/|E_l| > 1e-3 (here rel_tol=1e-3, abs_tol=0). The defaults ask for
    both; since E_β ≥ 1/(2β) for unit vectors (Jensen), rel_tol·E_β ≥ abs_tol for every
    β ≤ 500, where the defaults are exactly the seed's current relative criterion. rel_tol=0
    and abs_tol=0 count every decrease. An abs_tol below E·(dtype's eps) is below rounding.

    >>> import torch
    >>> log_e = torch.tensor([[1.0], [1.5], [1.2], [1.2], [1.3]]).log()   # one β, 5 layers
    >>> log_energy_violation_mask(log_e)[:, 0].tolist()
    [False, True, False, False]
    """
    _checks.floating(log_e_by_layer, "log_e_by_layer")
    _checks.at_least(log_e_by_layer, -2, 2, "log_e_by_layer", "layers")
    _checks.finite(log_e_by_layer, "log_e_by_layer")
    _check_tolerances(rel_tol, abs_tol)
    log_prev = log_e_by_layer[..., :-1, :]
    log_next = log_e_by_layer[..., 1:, :]
    # (E_l − E_{l+1}) / E_l, without forming E; expm1 keeps small drops exact.
    rel_drop = -torch.expm1(log_next - log_prev)
    fell = rel_drop > rel_tol
    if abs_tol > 0:
        # E_l · rel_drop > abs_tol, in logs. Where the energy did not fall the drop is ≤ 0 and
        # has no log; 1 stands in there (log 1 = 0), and those entries stay False in `fell`.
        log_abs_drop = log_prev + torch.log(rel_drop.where(fell, 1.0))
        fell = fell & (log_abs_drop > math.log(abs_tol))
    return fell


def log_energy_violations(
    log_e_by_layer: Float[Tensor, "*b layer n_beta"],
    rel_tol: float = 1e-3,
    abs_tol: float = 1e-6,
) -> Int[Tensor, "*b n_beta"]:
    """Number of layer-to-layer energy decreases per β, from log-energies.

    Counts the transitions flagged by `log_energy_violation_mask` (see there for the criterion
    and its relation to the seed): an integer in [0, layer − 1] per β. Use this with
    `log_interaction_energy` for β where E_β itself would overflow.

    >>> import torch
    >>> log_e = torch.tensor([[1.0, 2.0], [0.9, 2.5], [0.8, 3.0]]).log()   # β₁ falls twice
    >>> log_energy_violations(log_e).tolist()
    [2, 0]
    """
    return log_energy_violation_mask(log_e_by_layer, rel_tol, abs_tol).sum(dim=-2)


def energy_violations(
    e_by_layer: Float[Tensor, "*b layer n_beta"],
    rel_tol: float = 1e-3,
    abs_tol: float = 1e-6,
) -> Int[Tensor, "*b n_beta"]:
    """Number of layer-to-layer energy decreases per β, from energies.

    A transition l → l+1 counts when E_l − E_{l+1} > max(abs_tol, rel_tol · E_l) (the criterion
    of `log_energy_violation_mask`, applied to log E). Energies must be positive, as every E_β
    is. Output [*b, n_beta], integers in [0, layer − 1]; 0 for a non-decreasing sequence.

    >>> import torch
    >>> e = torch.tensor([[1.0], [1.5], [1.2], [1.2], [1.3], [1.0]])   # drops at 2 and 5
    >>> energy_violations(e)[0].tolist(), energy_violations(e, rel_tol=0.25)[0].tolist()
    (2, 0)
    """
    _checks.floating(e_by_layer, "e_by_layer")
    _checks.at_least(e_by_layer, -2, 2, "e_by_layer", "layers")
    _checks.finite(e_by_layer, "e_by_layer")
    _checks.positive(e_by_layer, "e_by_layer")
    return log_energy_violations(e_by_layer.log(), rel_tol, abs_tol)
