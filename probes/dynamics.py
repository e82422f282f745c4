"""The closed-form toy of seed 003: self-attention with Q = K = V = I as a flow on the sphere.

Geshkovski, Letrouit, Polyanskiy and Rigollet study n unit vectors moving by

    ẋ_i = P⊥_{x_i}( Σ_j softmax_j(β ⟨x_i, x_j⟩) x_j ),     P⊥_x y = y − ⟨x, y⟩ x,

which never decreases the interaction energy E_β (`probes.energy`) and collapses the tokens to
one point for d ≥ 3 (their Theorem 6.1), through metastable clusters at large β. This module is
the ground truth the probes are tested against: a trajectory whose energy must not fall and
whose effective rank must go to 1, and, with the value map V = −I, one whose energy falls.
"""

from __future__ import annotations

import math
import numbers

import torch
from jaxtyping import Float
from torch import Tensor

from probes import _checks


def toy_attention_dynamics(
    x0: Float[Tensor, "*b n d"],
    beta: float,
    step: float,
    n_steps: int,
    value: int = 1,
) -> Float[Tensor, "step *b n d"]:
    """Trajectory of the Q = K = V = I attention dynamics on the unit sphere.

    x0 is normalised row-wise, then each step applies

        x_i ← (x_i + h·v·Σ_j A_ij x_j) / ‖x_i + h·v·Σ_j A_ij x_j‖,   A = softmax_j(β X Xᵀ)

    with h = `step` and v = `value` ∈ {+1, −1} (the value map V = v·I). Renormalising removes
    the radial part of the update, so to first order in h this is the projected Euler step of
    ẋ_i = v·P⊥_{x_i}(Σ_j A_ij x_j); it is the seed's discrete map x ← normalise(x + h·AX).
    In continuous time v = +1 (attraction) never lowers E_β at the same β (a gradient flow of
    E_β for a reweighted metric, Geshkovski et al. §3) and collapses the tokens; v = −1
    (repulsion) lowers it. The discrete map keeps both at every step for h ∈ {0.1, 0.3, 1}
    (n = 40, d = 16, β = 4; see the tests); at larger β with h = 1 the repulsive map can
    overshoot and raise E_β for a step.

    Returns [n_steps + 1, *b, n, d]: entry 0 is the normalised x0, entry t the state after t
    steps; every row has unit norm. Differentiable in x0. Raises ValueError on fewer than 2
    tokens or 2 dimensions, a zero token, β, h ≤ 0, n_steps < 0, v ∉ {+1, −1}, or if a step
    sends a token to 0 (possible only for h ≥ 1; reduce h).

    Limiting cases: β = 0 makes A uniform (every token pulled towards the mean of all); as
    β → ∞, A → I (each token's largest inner product is with itself) and the tokens freeze.
    Collapsed tokens (all equal) are a fixed point for v = +1, and for v = −1 with h < 1.

    >>> import torch
    >>> x0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)   # two tokens at 90°
    >>> traj = toy_attention_dynamics(x0, beta=1.0, step=0.5, n_steps=20)
    >>> tuple(traj.shape), round(float(traj[-1, 0] @ traj[-1, 1]), 4)      # cos → 1: merged
    ((21, 2, 2), 1.0)
    """
    _checks.floating(x0, "x0")
    _checks.at_least(x0, -2, 2, "x0", "tokens")
    _checks.at_least(x0, -1, 2, "x0", "dimensions")
    _checks.finite(x0, "x0")
    _checks.nonzero_rows(x0, "x0")
    for name, v in (("beta", beta), ("step", step)):
        if not isinstance(v, numbers.Real) or not 0 < v < math.inf:
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}.")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}.")
    if value not in (1, -1) or isinstance(value, bool):
        raise ValueError(f"value must be +1 (V = I) or -1 (V = -I), got {value!r}.")

    x = x0 / x0.norm(dim=-1, keepdim=True)
    states = [x]
    for _ in range(n_steps):
        attention = torch.softmax(beta * (x @ x.mT), dim=-1)
        y = x + (step * value) * (attention @ x)
        x = y / y.norm(dim=-1, keepdim=True)
        states.append(x)
    trajectory = torch.stack(states)
    if not trajectory.isfinite().all():
        raise ValueError(f"a step sent a token to 0 (x_i = h·v·(AX)_i exactly); with "
                         f"step={step} and value={value}, reduce step.")
    return trajectory
