"""How diffuse attention is: row entropy, and the VDI of seed 000 with its null.

A pattern is [*b, query, key] with rows that are probability distributions (non-negative,
summing to 1), e.g. `Trace.pattern` [layer, head, n, n], whose causal rows are exactly zero
above the diagonal.

Why VDI needs a per-row normaliser: a causal query row i can attend to i + 1 keys only, so its
largest possible entropy is ln(i + 1), not ln T. Seed 000 divided every row by ln T; then even
perfectly uniform causal attention scores ln(T!)/(T ln T) (0.6119917 at T = 6) instead of 1,
and a "reproducible equilibrium" at that value is the mask, not the model. `vdi` normalises
per row by default, keeps the seed's rule by name (`normalise="seq_len"`), and `vdi_null`
gives the value of uniform attention under either rule, to report beside every VDI.

VDI is also used as a training loss, so everything here is differentiable, including through
a causal softmax whose masked probabilities are exactly 0 (see `_Entr`).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from probes import _checks

_NORMALISE = ("per_row", "seq_len")


class _Entr(torch.autograd.Function):
    """entr(p) = −p ln p (0 at p = 0), with derivative −ln p − 1 for p > 0 and 0 at p = 0.

    torch.special.entr's own derivative at p = 0 is +inf. Behind a causal softmax the masked
    probabilities are exactly 0 and the softmax Jacobian multiplies that inf by 0, which makes
    the gradient of the whole row NaN. A zero probability here is a key the row cannot attend
    to, so its derivative is taken as 0; for p > 0 this is the exact derivative.
    """

    @staticmethod
    def forward(p: Tensor) -> Tensor:
        return torch.special.entr(p)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        positive = p > 0
        # log of 1 where p = 0 keeps the unused branch finite (no inf·0 in double backward).
        return grad * torch.where(positive, -torch.log(p.where(positive, 1.0)) - 1, 0.0)


def _check_pattern(pattern: Tensor) -> None:
    """Rows are distributions: floating, finite, ≥ 0, summing to 1 within rounding."""
    _checks.floating(pattern, "pattern")
    if pattern.ndim < 2 or pattern.shape[-1] == 0 or pattern.shape[-2] == 0:
        raise ValueError(f"pattern must be [..., query, key] with at least one query and one "
                         f"key, got shape {tuple(pattern.shape)}.")
    # One reduction in the common case: amin propagates NaN, which fails `>= 0`; inf fails
    # the row sums below.
    if not pattern.amin() >= 0:
        _checks.finite(pattern, "pattern")
        raise ValueError("pattern has negative entries; attention probabilities are >= 0.")
    k = pattern.shape[-1]
    # Summing k probabilities, each from a softmax in the same dtype, is off from 1 by at most
    # about 2·k·eps to first order (k − 1 roundings in the softmax's normaliser, k − 1 in this
    # sum, one per division).
    tol = 2 * k * torch.finfo(pattern.dtype).eps
    off = (pattern.sum(dim=-1) - 1).abs()
    if not (off <= tol).all():
        _checks.finite(pattern, "pattern")
        raise ValueError(
            f"pattern rows must sum to 1 (within 2·keys·eps = {tol:.2g}); the worst row is off by "
            f"{off.max():.3g}. A pattern computed in lower precision needs renormalising: "
            f"pattern / pattern.sum(-1, keepdim=True).")


def attention_entropy(pattern: Float[Tensor, "*b q k"]) -> Float[Tensor, "*b q"]:
    """Shannon entropy of each query row, in nats.

    H_i = −Σ_j p_ij ln p_ij with 0 ln 0 = 0 (torch.special.entr). Range [0, ln m_i], m_i the
    number of keys row i may attend to: 0 for a one-hot row, ln m_i for uniform attention over
    them. Differentiable; a zero probability contributes 0 to the gradient (see `_Entr`).
    Raises ValueError unless rows are non-negative and sum to 1.

    >>> import math, torch
    >>> p = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    >>> [round(float(h), 6) for h in attention_entropy(p)], round(math.log(4), 6)
    ([1.386294, 0.0], 1.386294)
    """
    _check_pattern(pattern)
    return _entropy(pattern)


def _entropy(pattern: Tensor) -> Tensor:
    return _Entr.apply(pattern).sum(dim=-1)


def _allowed_keys(q: int, k: int, causal: bool, like: Tensor) -> Tensor:
    """Number of keys each query row may attend to: i + 1 under a causal mask, else k."""
    if causal:
        return torch.arange(1, q + 1, dtype=like.dtype, device=like.device)
    return torch.full((q,), k, dtype=like.dtype, device=like.device)


def vdi(
    pattern: Float[Tensor, "*b q k"], causal: bool, normalise: str = "per_row"
) -> Float[Tensor, "*b"]:
    """VDI (seed 000): mean over query rows of the row entropy over its largest possible value.

    VDI = mean_i H_i / H_max,i with H_i = −Σ_j p_ij ln p_ij. Range [0, 1] for "per_row": 0 when
    every row is one-hot, 1 for uniform attention over the allowed keys (see `vdi_null`).

    normalise="per_row" (default, correct): H_max,i = ln m_i, m_i the number of keys row i may
    attend to: i + 1 with `causal=True` (pattern [*b, n, n], exactly zero above the diagonal),
    k otherwise. A row with a single allowed key (causal row 0) has no choice to make: its
    entropy is 0 and so is its H_max, and the ratio is 0/0. It carries no information about
    diffuseness, and scoring it 0 (as the seed does) or 1 would pull every causal VDI towards
    that number by 1/T, so it is left out and the mean runs over the other rows.

    normalise="seq_len" (seed 000's rule, to reproduce its artifact): H_max = ln k for every
    row, row 0 included. Uniform causal attention then scores ln(T!)/(T ln T), not 1, and that
    is also the largest causal value: the range is [0, ln(T!)/(T ln T)] causal, [0, 1] not.

    Differentiable (a training loss in seed 000), including through a causal softmax. Output
    [*b]: one value per head. Raises ValueError on fewer than 2 keys, rows that are not
    distributions, a causal pattern with weight above the diagonal, or an unknown `normalise`.

    >>> import math, torch
    >>> T = 6
    >>> uniform = torch.ones(T, T, dtype=torch.float64).tril()
    >>> uniform = uniform / uniform.sum(-1, keepdim=True)          # uniform causal attention
    >>> round(float(vdi(uniform, causal=True)), 6)
    1.0
    >>> round(float(vdi(uniform, causal=True, normalise="seq_len")), 6)
    0.611992
    >>> round(math.lgamma(T + 1) / (T * math.log(T)), 6)           # ln(T!) / (T ln T)
    0.611992
    """
    if normalise not in _NORMALISE:
        raise ValueError(f"normalise must be one of {_NORMALISE}, got {normalise!r}.")
    _check_pattern(pattern)
    _checks.at_least(pattern, -1, 2, "pattern", "keys")
    q, k = pattern.shape[-2:]
    if causal:
        _checks.square(pattern, "pattern")
        if pattern.triu(1).amax() > 0:           # entries are >= 0 by now
            raise ValueError("causal=True but pattern has weight above the diagonal (a query "
                             "attends to a later key); pass causal=False for bidirectional "
                             "attention.")
    h = _entropy(pattern)
    if normalise == "per_row":
        m = _allowed_keys(q, k, causal, pattern)
        has_choice = m > 1
        # 1/ln m_i for rows with a choice, 0 for the excluded single-key row (its m = 1 is
        # replaced by 2 only to keep the unused branch of the where finite).
        weight = torch.where(has_choice, 1 / torch.log(m.where(has_choice, 2.0)), 0.0)
        return (h * weight).sum(dim=-1) / has_choice.sum()
    return h.mean(dim=-1) / math.log(k)


def vdi_null(
    n: int,
    causal: bool,
    normalise: str = "per_row",
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Float[Tensor, ""]:
    """VDI of uniform attention over n tokens: the value a head scores with no preference.

    Closed form: 1 for "per_row" (causal or not) and for bidirectional "seq_len";
    ln(n!)/(n ln n) for causal "seq_len" (seed 000's rule), which rises towards 1 like
    1 − 1/ln n as n grows (0.6119917 at n = 6). Report it beside every VDI. A 0-d tensor of
    `dtype` (torch's default if None) on `device`. Raises ValueError for n < 2.

    >>> import torch
    >>> round(float(vdi_null(6, causal=True, normalise="seq_len", dtype=torch.float64)), 7)
    0.6119917
    >>> float(vdi_null(6, causal=True)), float(vdi_null(6, causal=False, normalise="seq_len"))
    (1.0, 1.0)
    """
    if normalise not in _NORMALISE:
        raise ValueError(f"normalise must be one of {_NORMALISE}, got {normalise!r}.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (tokens), got {n!r}.")
    value = math.lgamma(n + 1) / (n * math.log(n)) if causal and normalise == "seq_len" else 1.0
    return torch.tensor(value, dtype=dtype, device=device)
