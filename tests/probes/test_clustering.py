"""probes.clustering: HDBSCAN on the cosine distance of a Gram, and plateaus of a per-layer signal.

HDBSCAN is checked against scikit-learn's independent implementation on the same distances,
plateaus against a plain-Python version of the seed's greedy scan.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.cluster import HDBSCAN as SklearnHDBSCAN

from probes.clustering import hdbscan_clusters, mean_plateau_width, plateaus

SEED_TOLERANCES = [0.10, 0.05, 0.02]  # mass near 1; erank and Fiedler; CKA and NN stability


def _sphere(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _caps(k: int, per_cap: int, n_scattered: int, d: int, spread: float, seed: int):
    """k tight caps and a few scattered tokens on the sphere, with the true labels.

    Cap centres are normalise(e_0 + 0.9 e_{1+c}): cosine distance 0.45 between caps. Token i
    of the caps belongs to cap i % k, so cap c's first member is token c and the true labels
    are already numbered by first member. The scattered tokens lean away from e_0 and are
    orthogonal to e_1..e_k, hence at cosine distance > 1 from every cap.
    """
    gen = torch.Generator().manual_seed(seed)
    eye = torch.eye(d, dtype=torch.float64)
    centres = _sphere(eye[0] + 0.9 * eye[1:k + 1])
    truth = torch.arange(k * per_cap) % k
    members = centres[truth] + spread * torch.randn(k * per_cap, d, generator=gen,
                                                    dtype=torch.float64) / math.sqrt(d)
    scattered = torch.randn(n_scattered, d, generator=gen, dtype=torch.float64)
    scattered[:, :k + 1] = 0.0
    scattered[:, 0] = -0.1 * scattered[:, k + 1:].norm(dim=-1)
    x = _sphere(torch.cat([members, scattered]))
    return x, torch.cat([truth, torch.full((n_scattered,), -1)])


def _random_points(n: int, d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return _sphere(torch.randn(n, d, generator=gen, dtype=torch.float64))


def _by_first_member(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters 0, 1, ... in order of first member, -1 kept: equal partitions then
    give equal arrays."""
    out = np.full(labels.shape, -1)
    new: dict[int, int] = {}
    for i, c in enumerate(labels.tolist()):
        if c >= 0:
            out[i] = new.setdefault(c, len(new))
    return out


def _sklearn_labels(g: torch.Tensor, min_cluster_size: int, min_samples: int) -> np.ndarray:
    gn = g.numpy()
    d = np.maximum(1.0 - (gn + gn.T) / 2, 0.0)
    np.fill_diagonal(d, 0.0)
    # copy=True: scikit-learn 1.9 otherwise overwrites a precomputed matrix in place with
    # mutual-reachability distances.
    model = SklearnHDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples,
                           metric="precomputed", copy=True)
    return _by_first_member(model.fit_predict(d))


# --- hdbscan_clusters: closed forms ----------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_well_separated_caps_give_their_count_and_scattered_tokens_are_noise(k):
    for seed in range(3):
        x, truth = _caps(k, per_cap=12, n_scattered=4, d=32, spread=0.1, seed=seed)
        labels, count = hdbscan_clusters(x @ x.T, min_cluster_size=5)
        assert torch.equal(labels, truth)
        assert count.tolist() == k


@pytest.mark.parametrize("n", [2, 3, 6, 40])
def test_identical_tokens_are_all_noise_not_one_cluster(n):
    labels, count = hdbscan_clusters(torch.ones(n, n), min_cluster_size=2, min_samples=1)
    assert count.tolist() == 0
    assert (labels == -1).all()


def test_one_cap_among_scattered_tokens_is_zero_clusters_not_one():
    x, _ = _caps(1, per_cap=60, n_scattered=4, d=32, spread=0.1, seed=0)
    assert hdbscan_clusters(x @ x.T).count.tolist() == 0


def test_groups_of_identical_orthogonal_tokens_are_exact_clusters():
    sizes = [6, 4, 5]
    g = torch.block_diag(*[torch.ones(s, s, dtype=torch.float64) for s in sizes])
    labels, count = hdbscan_clusters(g, min_cluster_size=3)
    assert labels.tolist() == [0] * 6 + [1] * 4 + [2] * 5
    assert count.tolist() == 3


def test_a_group_of_exactly_min_cluster_size_needs_min_samples_below_it():
    g = torch.block_diag(*[torch.ones(5, 5)] * 3)
    # Default min_samples = 5: a member's 5th nearest other token lies in another group.
    assert hdbscan_clusters(g, min_cluster_size=5).count.tolist() == 0
    assert hdbscan_clusters(g, min_cluster_size=5, min_samples=4).count.tolist() == 3
    g6 = torch.block_diag(*[torch.ones(6, 6)] * 3)
    assert hdbscan_clusters(g6, min_cluster_size=5).count.tolist() == 3


def test_labels_are_numbered_by_first_member_and_count_is_never_one():
    for seed in range(6):
        x = _random_points(80, 4, seed)
        for min_cluster_size in (2, 4):
            labels, count = hdbscan_clusters(x @ x.T, min_cluster_size, min_samples=1)
            k = count.tolist()
            assert k != 1
            firsts = [int((labels == c).nonzero()[0]) for c in range(k)]
            assert firsts == sorted(firsts)
            assert set(labels.tolist()) <= set(range(-1, k))


def test_float32_gram_gives_the_float64_partition_on_separated_caps():
    x, _ = _caps(4, per_cap=10, n_scattered=4, d=32, spread=0.3, seed=1)
    g64 = x @ x.T
    assert torch.equal(hdbscan_clusters(g64.float()).labels, hdbscan_clusters(g64).labels)


def test_a_gram_that_requires_grad_is_accepted():
    x = _random_points(20, 3, 0).requires_grad_()
    labels, _ = hdbscan_clusters(x @ x.T, min_cluster_size=3)
    assert labels.dtype == torch.int64 and labels.shape == (20,)


# --- hdbscan_clusters against scikit-learn ---------------------------------------------------


@pytest.mark.parametrize("min_cluster_size,min_samples", [(5, None), (5, 2), (3, 7), (8, 4)])
def test_equals_sklearn_with_min_samples_plus_one_on_planted_caps(min_cluster_size,
                                                                   min_samples):
    for seed in range(4):
        for spread in (0.3, 0.8):
            x, _ = _caps(4, per_cap=15, n_scattered=15, d=16, spread=spread, seed=seed)
            g = x @ x.T
            k = min_cluster_size if min_samples is None else min_samples
            ours = hdbscan_clusters(g, min_cluster_size, min_samples).labels.numpy()
            assert np.array_equal(ours, _sklearn_labels(g, min_cluster_size, k + 1))


def test_equals_sklearn_on_random_points_at_min_samples_one():
    # min_samples = 1 is single linkage: no tied mutual-reachability distances, so the
    # partition is unique. (For min_samples >= 2 ties make it depend on the MST's tie order,
    # and the two libraries differ on about 1 random draw in 9; see the docstring.)
    for seed in range(12):
        n, d = 40 + 9 * seed, 3 + 3 * seed
        g = (x := _random_points(n, d, seed)) @ x.T
        for min_cluster_size in (2, 4, 9):
            ours = hdbscan_clusters(g, min_cluster_size, min_samples=1).labels.numpy()
            assert np.array_equal(ours, _sklearn_labels(g, min_cluster_size, 2))


def test_min_samples_counts_other_tokens_so_sklearn_with_the_same_value_differs():
    differs = []
    for seed in range(6):
        x, _ = _caps(4, per_cap=15, n_scattered=15, d=16, spread=0.8, seed=seed)
        g = x @ x.T
        ours = hdbscan_clusters(g, min_cluster_size=5, min_samples=3).labels.numpy()
        assert np.array_equal(ours, _sklearn_labels(g, 5, 4))
        differs.append(not np.array_equal(ours, _sklearn_labels(g, 5, 3)))
    assert any(differs)


def test_hdbscan_batched_equals_a_loop():
    xs = torch.stack([torch.stack([_caps(3, 8, 4, 16, s, seed)[0] for s in (0.2, 0.6, 1.2)])
                      for seed in range(2)])  # [2, 3, n, d]
    g = xs @ xs.mT
    labels, count = hdbscan_clusters(g, min_cluster_size=4)
    assert labels.shape == g.shape[:-1] and count.shape == g.shape[:-2]
    for i in range(2):
        for j in range(3):
            one = hdbscan_clusters(g[i, j], min_cluster_size=4)
            assert torch.equal(labels[i, j], one.labels)
            assert torch.equal(count[i, j], one.count)


# --- hdbscan_clusters: bad input -------------------------------------------------------------


def _unit_gram(n: int) -> torch.Tensor:
    return (x := _random_points(n, 3, 0)) @ x.T


@pytest.mark.parametrize("g,kwargs,match", [
    (torch.ones(1, 1), {}, "at least 2 tokens"),
    (torch.ones(3, 4), {}, r"must be \[\.\.\., n, n\]"),
    (torch.ones(3), {}, r"must be \[\.\.\., n, n\]"),
    (torch.ones(3, 3, dtype=torch.int64), {"min_cluster_size": 2}, "floating"),
    (_unit_gram(6).fill_diagonal_(math.nan), {"min_cluster_size": 2}, "non-finite"),
    (2.0 * _unit_gram(6), {"min_cluster_size": 2}, "diagonal must be 1"),
    (torch.eye(6) + 0.1 * torch.ones(6, 6).triu(1), {"min_cluster_size": 2}, "symmetric"),
    (_unit_gram(8), {"min_cluster_size": 1}, "min_cluster_size must be an integer >= 2"),
    (_unit_gram(8), {"min_cluster_size": 2.5}, "min_cluster_size must be an integer >= 2"),
    (_unit_gram(8), {"min_samples": 0}, r"min_samples must be an integer in \[1, n - 1\]"),
    (_unit_gram(8), {"min_samples": 8}, r"min_samples must be an integer in \[1, n - 1\]"),
    (_unit_gram(4), {}, "defaulting to min_cluster_size = 5"),
])
def test_hdbscan_bad_input_raises(g, kwargs, match):
    with pytest.raises(ValueError, match=match):
        hdbscan_clusters(g, **kwargs)


# --- plateaus ---------------------------------------------------------------------------------


def _seed_scan(x: list[float], rel_tol: float, min_len: int) -> list[tuple[int, int]]:
    """The seed's greedy scan, in plain Python: (start, length) of each reported plateau."""
    def qualifies(w):
        span = max(w) - min(w)
        return span < rel_tol * abs(sum(w) / len(w)) or span == 0

    found, i = [], 0
    while i + min_len <= len(x):
        if qualifies(x[i:i + min_len]):
            j = i + min_len  # exclusive end
            while j < len(x) and qualifies(x[i:j + 1]):
                j += 1
            found.append((i, j - i))
            i = j
        else:
            i += 1
    return found


def _runs(p) -> list[tuple[int, int]]:
    starts = (p.length > 0).nonzero().flatten().tolist()
    return [(s, p.length[s].tolist()) for s in starts]


@pytest.mark.parametrize("value", [3.0, -2.5, 0.0, 1e-12])
def test_a_constant_signal_is_one_plateau_over_all_layers(value):
    p = plateaus(torch.full((12,), value, dtype=torch.float64), rel_tol=0.02)
    assert _runs(p) == [(0, 12)]
    assert p.inside.all()
    assert mean_plateau_width(p.length).tolist() == 12.0


@pytest.mark.parametrize("rel_tol", SEED_TOLERANCES)
@pytest.mark.parametrize("growth", [1.0, 1.5, 3.0])
def test_geometric_growth_by_rel_tol_per_layer_or_faster_has_no_plateau(rel_tol, growth):
    x = (1 + growth * rel_tol) ** torch.arange(24, dtype=torch.float64)
    p = plateaus(x, rel_tol)
    assert not p.inside.any()
    assert (p.length == 0).all()
    assert mean_plateau_width(p.length).isnan()


@pytest.mark.parametrize("rel_tol", SEED_TOLERANCES)
def test_slow_geometric_growth_tiles_into_disjoint_plateaus_of_min_len(rel_tol):
    # Ratio r with relative span 3(r^2 - 1)/(1 + r + r^2) = 0.9 rel_tol over 3 layers; over 4
    # layers it is 4(r^3 - 1)/(1 + r + r^2 + r^3) > rel_tol. Every 3-window qualifies, none of
    # 4, so the scan reports [0, 2], [3, 5], [6, 8] and not the union of all layers.
    c = 0.9 * rel_tol
    r = (c + math.sqrt(c * c + 4 * (3 - c) * (3 + c))) / (2 * (3 - c))
    assert 4 * (r**3 - 1) / (1 + r + r**2 + r**3) > rel_tol
    x = r ** torch.arange(10, dtype=torch.float64)
    p = plateaus(x, rel_tol)
    assert _runs(p) == [(0, 3), (3, 3), (6, 3)]
    assert p.inside.tolist() == [True] * 9 + [False]


@pytest.mark.parametrize("rel_tol", SEED_TOLERANCES)
@pytest.mark.parametrize("start", [0, 3, 8])
def test_a_flat_segment_of_four_in_a_ramp_is_found_exactly(start, rel_tol):
    x = 1.5 ** torch.arange(12, dtype=torch.float64)
    x[start:start + 4] = x[start]
    p = plateaus(x, rel_tol)
    assert _runs(p) == [(start, 4)]
    assert p.inside.nonzero().flatten().tolist() == list(range(start, start + 4))


def test_min_len_is_respected():
    x = 1.5 ** torch.arange(12, dtype=torch.float64)
    x[3:7] = x[3]   # flat over 4 layers
    x[9:11] = x[9]  # flat over 2 layers
    assert _runs(plateaus(x, 0.05, min_len=5)) == []
    assert _runs(plateaus(x, 0.05, min_len=4)) == [(3, 4)]
    assert _runs(plateaus(x, 0.05, min_len=3)) == [(3, 4)]
    assert _runs(plateaus(x, 0.05, min_len=2)) == [(3, 4), (9, 2)]


@pytest.mark.parametrize("n_layers", [1, 2])
def test_fewer_layers_than_min_len_give_no_plateau(n_layers):
    p = plateaus(torch.ones(n_layers), 0.05, min_len=3)
    assert not p.inside.any() and (p.length == 0).all()


def test_relative_span_uses_the_magnitude_of_the_mean_so_sign_does_not_matter():
    wiggle = 1e-3 * torch.tensor([1.0, -1.0] * 5, dtype=torch.float64)
    assert _runs(plateaus(1.0 + wiggle, 0.01)) == [(0, 10)]
    assert _runs(plateaus(-1.0 + wiggle, 0.01)) == [(0, 10)]


def test_a_wiggle_around_zero_has_no_plateau_even_at_a_loose_tolerance():
    # Mean 0 (even windows) or +-1e-3/3 (odd ones): the span 2e-3 is 6x |mean| or more.
    wiggle = 1e-3 * torch.tensor([1.0, -1.0] * 5, dtype=torch.float64)
    p = plateaus(wiggle, rel_tol=1.0)
    assert not p.inside.any()
    assert _runs(plateaus(torch.zeros(10), rel_tol=0.01)) == [(0, 10)]  # exactly constant


def test_extension_stops_at_the_first_failing_end_like_the_seed():
    x = torch.tensor([0.95] * 3 + [1.05] * 4, dtype=torch.float64)
    # The whole window qualifies (span 0.1 < 0.1 * mean 1.0071), but [0, 3] does not
    # (0.1 >= 0.1 * 0.975), so the scan stops there and starts again at layer 3.
    assert (x.max() - x.min()) < 0.1 * x.mean()
    p = plateaus(x, 0.1)
    assert p.length.tolist() == [3, 0, 0, 4, 0, 0, 0]
    assert mean_plateau_width(p.length).tolist() == 3.5


@pytest.mark.parametrize("rel_tol", SEED_TOLERANCES)
@pytest.mark.parametrize("min_len", [2, 3, 5])
def test_plateaus_equal_the_seed_scan_on_random_walks(rel_tol, min_len):
    gen = torch.Generator().manual_seed(0)
    walks = 1.0 + (0.3 * rel_tol * torch.randn(20, 30, generator=gen,
                                               dtype=torch.float64)).cumsum(dim=-1)
    p = plateaus(walks, rel_tol, min_len)
    found = 0
    for w, length in zip(walks, p.length):
        ref = _seed_scan(w.tolist(), rel_tol, min_len)
        got = [(s, length[s].tolist()) for s in (length > 0).nonzero().flatten().tolist()]
        assert got == ref
        found += len(ref)
    assert found > 20  # the walks do have plateaus to find


def test_plateaus_batched_equal_a_loop():
    gen = torch.Generator().manual_seed(1)
    x = 1.0 + (0.02 * torch.randn(3, 4, 15, generator=gen)).cumsum(dim=-1)
    p = plateaus(x, 0.05)
    width = mean_plateau_width(p.length)
    assert p.inside.shape == p.length.shape == x.shape and width.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            one = plateaus(x[i, j], 0.05)
            assert torch.equal(p.inside[i, j], one.inside)
            assert torch.equal(p.length[i, j], one.length)
            assert torch.equal(width[i, j], mean_plateau_width(one.length))


@pytest.mark.parametrize("x,kwargs,match", [
    (torch.ones(5), {"rel_tol": 0.0}, "rel_tol must be a finite number > 0"),
    (torch.ones(5), {"rel_tol": -0.1}, "rel_tol must be a finite number > 0"),
    (torch.ones(5), {"rel_tol": math.inf}, "rel_tol must be a finite number > 0"),
    (torch.ones(5), {"rel_tol": math.nan}, "rel_tol must be a finite number > 0"),
    (torch.ones(5), {"rel_tol": 0.1, "min_len": 1}, "min_len must be an integer >= 2"),
    (torch.ones(5), {"rel_tol": 0.1, "min_len": 2.5}, "min_len must be an integer >= 2"),
    (torch.tensor([1.0, math.nan, 1.0]), {"rel_tol": 0.1}, "non-finite"),
    (torch.ones(5, dtype=torch.int64), {"rel_tol": 0.1}, "floating"),
    (torch.tensor(1.0), {"rel_tol": 0.1}, "at least 1 dims"),
])
def test_plateaus_bad_input_raises(x, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plateaus(x, **kwargs)
