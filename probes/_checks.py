"""Input checks shared by every probe: one wording for each way an input can be degenerate.

Each raises ValueError naming the argument, what was expected and what came in. They read a
boolean off the device (one synchronisation), which is the price of refusing bad input
instead of returning NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor


def finite(x: Tensor, name: str) -> None:
    """`x` holds no NaN or infinity."""
    if not x.isfinite().all():
        raise ValueError(f"{name} has non-finite values (NaN or inf); expected finite numbers.")


def floating(x: Tensor, name: str) -> None:
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor (float32 or float64), got {x.dtype}.")


def single_or_double(x: Tensor, name: str, why: str) -> None:
    """`x` is float32 or float64; `why` says what needs that precision."""
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be float32 or float64 ({why}), got {x.dtype}.")


def at_least(x: Tensor, dim: int, k: int, name: str, what: str) -> None:
    """`x.shape[dim] >= k`; `what` names the axis (e.g. "tokens")."""
    if x.ndim < max(dim + 1, -dim):
        raise ValueError(f"{name} must have at least {max(dim + 1, -dim)} dims, got shape "
                         f"{tuple(x.shape)}.")
    if x.shape[dim] < k:
        raise ValueError(f"{name} needs at least {k} {what} (axis {dim}), got shape "
                         f"{tuple(x.shape)}.")


def square(x: Tensor, name: str) -> None:
    """The last two axes are equal (a batch of square matrices)."""
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{name} must be [..., n, n], got shape {tuple(x.shape)}.")


def nonzero_rows(x: Tensor, name: str) -> None:
    """No row (vector along the last axis) is exactly zero: it has no direction."""
    if (x == 0).all(dim=-1).any():
        raise ValueError(f"{name} has an all-zero vector; a direction needs a nonzero vector.")


def positive(x: Tensor, name: str) -> None:
    if not (x > 0).all():
        raise ValueError(f"{name} must be > 0, got {x.flatten()[:8].tolist()}.")


def same_shape(a: Tensor, b: Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}.")
