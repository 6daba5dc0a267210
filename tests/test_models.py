"""Tests for core.models: shapes, parameter counts, backbone weights, the head, an overfit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.errors import CheckpointError, ConfigError, UnknownModelError
from core.models import (
    build_model,
    convert_sync_batchnorm,
    count_parameters,
    list_models,
    model_options,
    reset_head,
    resnet50,
    resnet101,
    resnext50_32x4d,
)
from core.models.resnet import ResNet

# torchvision's published totals minus its fc layer (2048 * 1000 + 1000 = 2,049,000 parameters):
# resnet50 25,557,032; resnet101 44,549,160; resnext50_32x4d 25,028,904.
TORCHVISION_BACKBONE_PARAMETERS = {
    resnet50: 23_508_032,
    resnet101: 42_500_160,
    resnext50_32x4d: 22_979_904,
}


def test_list_models_holds_the_contract_names() -> None:
    assert list_models() == [
        "deeplabv3plus_resnet101",
        "deeplabv3plus_resnet50",
        "deeplabv3plus_resnext50",
        "fast_scnn",
        "pspnet_resnet101",
        "small",
        "smp",
    ]


@pytest.mark.parametrize("name", list_models())
def test_model_returns_logits_at_input_size_and_head_can_be_reset(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=5)
    assert isinstance(model.classifier, nn.Conv2d)
    assert model.classifier.out_channels == 5

    # Odd sizes check that the upsampling lands exactly on the input size.
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        # Train mode with one image: global pooling branches must cope with a 1x1 map.
        train_logits = model.train()(x)
        eval_logits = model.eval()(x)
        reset_head(model, 3)
        reset_logits = model(x)
    assert type(train_logits) is torch.Tensor
    assert train_logits.shape == (1, 5, 65, 97)
    assert eval_logits.shape == (1, 5, 65, 97)
    assert reset_logits.shape == (1, 3, 65, 97)
    assert torch.isfinite(eval_logits).all()


@pytest.mark.parametrize("factory", list(TORCHVISION_BACKBONE_PARAMETERS), ids=lambda f: f.__name__)
def test_backbone_parameter_count_matches_torchvision(factory) -> None:
    assert count_parameters(factory()) == TORCHVISION_BACKBONE_PARAMETERS[factory]


def test_deeplabv3plus_resnet50_has_about_40m_parameters() -> None:
    # Backbone 23.5M + ASPP 15.5M (three 3x3 convs 2048->256 are 4.7M each) + decoder 1.3M.
    model = build_model("deeplabv3plus_resnet50", num_classes=19, output_stride=8)
    assert 38_000_000 < count_parameters(model) < 42_000_000


@pytest.mark.parametrize(
    ("output_stride", "layer4_size"), [(8, (8, 12)), (16, (4, 6)), (32, (2, 3))]
)
def test_output_stride_sets_layer4_size(output_stride: int, layer4_size: tuple[int, int]) -> None:
    backbone = resnet50(output_stride=output_stride).eval()
    with torch.no_grad():
        layer1, layer2, layer3, layer4 = backbone(torch.randn(1, 3, 64, 96))
    assert layer1.shape == (1, 256, 16, 24)
    assert layer2.shape == (1, 512, 8, 12)
    assert layer4.shape == (1, 2048, *layer4_size)


def test_unknown_model_name_raises_and_lists_known_names() -> None:
    with pytest.raises(UnknownModelError, match="'deeplabv4'.*small"):
        build_model("deeplabv4", num_classes=19)


def test_unknown_option_raises_naming_it() -> None:
    with pytest.raises(ConfigError, match="'output_stride'"):
        build_model("small", num_classes=19, output_stride=8)
    with pytest.raises(ConfigError, match="'backbone'"):
        build_model("deeplabv3plus_resnet50", num_classes=19, backbone="resnet50.pth")


def test_unsupported_output_stride_raises() -> None:
    with pytest.raises(ConfigError, match="output_stride must be 8 or 16, got 32"):
        build_model("deeplabv3plus_resnet50", num_classes=19, output_stride=32)


def test_model_options_lists_factory_keywords() -> None:
    assert model_options("deeplabv3plus_resnet50") == ["output_stride", "backbone_weights"]
    assert model_options("pspnet_resnet101") == ["output_stride", "backbone_weights"]
    assert model_options("small") == []


def _save_torchvision_style(backbone: ResNet, path: Path, drop_num_batches: bool = False) -> dict:
    """Saves ``backbone`` as torchvision would: with an ImageNet fc layer, as a plain state dict."""
    state = backbone.state_dict()
    # Random running stats, so that the round trip also checks BatchNorm buffers.
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var")):
            value.copy_(torch.rand_like(value) + 0.5)
    if drop_num_batches:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"] = torch.randn(1000, 2048)
    state["fc.bias"] = torch.randn(1000)
    torch.save(state, path)
    return state


def test_backbone_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "resnet50.pth"
    saved = _save_torchvision_style(resnet50(), path)

    torch.manual_seed(1)
    model = build_model("deeplabv3plus_resnet50", num_classes=19, backbone_weights=path)
    loaded = model.backbone.state_dict()
    assert set(loaded) == {k for k in saved if not k.startswith("fc.")}
    for key, value in loaded.items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0, msg=key)


def test_backbone_weights_without_num_batches_tracked_load(tmp_path: Path) -> None:
    # torchvision's older ImageNet files carry no num_batches_tracked buffers.
    path = tmp_path / "resnet50_old.pth"
    saved = _save_torchvision_style(resnet50(), path, drop_num_batches=True)
    backbone = resnet50(weights=path)
    torch.testing.assert_close(backbone.layer4[2].conv3.weight, saved["layer4.2.conv3.weight"])


def test_mismatched_backbone_weights_raise_naming_the_file(tmp_path: Path) -> None:
    # A ResNet-50 file has the same key names as ResNeXt-50 but other shapes.
    resnet_file = tmp_path / "resnet50.pth"
    _save_torchvision_style(resnet50(), resnet_file)
    with pytest.raises(CheckpointError, match="wrong shape.*layer1.0.conv1.weight") as error:
        resnext50_32x4d(weights=resnet_file)
    assert str(resnet_file) in str(error.value)

    # A whole-model checkpoint has prefixed keys, none of which match.
    prefixed_file = tmp_path / "prefixed.pth"
    torch.save({f"backbone.{k}": v for k, v in torch.load(resnet_file).items()}, prefixed_file)
    with pytest.raises(CheckpointError, match="missing keys.*unexpected keys"):
        resnet50(weights=prefixed_file)

    with pytest.raises(CheckpointError, match="not found"):
        build_model("pspnet_resnet101", 19, backbone_weights=tmp_path / "absent.pth")

    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        resnet50(weights=not_a_state_dict)


def _rectangles_image() -> tuple[torch.Tensor, torch.Tensor]:
    """A 64x128 image of four classes: background and three rectangles, colored with noise."""
    label = np.zeros((64, 128), dtype=np.int64)
    label[8:40, 10:50] = 1
    label[30:60, 70:120] = 2
    label[44:58, 20:44] = 3  # overlaps rectangle 1, so it has a corner cut by class 3
    colors = np.array([[40, 40, 40], [200, 60, 60], [60, 200, 60], [60, 60, 200]], np.float32)
    noise = np.random.default_rng(0).normal(0, 20, size=(64, 128, 3))
    image = (colors[label] + noise - 128) / 64
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    return x, torch.from_numpy(label)[None]


def _miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    ious = []
    for c in range(num_classes):
        intersection = ((pred == c) & (target == c)).sum().item()
        union = ((pred == c) | (target == c)).sum().item()
        ious.append(intersection / union)
    return float(np.mean(ious))


def test_small_model_overfits_one_image() -> None:
    torch.manual_seed(0)
    x, target = _rectangles_image()
    model = build_model("small", num_classes=4)
    with torch.no_grad():
        assert _miou(model.eval()(x).argmax(1), target, 4) < 0.5

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(200):
        loss = nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    assert _miou(pred, target, 4) > 0.9


def test_reset_head_keeps_the_rest_of_the_model() -> None:
    model = build_model("small", num_classes=4)
    stem_before = model.stem[0][0].weight.clone()
    reset_head(model, 7)
    assert model.classifier.out_channels == 7
    torch.testing.assert_close(model.stem[0][0].weight, stem_before, rtol=0, atol=0)
    with pytest.raises(TypeError, match="no `classifier`"):
        reset_head(nn.Conv2d(3, 3, 1), 7)


def test_count_parameters_counts_elements() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 3, bias=False))
    assert count_parameters(model) == (3 * 4 + 4) + 4 * 2 * 9
    model[0].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 4 * 2 * 9


def test_convert_sync_batchnorm_replaces_every_batchnorm() -> None:
    model = build_model("small", num_classes=4)
    n_batchnorm = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    model = convert_sync_batchnorm(model)
    assert n_batchnorm == 7
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules()) == n_batchnorm
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
