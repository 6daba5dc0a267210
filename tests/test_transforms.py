import numpy as np
import pytest
import torch

from core.configs import AugmentConfig
from core.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ColorJitter,
    Compose,
    Cutout,
    GaussianBlur,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    augment_around_point,
    build_train_transform,
    crop_containing,
    normalize_batch,
    resize_pair,
    soft_target,
    to_tensors,
)


def _sample(h: int = 40, w: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    label = rng.choice(np.array([0, 3, 7, 255], dtype=np.uint8), size=(h, w))
    return image, label


def test_resize_pair_uses_nearest_for_labels():
    image, label = _sample()
    # An odd factor (about 0.37): bilinear would blend ids into values that are not in the input.
    new_image, new_label = resize_pair(image, label, (15, 22))
    assert new_image.shape == (15, 22, 3) and new_image.dtype == np.uint8
    assert new_label.shape == (15, 22) and new_label.dtype == np.uint8
    assert set(np.unique(new_label)) <= {0, 3, 7, 255}


def test_resize_pair_upscale_2x_repeats_label_pixels():
    label = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    _, big = resize_pair(image, label, (4, 4))
    expected = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], dtype=np.uint8)
    np.testing.assert_array_equal(big, expected)


def test_random_scale_keeps_label_values_and_scales_within_range():
    image, label = _sample(40, 60)
    scale = RandomScale(0.5, 2.0)
    rng = np.random.default_rng(1)
    heights = []
    for _ in range(30):
        new_image, new_label = scale(image, label, rng)
        assert new_image.shape[:2] == new_label.shape
        assert 20 <= new_label.shape[0] <= 80 and 30 <= new_label.shape[1] <= 120
        assert set(np.unique(new_label)) <= {0, 3, 7, 255}
        heights.append(new_label.shape[0])
    assert len(set(heights)) > 5  # the factor really is random


def test_random_scale_rejects_inverted_range():
    with pytest.raises(ValueError, match="min_scale"):
        RandomScale(2.0, 0.5)


def test_random_crop_pads_label_with_255_and_image_with_0():
    image = np.full((4, 6, 3), 9, dtype=np.uint8)
    label = np.full((4, 6), 2, dtype=np.uint8)
    crop_image, crop_label = RandomCrop((8, 10))(image, label, np.random.default_rng(0))
    assert crop_image.shape == (8, 10, 3) and crop_label.shape == (8, 10)
    # The padding is bottom/right, so the original sits in the top-left corner.
    assert (crop_label[:4, :6] == 2).all() and (crop_image[:4, :6] == 9).all()
    assert (crop_label[4:, :] == 255).all() and (crop_label[:, 6:] == 255).all()
    assert (crop_image[4:, :] == 0).all() and (crop_image[:, 6:] == 0).all()


def test_random_crop_is_a_window_of_the_input():
    image, label = _sample(40, 60)
    crop_image, crop_label = RandomCrop(16)(image, label, np.random.default_rng(3))
    assert crop_label.shape == (16, 16)
    # Find the window: the crop must equal input[y0:y0+16, x0:x0+16] for some offset.
    matches = [
        (y, x)
        for y in range(40 - 16 + 1)
        for x in range(60 - 16 + 1)
        if np.array_equal(image[y : y + 16, x : x + 16], crop_image)
    ]
    assert len(matches) == 1
    y, x = matches[0]
    np.testing.assert_array_equal(label[y : y + 16, x : x + 16], crop_label)


def test_crop_containing_always_contains_the_point():
    rng = np.random.default_rng(0)
    for _ in range(500):
        h, w = (int(v) for v in rng.integers(1, 50, size=2))
        ch, cw = (int(v) for v in rng.integers(1, 70, size=2))  # often larger than the image
        # Bias towards borders: half of the points lie on the first/last row or column.
        py = int(rng.choice([0, h - 1, rng.integers(0, h)]))
        px = int(rng.choice([0, w - 1, rng.integers(0, w)]))
        # Encode each pixel's position in the image so the crop tells where it came from.
        ys, xs = np.mgrid[0:h, 0:w]
        image = np.stack([ys, xs, np.ones_like(ys)], axis=-1).astype(np.uint8)
        label = np.zeros((h, w), dtype=np.uint8)
        label[py, px] = 1
        crop_image, crop_label = crop_containing(image, label, (py, px), (ch, cw), rng)
        assert crop_label.shape == (ch, cw) and crop_image.shape == (ch, cw, 3)
        assert (crop_label == 1).sum() == 1, (h, w, ch, cw, py, px)
        cy, cx = np.argwhere(crop_label == 1)[0]
        assert tuple(crop_image[cy, cx]) == (py, px, 1)


def test_crop_containing_offset_is_random_and_covers_all_windows():
    # Image 10 x 10, crop 4 x 4, point (5, 5): window tops 2..5 and lefts 2..5 all contain it.
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    image[..., 0] = np.arange(10)[:, None]
    image[..., 1] = np.arange(10)[None, :]
    label = np.zeros((10, 10), dtype=np.uint8)
    rng = np.random.default_rng(0)
    tops, lefts = set(), set()
    for _ in range(300):
        crop_image, _ = crop_containing(image, label, (5, 5), 4, rng)
        tops.add(int(crop_image[0, 0, 0]))
        lefts.add(int(crop_image[0, 0, 1]))
    assert tops == {2, 3, 4, 5} and lefts == {2, 3, 4, 5}


def test_crop_containing_rejects_point_outside():
    image, label = _sample(10, 10)
    with pytest.raises(ValueError, match="outside"):
        crop_containing(image, label, (10, 3), 4, np.random.default_rng(0))


def test_flip_flips_image_and_label_together():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    label = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)
    flipped_image, flipped_label = RandomHorizontalFlip(p=1.0)(
        image, label, np.random.default_rng()
    )
    np.testing.assert_array_equal(flipped_label, [[3, 2, 1], [6, 5, 4]])
    np.testing.assert_array_equal(flipped_image[:, 0], image[:, 2])
    same_image, same_label = RandomHorizontalFlip(p=0.0)(image, label, np.random.default_rng())
    np.testing.assert_array_equal(same_label, label)
    np.testing.assert_array_equal(same_image, image)


def test_blur_smooths_image_and_leaves_label():
    image = np.zeros((21, 21, 3), dtype=np.uint8)
    image[10, 10] = 255
    label = np.full((21, 21), 4, dtype=np.uint8)
    blurred, same_label = GaussianBlur(p=1.0)(image, label, np.random.default_rng(0))
    assert blurred.dtype == np.uint8 and blurred.shape == image.shape
    assert blurred[10, 10, 0] < 255 and blurred[10, 11, 0] > 0
    assert same_label is label


def test_color_jitter_stays_uint8_and_close_to_input():
    image, label = _sample(32, 32)
    rng = np.random.default_rng(0)
    for _ in range(20):
        out, same_label = ColorJitter(0.1)(image, label, rng)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert same_label is label
        # Factors within 0.9..1.1 move a pixel by far less than the full range.
        assert np.abs(out.astype(int) - image.astype(int)).mean() < 30
    saturated = np.full((4, 4, 3), 255, dtype=np.uint8)
    out, _ = ColorJitter(1.0)(saturated, label[:4, :4], np.random.default_rng(5))
    assert out.dtype == np.uint8  # clipped, not wrapped around


def test_color_jitter_zero_is_identity():
    image, label = _sample()
    out, _ = ColorJitter(0.0)(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(out, image)


def test_build_train_transform_gives_crop_size_and_valid_labels():
    transform = build_train_transform(AugmentConfig(), 24)
    assert isinstance(transform, Compose)
    image, label = _sample(40, 60)
    rng = np.random.default_rng(0)
    for _ in range(10):
        out_image, out_label = transform(image, label, rng)
        assert out_image.shape == (24, 24, 3) and out_image.dtype == np.uint8
        assert out_label.shape == (24, 24)
        assert set(np.unique(out_label)) <= {0, 3, 7, 255}


def test_build_train_transform_is_reproducible_from_the_seed():
    transform = build_train_transform(AugmentConfig(), 24)
    image, label = _sample(40, 60)
    a = transform(image, label, np.random.default_rng(7))
    b = transform(image, label, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_build_train_transform_without_extras_has_only_scale_and_crop():
    aug = AugmentConfig(flip=False, blur=False, color_jitter=0.0)
    transform = build_train_transform(aug, 24)
    assert [type(t) for t in transform.transforms] == [RandomScale, RandomCrop]


def test_compose_rejects_mismatched_sizes():
    image, _ = _sample(10, 10)
    with pytest.raises(ValueError, match="differ"):
        Compose([])(image, np.zeros((10, 11), dtype=np.uint8), np.random.default_rng())


def test_augment_around_point_keeps_the_point_class_in_the_crop():
    # A single pixel of class 5 on background 0; after scale + crop it must still be visible.
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    label = np.zeros((60, 80), dtype=np.uint8)
    label[57, 3] = 5
    aug = AugmentConfig(scale_min=1.0, scale_max=2.0, blur=False, color_jitter=0.0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        _, out = augment_around_point(image, label, (57, 3), aug, 16, rng)
        assert out.shape == (16, 16)
        assert (out == 5).any()


def test_normalize_batch_of_constant_image():
    images = torch.full((2, 5, 7, 3), 100, dtype=torch.uint8)
    x = normalize_batch(images)
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32
    for c in range(3):
        expected = (100 / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(x[:, c], torch.full((2, 5, 7), expected))


def test_normalize_batch_keeps_channel_order():
    images = torch.zeros((1, 2, 2, 3), dtype=torch.uint8)
    images[..., 0] = 255  # red only
    x = normalize_batch(images)
    torch.testing.assert_close(x[0, 0, 0, 0], torch.tensor((1 - 0.485) / 0.229))
    torch.testing.assert_close(x[0, 1, 0, 0], torch.tensor(-0.456 / 0.224))


def test_normalize_batch_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        normalize_batch(torch.zeros((1, 4, 4, 3)))


def test_to_tensors_stacks_samples():
    images = [np.full((4, 5, 3), i, dtype=np.uint8) for i in range(3)]
    labels = [np.full((4, 5), 255 if i == 2 else i, dtype=np.uint8) for i in range(3)]
    image_batch, label_batch = to_tensors(images, labels)
    assert image_batch.shape == (3, 4, 5, 3) and image_batch.dtype == torch.uint8
    assert label_batch.shape == (3, 4, 5) and label_batch.dtype == torch.int64
    assert label_batch[2, 0, 0].item() == 255 and image_batch[1, 0, 0, 0].item() == 1


def test_to_tensors_rejects_mixed_sizes():
    images = [np.zeros((4, 5, 3), np.uint8), np.zeros((4, 6, 3), np.uint8)]
    labels = [np.zeros((4, 5), np.uint8), np.zeros((4, 6), np.uint8)]
    with pytest.raises(ValueError, match="different sizes"):
        to_tensors(images, labels)


def test_soft_target_is_the_label_then_each_class_x_255():
    label = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    real = soft_target(label, None, 3)
    assert real.shape == (2, 2, 4) and real.dtype == np.uint8
    assert real[..., 0].tolist() == label.tolist()
    assert real[0, 1].tolist() == [1, 0, 255, 0]
    assert real[1, 1].tolist() == [255, 0, 0, 0]  # ignored: no class
    # Probabilities on a 1 x 1 grid, resized to the label's 2 x 2: the same everywhere.
    coarse = np.array([[[0.2]], [[0.3]], [[0.5]]], dtype=np.float16)
    pseudo = soft_target(label, coarse, 3)
    # float16 holds 0.2 as 0.19995 and 0.3 as 0.30005: x 255 = 50.99, 76.51.
    assert pseudo[0, 0].tolist() == [0, 51, 77, 128]


def test_soft_targets_take_the_geometric_transforms_with_the_label():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, (20, 30)).astype(np.uint8)
    target = soft_target(label, None, 3)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    aug = AugmentConfig(scale_min=0.5, scale_max=2.0, flip=True, blur=True, color_jitter=0.2)
    for seed in range(5):
        _, crop = build_train_transform(aug, 24)(image, target, np.random.default_rng(seed))
        assert crop.shape == (24, 24, 4)
        hard, channels = crop[..., 0], crop[..., 1:]
        valid = hard != 255
        # Every valid pixel's one-hot channel still names its hard label; padding is all 255.
        assert (channels.argmax(-1)[valid] == hard[valid]).all()
        assert (channels[valid].sum(-1) == 255).all()
        assert (crop[~valid] == 255).all()
    _, cut = Cutout(0.5)(image, target, np.random.default_rng(1))
    holes = cut[..., 0] == 255
    assert holes.any() and (cut[holes] == 255).all()
    images, labels = to_tensors([image[:4, :4]] * 2, [target[:4, :4]] * 2)
    assert labels.dtype == torch.uint8 and tuple(labels.shape) == (2, 4, 4, 4)
