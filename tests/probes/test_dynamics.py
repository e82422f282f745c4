"""The Q = K = V = I toy: energy rises and tokens collapse with V = I; energy falls with V = −I."""

from __future__ import annotations

import math

import pytest
import torch

from probes.dynamics import toy_attention_dynamics
from probes.energy import energy_violations, log_interaction_energy

N, D, BETA = 40, 16, 4.0


def cloud(*leading: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Seeded Gaussian tokens (not normalised: the dynamics normalises them)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*leading, N, D, generator=gen, dtype=torch.float64).to(dtype)


def log_energy_along(trajectory: torch.Tensor, beta) -> torch.Tensor:
    """log E_β at every step: [step, n_beta]."""
    return log_interaction_energy(trajectory @ trajectory.mT, beta)


def effective_rank(x: torch.Tensor) -> torch.Tensor:
    """Roy–Vetterli erank = exp(H(p)), p_i = σ_i / Σσ (σ the singular values of x)."""
    s = torch.linalg.svdvals(x)
    p = s / s.sum()
    return torch.exp(torch.special.entr(p).sum())


def test_trajectory_has_n_steps_plus_one_unit_norm_states_starting_at_normalised_x0():
    x0 = cloud()
    traj = toy_attention_dynamics(x0, BETA, 0.3, n_steps=5)
    assert traj.shape == (6, N, D)
    torch.testing.assert_close(traj[0], x0 / x0.norm(dim=-1, keepdim=True), rtol=0, atol=0)
    torch.testing.assert_close(traj.norm(dim=-1), torch.ones(6, N, dtype=torch.float64),
                               rtol=0, atol=1e-14)
    assert toy_attention_dynamics(x0, BETA, 0.3, n_steps=0).shape == (1, N, D)


@pytest.mark.parametrize("h", [0.1, 0.3, 1.0])
def test_attraction_never_lowers_the_energy_at_its_own_beta(h):
    traj = toy_attention_dynamics(cloud(), BETA, h, n_steps=60)
    log_e = log_energy_along(traj, BETA)
    assert (log_e.diff(dim=0) >= -1e-12).all()
    assert energy_violations(log_e.exp(), rel_tol=0, abs_tol=0).tolist() == [0]
    assert float(log_e[-1] - log_e[0]) > 1.0                    # and it does rise


@pytest.mark.parametrize("beta", [1.0, 9.0])
@pytest.mark.parametrize("h", [0.1, 0.3, 1.0])
def test_attraction_never_lowers_the_energy_at_other_dynamics_betas(beta, h):
    log_e = log_energy_along(toy_attention_dynamics(cloud(), beta, h, n_steps=40), beta)
    assert (log_e.diff(dim=0) >= -1e-12).all()


def test_attraction_at_beta_4_also_raises_the_energy_measured_at_beta_1_and_10():
    # Not a theorem (the flow ascends E_β at its own β only); observed on this seeded cloud,
    # and what a probe sweeping β over a collapsing model should see.
    traj = toy_attention_dynamics(cloud(), BETA, 0.3, n_steps=60)
    assert (log_energy_along(traj, [1.0, 10.0]).diff(dim=0) >= -1e-12).all()


@pytest.mark.parametrize("h", [0.1, 0.3, 1.0])
def test_repulsion_lowers_the_energy_at_every_step(h):
    traj = toy_attention_dynamics(cloud(), BETA, h, n_steps=60, value=-1)
    log_e = log_energy_along(traj, BETA)
    assert (log_e.diff(dim=0) < 0).all()
    assert energy_violations(log_e.exp(), rel_tol=0, abs_tol=0).tolist() == [60]


@pytest.mark.parametrize("h, within", [(0.3, 40), (1.0, 40), (0.1, 120)])
def test_attraction_collapses_the_effective_rank_below_1_5(h, within):
    # The continuous time h·steps to collapse is about 8–13 here, so h = 0.1 needs ~80 steps.
    traj = toy_attention_dynamics(cloud(), BETA, h, n_steps=within)
    ranks = torch.stack([effective_rank(x) for x in traj])
    assert float(ranks[0]) > 10
    assert float(ranks[-1]) < 1.5


def test_repulsion_keeps_the_effective_rank_high():
    traj = toy_attention_dynamics(cloud(), BETA, 0.3, n_steps=40, value=-1)
    assert float(effective_rank(traj[-1])) > float(effective_rank(traj[0]))


def test_collapsed_tokens_are_a_fixed_point_for_either_value_below_unit_step():
    x0 = cloud()[:1].expand(N, D)                                # all tokens equal
    for value in (1, -1):
        traj = toy_attention_dynamics(x0, BETA, 0.3, n_steps=10, value=value)
        torch.testing.assert_close(traj[-1], traj[0], rtol=0, atol=1e-15)


def test_two_tokens_close_their_angle_symmetrically():
    # Two tokens: A is symmetric, so each moves towards the other by the same angle.
    theta = 1.2
    x0 = torch.tensor([[1.0, 0.0], [math.cos(theta), math.sin(theta)]], dtype=torch.float64)
    traj = toy_attention_dynamics(x0, 2.0, 0.2, n_steps=30)
    cosines = (traj[:, 0] * traj[:, 1]).sum(-1)
    assert (cosines.diff() > 0).all() and float(cosines[-1]) > 0.999
    bisector = torch.tensor([math.cos(theta / 2), math.sin(theta / 2)], dtype=torch.float64)
    torch.testing.assert_close(traj[:, 0] @ bisector, traj[:, 1] @ bisector, rtol=0, atol=1e-14)


def test_dynamics_batched_over_leading_axes_equals_a_loop():
    x0 = cloud(2, 3, seed=1)
    batched = toy_attention_dynamics(x0, BETA, 0.3, n_steps=8)
    assert batched.shape == (9, 2, 3, N, D)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(batched[:, i, j],
                                       toy_attention_dynamics(x0[i, j], BETA, 0.3, n_steps=8),
                                       rtol=0, atol=1e-14)


def test_float32_trajectory_equals_float64_within_1e_5_over_40_steps():
    x0 = cloud(seed=2)
    t64 = toy_attention_dynamics(x0, BETA, 0.3, n_steps=40)
    t32 = toy_attention_dynamics(x0.float(), BETA, 0.3, n_steps=40)
    assert t32.dtype == torch.float32
    torch.testing.assert_close(t32.double(), t64, rtol=0, atol=1e-5)


def test_dynamics_are_differentiable_in_x0():
    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64,
                     requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: toy_attention_dynamics(x, 2.0, 0.3, 3), (x0,))


@pytest.mark.parametrize("x0, kwargs, match", [
    (torch.ones(1, 4), {}, "at least 2 tokens"),
    (torch.ones(3, 1), {}, "at least 2 dimensions"),
    (torch.tensor([[1.0, 0.0], [0.0, 0.0]]), {}, "all-zero vector"),
    (torch.tensor([[1.0, math.nan], [0.0, 1.0]]), {}, "non-finite"),
    (torch.ones(3, 2, dtype=torch.int64), {}, "floating"),
    (torch.eye(3), {"beta": 0.0}, "beta must be a finite number > 0"),
    (torch.eye(3), {"beta": math.inf}, "beta must be a finite number > 0"),
    (torch.eye(3), {"step": -0.1}, "step must be a finite number > 0"),
    (torch.eye(3), {"n_steps": -1}, "n_steps must be an int >= 0"),
    (torch.eye(3), {"n_steps": 2.0}, "n_steps must be an int >= 0"),
    (torch.eye(3), {"value": 0}, "value must be"),
    (torch.eye(3), {"value": 2}, "value must be"),
    (torch.eye(3), {"value": True}, "value must be"),
])
def test_bad_input_raises(x0, kwargs, match):
    args = {"beta": 1.0, "step": 0.1, "n_steps": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        toy_attention_dynamics(x0, **args)


def test_a_step_that_sends_a_token_to_zero_raises():
    # Equal tokens make AX = X, so one step with h = 1 and v = −1 gives x − AX = 0 exactly.
    x0 = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="sent a token to 0"):
        toy_attention_dynamics(x0, 1.0, 1.0, n_steps=1, value=-1)
