from collections import Counter

import numpy as np
import pytest

from core.errors import ConfigError
from core.sampling import REAL, CentroidTable, EpochSampler, Sample, rank_part, split_counts


def _centroids(rows: list[tuple[int, int, float, float]]) -> np.ndarray:
    """(image, class, y, x) rows -> the (N, 5) array a label store returns (area 10)."""
    return np.array([(i, c, y, x, 10.0) for i, c, y, x in rows], dtype=np.float64).reshape(-1, 5)


def test_split_counts_puts_pseudo_per_real_pseudo_samples_beside_each_real_one():
    assert split_counts(80, 3.0) == (20, 60)
    assert split_counts(10, 1.0) == (5, 5)
    assert split_counts(8, 7.0) == (1, 7)  # the paper's 7:1
    assert split_counts(12_000, 7.0) == (1_500, 10_500)  # its 1.5K real and 10.5K pseudo
    assert split_counts(10, 0.0) == (10, 0)
    with pytest.raises(ConfigError):
        split_counts(10, -1.0)


def test_real_images_are_drawn_evenly_without_pseudo_labels():
    sampler = EpochSampler(n_real_images=4, seed=3)
    samples = sampler.samples(epoch=0, n_real=10, n_pseudo=0)
    assert len(samples) == 10
    assert all(s.store == REAL and s.point is None for s in samples)
    counts = Counter(s.index for s in samples)
    # 10 draws from 4 images: two full rounds, then 2 more; every image 2 or 3 times.
    assert sorted(counts) == [0, 1, 2, 3]
    assert sorted(counts.values()) == [2, 2, 3, 3]


def test_the_list_is_fixed_by_seed_and_epoch():
    a = EpochSampler(n_real_images=50, seed=1)
    b = EpochSampler(n_real_images=50, seed=1)
    assert a.samples(2, 20, 0) == b.samples(2, 20, 0)
    assert a.samples(2, 20, 0) != a.samples(3, 20, 0)
    assert a.samples(2, 20, 0) != EpochSampler(n_real_images=50, seed=2).samples(2, 20, 0)


def test_the_real_share_equals_the_counts_asked_for():
    centroids = [_centroids([(0, 1, 5, 5), (1, 2, 6, 6)])]
    sampler = EpochSampler(12, pseudo_images=[[0, 1]], centroids=centroids, seed=0)
    n_real, n_pseudo = split_counts(80, 1 / 3)
    samples = sampler.samples(0, n_real, n_pseudo)
    assert sum(s.is_real for s in samples) == 60
    assert sum(not s.is_real for s in samples) == 20
    # Real and pseudo samples are interleaved, not in two blocks.
    assert not all(s.is_real for s in samples[:60])


def test_centroid_sampling_draws_every_class_equally_often():
    # Class 0 has 100 centroids, class 5 a single one, class 7 ten, spread over two stores.
    store0 = _centroids(
        [(i % 20, 0, 10 + i % 7, 20 + i % 11) for i in range(100)] + [(3, 5, 40, 90)]
    )
    store1 = _centroids([(i, 7, 30, 60 + i) for i in range(10)])
    sampler = EpochSampler(5, pseudo_images=[range(20), range(10)], centroids=[store0, store1])
    samples = sampler.samples(epoch=4, n_real=0, n_pseudo=300)
    table = CentroidTable([store0, store1])
    classes = Counter()
    for s in samples:
        assert s.point is not None
        rows = np.flatnonzero(
            (table.store == s.store) & (table.image == s.index) & (table.yx == s.point).all(axis=1)
        )
        assert rows.size >= 1, f"{s} is not a recorded centroid"
        classes[int(table.cls[rows[0]])] += 1
    # A common class gets no more samples than a class with one region.
    assert classes == {0: 100, 5: 100, 7: 100}
    # The rare class's only centroid (store 0, image 3, at 40, 90) is used every time.
    assert Counter(s for s in samples if s.point == (40, 90)) == {Sample(0, 3, (40, 90)): 100}


def test_every_class_is_seen_in_an_epoch_with_one_sample_per_class():
    # Class c's centroids lie on row y = c; class 0 has 500 of them, the others one each.
    rows = [(0, 0, 0, i % 100) for i in range(500)] + [(1, c, c, 50) for c in range(1, 19)]
    sampler = EpochSampler(0, pseudo_images=[[0, 1]], centroids=[_centroids(rows)], seed=7)
    for epoch in range(5):
        samples = sampler.samples(epoch, n_real=0, n_pseudo=19)
        assert sorted(s.point[0] for s in samples) == list(range(19))


def test_centroids_are_rounded_to_the_nearest_pixel():
    sampler = EpochSampler(0, pseudo_images=[[2]], centroids=[_centroids([(2, 4, 3.4, 5.6)])])
    assert sampler.samples(0, 0, 1) == [Sample(0, 2, (3, 6))]


def test_without_centroid_sampling_pseudo_samples_are_whole_images_drawn_evenly():
    sampler = EpochSampler(3, pseudo_images=[[0, 2, 4], [1]], centroids=None, seed=5)
    samples = sampler.samples(0, n_real=0, n_pseudo=8)
    assert all(s.point is None and not s.is_real for s in samples)
    assert Counter((s.store, s.index) for s in samples) == {
        (0, 0): 2,
        (0, 2): 2,
        (0, 4): 2,
        (1, 1): 2,
    }


def test_asking_for_samples_of_a_kind_that_has_none_is_an_error():
    with pytest.raises(ConfigError, match="no label store"):
        EpochSampler(3).samples(0, 2, 1)
    with pytest.raises(ConfigError, match="no centroids"):
        EpochSampler(3, pseudo_images=[[0]], centroids=[_centroids([])]).samples(0, 2, 1)
    with pytest.raises(ConfigError, match="labeled dataset is empty"):
        EpochSampler(0, pseudo_images=[[0]]).samples(0, 1, 1)


def test_rank_parts_are_disjoint_equal_and_cover_the_list():
    samples = [Sample(REAL, i) for i in range(10)]
    parts = [rank_part(samples, rank, 3) for rank in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]
    assert [position for position, _ in parts[1]] == [1, 4, 7, 10]
    positions = sorted(position for part in parts for position, _ in part)
    assert positions == list(range(12))
    # Positions past the end wrap around to the start of the list.
    assert parts[1][3] == (10, Sample(REAL, 0))
    assert parts[2][3] == (11, Sample(REAL, 1))
    with pytest.raises(ValueError):
        rank_part(samples, 3, 3)


def test_state_dict_restores_the_seed():
    sampler = EpochSampler(20, seed=11)
    other = EpochSampler(20, seed=0)
    other.load_state_dict(sampler.state_dict())
    assert other.samples(3, 10, 0) == sampler.samples(3, 10, 0)
