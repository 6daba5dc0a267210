import cv2
import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from core import checkpoint as checkpoint_module
from core.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    load_model,
    save_checkpoint,
    strip_wrapper_prefixes,
)
from core.configs import DataSource
from core.errors import CheckpointError
from core.evaluate import evaluate_checkpoint
from core.labels import CAMVID, CITYSCAPES, declare_label_space
from core.models import build_model


def trained_small_model(num_classes: int = 19):
    """A "small" model after one SGD step: weights, BN statistics and momentum are non-trivial."""
    torch.manual_seed(0)
    model = build_model("small", num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1 - it / 10)
    loss = model(torch.randn(2, 3, 32, 32)).mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    return model.eval(), optimizer, scheduler


def test_round_trip_restores_model_outputs_and_training_state(tmp_path):
    model, optimizer, scheduler = trained_small_model()
    path = save_checkpoint(
        tmp_path / "run" / "epoch_3.pt",
        model,
        "small",
        {},
        CITYSCAPES,
        epoch=3,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config={"run_name": "t", "lr": 0.1},
        extra={"miou": 0.5},
    )
    assert path == tmp_path / "run" / "epoch_3.pt"
    assert [p.name for p in path.parent.iterdir()] == ["epoch_3.pt"]  # no temporary file left

    loaded, label_space, ckpt = load_model(path)
    assert label_space == CITYSCAPES
    assert not loaded.training
    x = torch.randn(1, 3, 24, 40)
    with torch.no_grad():
        assert_close(loaded(x), model(x))
    assert ckpt["format_version"] == FORMAT_VERSION
    assert (ckpt["epoch"], ckpt["model_name"], ckpt["model_options"]) == (3, "small", {})
    assert ckpt["config"] == {"run_name": "t", "lr": 0.1}
    assert ckpt["extra"] == {"miou": 0.5}

    resumed_optimizer = torch.optim.SGD(loaded.parameters(), lr=0.1, momentum=0.9)
    resumed_optimizer.load_state_dict(ckpt["optimizer"])
    first = next(iter(optimizer.state.values()))["momentum_buffer"]
    assert_close(next(iter(resumed_optimizer.state.values()))["momentum_buffer"], first)
    assert ckpt["lr_scheduler"]["last_epoch"] == 1


def test_ddp_and_compile_prefixes_are_stripped(tmp_path):
    assert strip_wrapper_prefixes({"module._orig_mod.a.weight": 1, "b.module.c": 2}) == {
        "a.weight": 1,
        "b.module.c": 2,
    }

    class Wrapper(nn.Module):  # stands in for DistributedDataParallel: keys become "module.*"
        def __init__(self, module):
            super().__init__()
            self.module = module

    model, _, _ = trained_small_model()
    assert next(iter(Wrapper(model).state_dict())).startswith("module.")
    path = save_checkpoint(tmp_path / "ddp.pt", Wrapper(model), "small", {}, CITYSCAPES, epoch=1)
    assert not any(key.startswith("module.") for key in load_checkpoint(path)["model"])
    loaded, _, _ = load_model(path)
    assert_close(loaded.classifier.weight, model.classifier.weight)


def test_a_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model, _, _ = trained_small_model()
    path = save_checkpoint(tmp_path / "last.pt", model, "small", {}, CITYSCAPES, epoch=1)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, "small", {}, CITYSCAPES, epoch=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nothing.pt"
    with pytest.raises(CheckpointError, match="no such checkpoint file") as info:
        load_checkpoint(path)
    assert info.value.path == str(path)


@pytest.mark.parametrize("content", [b"", b"this is not a checkpoint", b"PK\x03\x04garbage"])
def test_corrupt_file_names_the_path(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as info:
        load_model(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)


def test_truncated_checkpoint_is_rejected(tmp_path):
    model, _, _ = trained_small_model()
    path = save_checkpoint(tmp_path / "cut.pt", model, "small", {}, CITYSCAPES, epoch=1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_a_bare_state_dict_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pth"
    state = nn.Conv2d(3, 2, 1).state_dict()
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys \['format_version', 'model', "):
        load_checkpoint(path)
    # The torchvision references' format: {model, optimizer, lr_scheduler, epoch, args}.
    torch.save({"model": state, "optimizer": None, "lr_scheduler": None, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=r"missing keys \['format_version', 'model_name', "):
        load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(path)


def test_other_format_version_is_rejected(tmp_path):
    model, _, _ = trained_small_model()
    path = save_checkpoint(tmp_path / "v.pt", model, "small", {}, CITYSCAPES, epoch=1)
    ckpt = load_checkpoint(path)
    torch.save({**ckpt, "format_version": 2}, path)
    with pytest.raises(CheckpointError, match="format_version 2 is not supported"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_model(tmp_path):
    model, _, _ = trained_small_model(num_classes=19)
    path = save_checkpoint(tmp_path / "c.pt", model, "small", {}, CITYSCAPES, epoch=1)
    ckpt = load_checkpoint(path)
    torch.save({**ckpt, "label_space": CAMVID.to_dict()}, path)  # 11 classes, 19-class weights
    with pytest.raises(CheckpointError, match="weights do not fit model 'small'"):
        load_model(path)
    torch.save({**ckpt, "model_name": "no_such_net"}, path)
    with pytest.raises(
        CheckpointError, match="cannot build the model: unknown model 'no_such_net'"
    ):
        load_model(path)


def constant_small_model(class_index: int, num_classes: int) -> nn.Module:
    """A "small" model that predicts ``class_index`` everywhere (all weights 0 but one bias)."""
    model = build_model("small", num_classes)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.classifier.bias[class_index] = 5.0
    return model.eval()


def test_evaluate_checkpoint_on_a_paired_folder(tmp_path):
    classes = ["ground", "tree", "sky"]
    # Two 8x8 images; labels: top half sky (2), bottom half ground (0); image b also has one
    # row of ignored pixels (255). The model says "sky" everywhere.
    for name, ignored_rows in (("a", 0), ("b", 1)):
        label = np.zeros((8, 8), dtype=np.uint8)
        label[:4] = 2
        label[8 - ignored_rows :] = 255
        for folder, image in (("images", np.zeros((8, 8, 3), np.uint8)), ("labels", label)):
            (tmp_path / folder).mkdir(exist_ok=True)
            assert cv2.imwrite(str(tmp_path / folder / f"{name}.png"), image)
    space = declare_label_space("mine", classes)
    path = save_checkpoint(
        tmp_path / "m.pt", constant_small_model(2, num_classes=3), "small", {}, space, epoch=1
    )
    source = DataSource(format="paired", root=str(tmp_path), classes=classes)
    result = evaluate_checkpoint(path, source)
    # sky: tp 64, fp 32 + 24 ground pixels -> 64 / 120; ground: tp 0 -> 0; tree: absent -> None.
    assert result["per_class_iou"] == pytest.approx({"ground": 0.0, "tree": None, "sky": 64 / 120})
    assert result["miou"] == pytest.approx(64 / 120 / 2)
    assert result["pixel_accuracy"] == pytest.approx(64 / 120)
    assert result["n_images"] == 2

    other = DataSource(format="paired", root=str(tmp_path), classes=["ground", "sky", "tree"])
    with pytest.raises(CheckpointError, match="differ from the data's classes"):
        evaluate_checkpoint(path, other)
