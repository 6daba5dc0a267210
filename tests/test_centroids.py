import numpy as np
import pytest

from core.centroids import find_centroids


def _blank(h: int = 40, w: int = 50, fill: int = 0) -> np.ndarray:
    return np.full((h, w), fill, dtype=np.uint8)


def test_square_centroid_is_its_center():
    label = _blank(fill=255)
    label[10:20, 20:30] = 3
    rows = find_centroids(label)
    assert rows.dtype == np.float64
    np.testing.assert_allclose(rows, [[3, 14.5, 24.5, 100]])


def test_background_class_is_a_region_too():
    label = _blank(10, 10, fill=0)
    label[0:2, 0:2] = 1
    rows = find_centroids(label)
    # Class 0 is the other 96 pixels: mean y = (sum over all - sum over the square) / 96.
    all_sum = 10 * sum(range(10))  # sum of y over a 10 x 10 image (same for x)
    square_sum = 2 * (0 + 1)
    mean = (all_sum - square_sum) / 96
    np.testing.assert_allclose(rows, [[0, mean, mean, 96], [1, 0.5, 0.5, 4]])


def test_two_separate_regions_give_two_rows_sorted_by_y():
    label = _blank(fill=255)
    label[30:32, 0:2] = 5  # lower region, listed second
    label[0:3, 40:43] = 5
    rows = find_centroids(label)
    np.testing.assert_allclose(rows, [[5, 1.0, 41.0, 9], [5, 30.5, 0.5, 4]])


def test_diagonal_neighbours_form_one_region():
    label = _blank(5, 5, fill=255)
    label[0, 0] = label[1, 1] = label[2, 2] = 7
    rows = find_centroids(label)
    np.testing.assert_allclose(rows, [[7, 1.0, 1.0, 3]])


def test_l_shape_centroid_by_hand():
    label = _blank(10, 10, fill=255)
    label[2:6, 1] = 4  # vertical bar: (2,1) (3,1) (4,1) (5,1)
    label[5, 2:4] = 4  # foot: (5,2) (5,3)
    # y: (2+3+4+5+5+5)/6 = 4.0; x: (1+1+1+1+2+3)/6 = 1.5
    np.testing.assert_allclose(find_centroids(label), [[4, 4.0, 1.5, 6]])


def test_min_area_filters_small_regions():
    label = _blank(fill=255)
    label[0:2, 0:2] = 1  # 4 pixels
    label[10:15, 10:15] = 1  # 25 pixels
    label[30, 30] = 2  # 1 pixel
    rows = find_centroids(label, min_area=5)
    np.testing.assert_allclose(rows, [[1, 12.0, 12.0, 25]])
    assert len(find_centroids(label, min_area=1)) == 3


def test_ignore_pixels_form_no_region_and_do_not_join_regions():
    label = _blank(5, 7, fill=255)
    label[:, 0:3] = 2
    label[:, 4:7] = 2  # column 3 is ignore, so two regions of class 2
    rows = find_centroids(label)
    np.testing.assert_allclose(rows, [[2, 2.0, 1.0, 15], [2, 2.0, 5.0, 15]])


def test_custom_ignore_index():
    label = _blank(4, 4, fill=0)
    label[0, 0] = 9
    rows = find_centroids(label, ignore_index=0)
    np.testing.assert_allclose(rows, [[9, 0.0, 0.0, 1]])


def test_rows_sorted_by_class_then_y_then_x():
    label = _blank(20, 20, fill=255)
    label[0, 10] = 3
    label[0, 2] = 3
    label[5, 0] = 1
    label[9, 9] = 0
    rows = find_centroids(label)
    np.testing.assert_allclose(rows[:, :3], [[0, 9, 9], [1, 5, 0], [3, 0, 2], [3, 0, 10]])


def test_all_ignored_gives_empty_table():
    rows = find_centroids(_blank(fill=255))
    assert rows.shape == (0, 4) and rows.dtype == np.float64


def test_rejects_non_2d_labels():
    with pytest.raises(ValueError, match="uint8"):
        find_centroids(np.zeros((4, 4, 3), dtype=np.uint8))


def _flood_fill_centroids(label: np.ndarray, ignore_index: int = 255) -> list[list[float]]:
    """Slow reference: breadth-first search over the 8 neighbours of each unvisited pixel."""
    h, w = label.shape
    seen = np.zeros_like(label, dtype=bool)
    rows = []
    for y in range(h):
        for x in range(w):
            if seen[y, x] or label[y, x] == ignore_index:
                continue
            cls, queue, pixels = label[y, x], [(y, x)], []
            seen[y, x] = True
            while queue:
                cy, cx = queue.pop()
                pixels.append((cy, cx))
                for ny in range(max(0, cy - 1), min(h, cy + 2)):
                    for nx in range(max(0, cx - 1), min(w, cx + 2)):
                        if not seen[ny, nx] and label[ny, nx] == cls:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            ys, xs = np.array(pixels).T
            rows.append([float(cls), ys.mean(), xs.mean(), float(len(pixels))])
    return sorted(rows)


def test_matches_a_flood_fill_on_random_maps():
    rng = np.random.default_rng(0)
    for _ in range(5):
        label = rng.choice(np.array([1, 4, 255], dtype=np.uint8), size=(17, 23), p=[0.3, 0.2, 0.5])
        np.testing.assert_allclose(find_centroids(label), _flood_fill_centroids(label))
