import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from core.errors import DataError, SizeMismatchError
from core.evaluate import evaluate
from core.inference import predict, predict_batch, window_starts
from core.labels import declare_label_space

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def rgb_model() -> nn.Module:
    """Logit of class c = normalized channel c, so pure red/green/blue pixels are class 0/1/2."""
    conv = nn.Conv2d(3, 3, kernel_size=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    return conv.eval()


def random_pointwise_model(num_classes: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Conv2d(3, num_classes, kernel_size=1).eval()


def color_blocks() -> tuple[np.ndarray, np.ndarray]:
    """A 32x48 image of 16x16 blocks of pure colors, and the expected label of each pixel."""
    layout = np.array([[0, 1, 2], [2, 0, 1]])
    label = np.kron(layout, np.ones((16, 16), dtype=np.int64)).astype(np.uint8)
    image = np.array([RED, GREEN, BLUE], dtype=np.uint8)[label]
    return image, label


def random_image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["whole", "slide", "multiscale"])
def test_every_mode_finds_the_colors(mode):
    image, expected = color_blocks()
    label, confidence = predict(rgb_model(), image, mode=mode, crop=20)
    assert label.dtype == np.uint8 and label.shape == (32, 48)
    assert confidence.dtype == np.float32 and confidence.shape == (32, 48)
    assert np.array_equal(label, expected)


def test_window_starts_cover_the_length_and_end_at_it():
    assert window_starts(100, crop=40, stride=27) == [0, 27, 54, 60]
    assert window_starts(94, crop=40, stride=27) == [0, 27, 54]
    assert window_starts(40, crop=40, stride=27) == [0]
    assert window_starts(10, crop=40, stride=27) == [0]


def test_slide_equals_whole_for_a_pointwise_model():
    model, image = random_pointwise_model(), random_image((45, 70))
    whole = predict(model, image, mode="whole")
    slide = predict(model, image, mode="slide", crop=16)  # 4 x 5 overlapping windows
    assert np.array_equal(slide[0], whole[0])
    assert_close(slide[1], whole[1])


def test_slide_on_an_image_smaller_than_the_crop():
    model, image = random_pointwise_model(), random_image((10, 13))
    label, confidence = predict(model, image, mode="slide", crop=32)
    assert label.shape == (10, 13)
    whole = predict(model, image, mode="whole")
    assert np.array_equal(label, whole[0])
    assert_close(confidence, whole[1])


def test_slide_on_an_image_smaller_than_the_crop_in_one_dimension():
    model, image = random_pointwise_model(), random_image((10, 50))
    label, _ = predict(model, image, mode="slide", crop=16)
    assert np.array_equal(label, predict(model, image, mode="whole")[0])


def test_flip_averaging_of_a_pointwise_model_equals_no_flip():
    # If the mirrored prediction were not mirrored back, the average would mix each pixel with its
    # mirror image and differ on this random image.
    model, image = random_pointwise_model(), random_image((20, 30))
    flipped = predict(model, image, mode="multiscale", scales=(1.0,), flip=True, crop=64)
    plain = predict(model, image, mode="multiscale", scales=(1.0,), flip=False, crop=64)
    assert np.array_equal(flipped[0], plain[0])
    assert_close(flipped[1], plain[1])
    assert_close(plain[1], predict(model, image, mode="whole")[1])


class ConstantPerCall(nn.Module):
    """Logits (0, b) everywhere, b taken in turn from ``class1_logits``; records input shapes."""

    def __init__(self, class1_logits):
        super().__init__()
        self.class1_logits = list(class1_logits)
        self.input_shapes = []

    def forward(self, x):
        b = self.class1_logits[len(self.input_shapes) % len(self.class1_logits)]
        self.input_shapes.append(tuple(x.shape))
        logits = torch.tensor([0.0, b]).view(1, 2, 1, 1)
        return logits.expand(x.shape[0], 2, *x.shape[2:])


def test_multiscale_averages_softmax_probabilities_of_every_version():
    # Versions: scale 0.5, 0.5 mirrored, 1.0, 1.0 mirrored. Their class-1 probabilities are
    # sigmoid(0) = 0.5 and sigmoid(ln 3) = 0.75 alternately, so the average is 0.625 (averaging
    # logits instead would give sigmoid(ln(3) / 2) = 0.634).
    model = ConstantPerCall([0.0, np.log(3.0)])
    label, confidence = predict(
        model, random_image((12, 18)), mode="multiscale", scales=(0.5, 1.0), flip=True, crop=32
    )
    # Each version fits one 32x32 window (padded).
    assert model.input_shapes == [(1, 3, 32, 32)] * 4
    assert np.all(label == 1)
    assert_close(confidence, np.full((12, 18), 0.625, dtype=np.float32))


def test_multiscale_slides_over_scaled_images_larger_than_the_crop():
    model = ConstantPerCall([1.0])
    predict(model, random_image((20, 30)), mode="multiscale", scales=(2.0,), flip=False, crop=16)
    # 40 x 60 at crop 16, stride 11: rows start at 0, 11, 22, 24 and columns at 0, 11, 22, 33, 44.
    assert model.input_shapes == [(1, 3, 16, 16)] * (4 * 5)


def test_confidence_lies_between_one_over_c_and_one():
    model, image = random_pointwise_model(num_classes=4), random_image((16, 16))
    for mode in ("whole", "slide", "multiscale"):
        label, confidence = predict(model, image, mode=mode, crop=8)
        assert confidence.min() >= 1 / 4 - 1e-6
        assert confidence.max() <= 1 + 1e-6
        assert label.max() < 4


def test_a_model_with_zero_logits_is_uniformly_unsure():
    model = nn.Conv2d(3, 4, kernel_size=1)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    _, confidence = predict(model.eval(), random_image((8, 8)), mode="slide", crop=5)
    assert_close(confidence, np.full((8, 8), 0.25, dtype=np.float32))


def test_predict_batch_equals_predict_per_image():
    model = random_pointwise_model()
    images = np.stack([random_image((12, 20), seed=s) for s in range(3)])
    labels, confidence = predict_batch(model, torch.from_numpy(images), mode="slide", crop=8)
    assert labels.dtype == torch.uint8 and labels.shape == (3, 12, 20)
    assert confidence.dtype == torch.float32
    for i in range(3):
        label, conf = predict(model, images[i], mode="slide", crop=8)
        assert np.array_equal(labels[i].numpy(), label)
        assert_close(confidence[i].numpy(), conf)
    labels += 1  # the results are ordinary tensors, not read-only inference tensors


def test_bf16_and_channels_last_give_the_same_labels():
    image, expected = color_blocks()
    label, confidence = predict(rgb_model(), image, bf16=True)
    assert np.array_equal(label, expected)
    assert confidence.dtype == np.float32
    label, _ = predict(rgb_model(), image, mode="slide", crop=20, channels_last=True)
    assert np.array_equal(label, expected)


def test_read_only_and_mirrored_images_are_accepted():
    image, expected = color_blocks()
    image.setflags(write=False)
    assert np.array_equal(predict(rgb_model(), image)[0], expected)
    mirrored = image[:, ::-1]
    assert np.array_equal(predict(rgb_model(), mirrored)[0], expected[:, ::-1])


def test_bad_arguments_are_rejected():
    image = random_image((8, 8))
    with pytest.raises(ValueError, match="unknown inference mode 'tiles'"):
        predict(rgb_model(), image, mode="tiles")
    with pytest.raises(ValueError, match="uint8"):
        predict(rgb_model(), image.astype(np.float32))
    with pytest.raises(ValueError, match="positive scales"):
        predict(rgb_model(), image, mode="multiscale", scales=())


def test_evaluate_counts_every_labeled_pixel():
    image, expected = color_blocks()  # 32x48: 512 pixels each of red, green, blue
    label = expected.copy()
    label[:16, :16] = 1  # the top-left red block is labeled green: 256 misses
    label[16:, 32:] = 255  # a green block is ignored
    space = declare_label_space("rgb", ["red", "green", "blue"])
    model = rgb_model().train()
    dataset = [(image, label, "a.png"), (image, expected, "b.png")]
    matrix = evaluate(model, dataset, space, mode="slide", crop=20)
    # Rows = target. Image a: red 256 right, green labeled on red 256, green 256, blue 512.
    # Image b: 512 of each, all right.
    assert matrix.matrix.tolist() == [[768, 0, 0], [256, 768, 0], [0, 0, 1024]]
    assert model.training  # evaluate restores the mode it found


def test_evaluate_rejects_unlabeled_and_mismatched_samples():
    image, expected = color_blocks()
    space = declare_label_space("rgb", ["red", "green", "blue"])
    with pytest.raises(DataError, match="x.png: has no label"):
        evaluate(rgb_model(), [(image, None, "x.png")], space)
    with pytest.raises(SizeMismatchError, match="y.png: label is 47x32 but the image is 48x32"):
        evaluate(rgb_model(), [(image, expected[:, :47], "y.png")], space)
