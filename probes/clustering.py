"""Clusters of tokens on the sphere, and plateaus of a per-layer signal.

Two discrete readings of the metastability picture: how many groups the tokens of one layer
form (HDBSCAN on the cosine distance of their Gram matrix), and over which runs of layers a
scalar signal (mass near 1, effective rank, a Fiedler value, CKA, NN stability) stays flat.

HDBSCAN is a CPU library, so `hdbscan_clusters` is the one probe here that leaves torch: it
copies each Gram to the CPU as a float64 numpy array, runs the `hdbscan` package on the
precomputed distance, and returns the labels as tensors on the input's device. Precomputed
distances are what make it fast: for 512 tokens the package's tree algorithms on the token
vectors take 240-440 ms, the dense path on a precomputed matrix about 12 ms (all of it the
O(n^2) core distances, Prim's MST and the cluster selection), the same as scikit-learn's
`HDBSCAN(metric="precomputed")`. The tree algorithms refuse a precomputed metric, so the
dense path (`algorithm="generic"`, which `"best"` also selects for it) is the only one.

The seed (MetastableStateAnalysis, `p1_mstate_tracking/clustering.py`) calls
`hdbscan.HDBSCAN(min_cluster_size=2, metric="precomputed")` on the cosine distance in float64
(1 - G clipped at 0, symmetrised, zero diagonal), every other setting at its default:
`hdbscan_clusters(g, min_cluster_size=2)` on a float64 Gram reproduces it. Its first version
ran HDBSCAN on the normalised vectors with the euclidean metric, sqrt(2 D): the same tree, but
cluster selection weighs densities 1 / distance, so partitions can differ (5 of 100 random
draws here).

`plateaus` is a pure tensor function batched over leading axes; its windows are exactly those
of the seed's greedy scan (`detect_plateaus` in MetastableStateAnalysis'
`p1_mstate_tracking/reporting.py`, with `window = min_len - 1`).
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import hdbscan
import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from . import _checks


class Clusters(NamedTuple):
    labels: Int[Tensor, "*b n"]
    """Cluster of each token, -1 for noise; clusters are numbered 0..count-1 in the order of
    their first (lowest-index) member."""
    count: Int[Tensor, "*b"]
    """Number of clusters, noise excluded."""


class Plateaus(NamedTuple):
    inside: Bool[Tensor, "*b layer"]
    """Whether the layer lies in a reported plateau."""
    length: Int[Tensor, "*b layer"]
    """At the first layer of each reported plateau its number of layers, 0 at every other
    layer: `length > 0` marks the starts, `(length > 0).sum(-1)` counts the plateaus."""


def _gram_tol(dtype: torch.dtype) -> float:
    """How far from 1 a Gram's diagonal, and from 0 its asymmetry, may be.

    Normalising and multiplying leave an error of a few eps, eps of the coarser of the two
    dtypes used: often vectors normalised in float32 and a Gram taken in float64. sqrt(eps) of
    float32 (or of `dtype` if coarser) passes that and refuses vectors that were never
    normalised (diagonal off by O(1)) or a matrix that is not a Gram at all.
    """
    return max(torch.finfo(dtype).eps, torch.finfo(torch.float32).eps) ** 0.5


def _check_gram_diagonal(g: Tensor, name: str) -> None:
    tol = _gram_tol(g.dtype)
    off = (g.diagonal(dim1=-2, dim2=-1) - 1).abs()
    if not (off <= tol).all():
        raise ValueError(f"{name} must be a Gram matrix of unit vectors: its diagonal must be 1 "
                         f"within {tol:.1e}, but it is off by up to {off.max().tolist():.3g}.")


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _first_member_order(raw: np.ndarray) -> np.ndarray:
    """Renumber cluster ids 0..k-1 by first member, keeping -1 for noise."""
    out = np.full_like(raw, -1)
    clusters = [c for c in dict.fromkeys(raw.tolist()) if c >= 0]  # in order of appearance
    for new, c in enumerate(clusters):
        out[raw == c] = new
    return out


def hdbscan_clusters(
    g: Float[Tensor, "*b n n"],
    min_cluster_size: int = 5,
    min_samples: int | None = None,
) -> Clusters:
    """HDBSCAN clusters of unit vectors, from their Gram matrix.

    Definition: HDBSCAN (Campello, Moulavi & Sander 2013) as the `hdbscan` package computes it
    (excess-of-mass selection, no single-cluster answer, no selection epsilon), on the cosine
    distance D = 1 - G, D_ij in [0, 2]. The core distance of token i is its distance to its
    `min_samples`-th nearest *other* token (default: `min_cluster_size`); tokens are joined at
    the mutual-reachability distance max(core_i, core_j, D_ij), and a cluster must keep at
    least `min_cluster_size` tokens. scikit-learn counts the token itself, so its
    `HDBSCAN(metric="precomputed", min_samples=min_samples + 1)` builds the same graph.

    D is formed in float64 from `g` as given, then made exactly symmetric with a zero diagonal.
    HDBSCAN runs on the CPU, one matrix at a time (about 12 ms for n = 512); the result comes
    back on `g`'s device. Where tokens are closer than about 1e-3 rad, a float32 Gram has
    already lost the digits of 1 - G; pass a float64 Gram to separate them.

    Range: labels in {-1, 0, ..., count - 1}; count is 0 or in [2, n // min_cluster_size],
    never 1: the root of the cluster tree is never selected, so a single group is not reported
    as one cluster.

    Limiting cases: all tokens identical (or one tight cap plus scattered tokens) gives count 0,
    every token noise: a fully collapsed layer reads 0, not 1. Groups smaller than
    `min_cluster_size` are noise; with the default `min_samples = min_cluster_size` a group
    needs `min_cluster_size + 1` tokens, since the core distance of a member of a smaller group
    reaches outside it. Exactly identical tokens (D = 0) are fine.

    Not unique under ties: for `min_samples >= 2` mutual-reachability distances tie
    generically (a token's core distance is shared by its edges to its closer neighbours), and
    the partition can depend on the order in which the MST visits tied edges. Two correct
    implementations then disagree, as can a permutation of the tokens; well-separated clusters
    are unaffected, and `min_samples = 1` (single linkage, no ties) is exactly reproducible.

    >>> g = torch.block_diag(*[torch.ones(4, 4)] * 3)  # 3 groups of 4 equal tokens, orthogonal
    >>> labels, count = hdbscan_clusters(g, min_cluster_size=3)
    >>> labels
    tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    >>> count
    tensor(3)
    >>> hdbscan_clusters(torch.ones(6, 6), min_cluster_size=3).count  # one point: no cluster
    tensor(0)
    """
    _checks.floating(g, "g")
    _checks.square(g, "g")
    _checks.at_least(g, -1, 2, "g", "tokens")
    _checks.finite(g, "g")
    _check_gram_diagonal(g, "g")
    n = g.shape[-1]
    if not _is_int(min_cluster_size) or min_cluster_size < 2:
        raise ValueError(f"min_cluster_size must be an integer >= 2 (one token is not a "
                         f"cluster), got {min_cluster_size!r}.")
    k = min_cluster_size if min_samples is None else min_samples
    if not _is_int(k) or not 1 <= k <= n - 1:
        source = ("min_samples" if min_samples is not None
                  else f"min_samples (defaulting to min_cluster_size = {min_cluster_size})")
        raise ValueError(f"{source} must be an integer in [1, n - 1] = [1, {n - 1}]: a core "
                         f"distance is the distance to the min_samples-th nearest other token; "
                         f"got {k!r}.")

    # HDBSCAN works in numpy on the CPU, so the rest does too: one transfer, then elementwise
    # work one matrix at a time in a single thread (torch's intra-op threads ran these 1-2 MB
    # operations up to 10x slower when the machine's two cores were busy). numpy has no
    # bfloat16; float32 holds half and bfloat16 values exactly.
    host = g.detach().to("cpu")
    if host.dtype not in (torch.float32, torch.float64):
        host = host.float()
    grams = host.reshape(-1, n, n).numpy()
    tol = _gram_tol(g.dtype)
    asym = max((np.abs(gi - gi.T).max() for gi in grams), default=0.0)
    if not asym <= tol:
        raise ValueError(f"g must be symmetric (a Gram matrix) within {tol:.1e}, but "
                         f"|g - g^T| reaches {asym:.3g}.")

    labels = np.empty(grams.shape[:2], dtype=np.int64)
    for i, gi in enumerate(grams):
        gi = gi.astype(np.float64, copy=False)  # 2 MB for 512 tokens, one matrix at a time
        # D = 1 - (G + G^T) / 2: a GEMM Gram is symmetric only up to rounding, and the core
        # distances are read along one axis (columns here, rows in scikit-learn).
        d = gi + gi.T
        d *= -0.5
        d += 1.0
        # For (nearly) coincident tokens 1 - G comes out around -1e-16 (float64) to -1e-7
        # (float32) from roundoff; a distance cannot be negative.
        np.maximum(d, 0.0, out=d)
        np.fill_diagonal(d, 0.0)
        raw = hdbscan.hdbscan(d, min_cluster_size=int(min_cluster_size), min_samples=int(k),
                              metric="precomputed", algorithm="generic")[0]
        labels[i] = _first_member_order(raw)
    out = torch.from_numpy(labels).reshape(g.shape[:-1]).to(g.device)
    # Labels are 0..count-1 with -1 for noise, so the largest label is count - 1.
    return Clusters(labels=out, count=out.max(dim=-1).values + 1)


def plateaus(
    signal_by_layer: Float[Tensor, "*b layer"],
    rel_tol: float,
    min_len: int = 3,
) -> Plateaus:
    """Runs of consecutive layers over which a signal is flat to a relative tolerance.

    Definition: a window of layers [s, e] with e - s + 1 >= `min_len` *qualifies* when its
    span is under `rel_tol` times the magnitude of its mean,
        max x - min x < rel_tol * |mean x|,
    or when it is exactly constant (max = min). Reported plateaus come from a greedy scan, the
    seed's rule: for s = 0, 1, ...: if [s, s + min_len - 1] qualifies, extend the end while the
    window from s still qualifies, stopping at the first end that does not; report [s, e] and
    continue at e + 1; otherwise continue at s + 1. The reported plateaus are therefore
    disjoint and ordered. The first end that fails stops the extension even where a longer
    window would qualify again (relative span is not monotone: a value added inside [min, max]
    can raise |mean|), and a qualifying window that overlaps an earlier plateau is cut to what
    lies after it, or lost if that is shorter than `min_len`. The seed (`detect_plateaus`,
    `window = min_len - 1`) divides by |mean| + 1e-8; the multiplicative form with the
    exact-constant rule is the same test except for spans below about 1e-8 * rel_tol.

    Seed tolerances: 0.10 mass near 1, 0.05 effective rank and Fiedler, 0.02 CKA and NN
    stability, with min_len 3.

    Range: `length` is 0 or in [min_len, layer], with sum(length) <= layer; `inside` is true on
    exactly the layers of the reported plateaus.

    Limiting cases: a constant signal (any value, 0 included) is one plateau over all layers;
    fewer than `min_len` layers give none; with min_len = 3, geometric growth x_l = r^l has
    none once 3 (r^2 - 1) / (1 + r + r^2) >= rel_tol (e.g. r = 1 + rel_tol) and, just below
    that, tiles into disjoint plateaus of 3 layers. A window whose mean is 0 qualifies only if it
    is exactly constant, and near mean 0 the test is far stricter than `rel_tol` suggests: a
    relative span is meaningless for a signal that crosses 0 (subtract a baseline or use an
    absolute test there).

    >>> x = torch.tensor([1., 2., 5., 5., 5., 5., 9., 12.])
    >>> p = plateaus(x, rel_tol=0.05)
    >>> p.inside
    tensor([False, False,  True,  True,  True,  True, False, False])
    >>> p.length
    tensor([0, 0, 4, 0, 0, 0, 0, 0])
    """
    x = signal_by_layer
    _checks.floating(x, "signal_by_layer")
    _checks.at_least(x, -1, 1, "signal_by_layer", "layers")
    _checks.finite(x, "signal_by_layer")
    if not isinstance(rel_tol, numbers.Real) or not 0 < rel_tol < float("inf"):
        raise ValueError(f"rel_tol must be a finite number > 0, got {rel_tol!r}.")
    if not _is_int(min_len) or min_len < 2:
        raise ValueError(f"min_len must be an integer >= 2 (one layer is not a run), got "
                         f"{min_len!r}.")

    n_layers = x.shape[-1]
    layer = torch.arange(n_layers, device=x.device)
    s, e = layer[:, None], layer[None, :]  # window [s, e]: rows are starts, columns ends
    window = e >= s
    size = e - s + 1

    # Row s holds x[e] for e >= s: running max, min and sum along a row are those of [s, e].
    xw = x[..., None, :].expand(*x.shape[:-1], n_layers, n_layers)
    hi = xw.masked_fill(~window, -float("inf")).cummax(dim=-1).values
    lo = xw.masked_fill(~window, float("inf")).cummin(dim=-1).values
    mean = xw.masked_fill(~window, 0.0).cumsum(dim=-1) / size  # e < s: masked out below
    span = hi - lo
    qualifies = window & (size >= min_len) & ((span < rel_tol * mean.abs()) | (span == 0))

    # Length of the plateau a scan starting at s would report: the qualifying ends reached
    # without a gap from the shortest window [s, s + min_len - 1], plus its first min_len - 1.
    long_enough = size >= min_len
    reached = (qualifies | ~long_enough).long().cummin(dim=-1).values.bool() & long_enough
    n_ends = reached.sum(dim=-1)
    run = torch.where(n_ends > 0, n_ends + (min_len - 1), 0)

    # The scan itself: a start counts only once the previous plateau has ended.
    length = torch.zeros_like(run)
    free = torch.zeros(x.shape[:-1], dtype=run.dtype, device=x.device)  # first layer not taken
    for l in range(n_layers):
        start = (free <= l) & (run[..., l] > 0)
        length[..., l] = torch.where(start, run[..., l], 0)
        free = torch.where(start, l + run[..., l], free)

    inside = (window & (e < s + length[..., :, None])).any(dim=-2)
    return Plateaus(inside=inside, length=length)


def mean_plateau_width(length: Int[Tensor, "*b layer"]) -> Float[Tensor, "*b"]:
    """Mean number of layers of the reported plateaus of a signal.

    Definition: sum(length) / #{length > 0}, for `length` from `plateaus`.

    Range: [min_len, layer], or NaN where the signal has no plateau (a mean over no plateau is
    undefined; count them with `(length > 0).sum(-1)`). Floating, torch's default dtype.

    Limiting cases: a constant signal gives the number of layers; one plateau gives its length.

    >>> mean_plateau_width(torch.tensor([[3, 0, 0, 4, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]]))
    tensor([3.5000,    nan])
    """
    return length.sum(dim=-1) / (length > 0).sum(dim=-1)
