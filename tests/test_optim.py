import pytest
import torch
from torch import nn

from core.optim import build_optimizer, poly_lr


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_build_optimizer_is_sgd_with_paper_settings():
    opt = build_optimizer(_model(), lr=0.02)
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["lr"] == 0.02 and g["momentum"] == 0.9 for g in opt.param_groups)


def test_build_optimizer_decays_only_conv_weights():
    model = _model()
    opt = build_optimizer(model, lr=0.02, weight_decay=1e-4)
    decayed, not_decayed = opt.param_groups
    assert decayed["weight_decay"] == 1e-4 and not_decayed["weight_decay"] == 0.0
    # Two conv weights are decayed; two conv biases + BN weight and bias are not.
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert len(not_decayed["params"]) == 4
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(model.parameters()))


def test_build_optimizer_skips_frozen_parameters():
    model = _model()
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(model, lr=0.1)
    assert all(p is not model[0].weight for g in opt.param_groups for p in g["params"])


def test_poly_lr_matches_formula_by_hand():
    opt = build_optimizer(_model(), lr=0.02)
    sched = poly_lr(opt, total_iters=10, power=0.9)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(12):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.02)
    assert lrs[1] == pytest.approx(0.02 * 0.9**0.9)  # 0.01818...
    assert lrs[5] == pytest.approx(0.02 * 0.5**0.9)  # 0.01072...
    assert lrs[9] == pytest.approx(0.02 * 0.1**0.9)
    assert lrs[10:] == [0.0, 0.0, 0.0]  # clamped past the end
    # Both groups follow the same factor.
    assert opt.param_groups[1]["lr"] == 0.0


def test_poly_lr_state_dict_resumes_at_the_same_iteration():
    opt = build_optimizer(_model(), lr=0.002)
    sched = poly_lr(opt, total_iters=100)
    for _ in range(30):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = build_optimizer(_model(), lr=0.002)
    sched2 = poly_lr(opt2, total_iters=100)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.002 * (1 - 31 / 100) ** 0.9)


def test_poly_lr_rejects_zero_iterations():
    with pytest.raises(ValueError, match="total_iters"):
        poly_lr(build_optimizer(_model(), lr=0.1), total_iters=0)


def test_poly_lr_restarts_at_the_finetune_lr_and_decays_again():
    # Pretrain 10 iterations from 0.02, then finetune 5 from 0.002 (factor 0.1), as the paper's
    # pretrain-on-pseudo-then-finetune does.
    opt = build_optimizer(_model(), lr=0.02)
    sched = poly_lr(opt, total_iters=15, power=0.9, restarts=[(10, 0.1)])
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(16):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[5] == pytest.approx(0.02 * 0.5**0.9)
    assert lrs[9] == pytest.approx(0.02 * 0.1**0.9)
    assert lrs[10] == pytest.approx(0.002)  # the restart
    assert lrs[11] == pytest.approx(0.002 * 0.8**0.9)
    assert lrs[14] == pytest.approx(0.002 * 0.2**0.9)
    assert lrs[15:] == [0.0, 0.0]


def test_poly_lr_refuses_restarts_out_of_order():
    opt = build_optimizer(_model(), lr=0.1)
    with pytest.raises(ValueError, match="restarts"):
        poly_lr(opt, total_iters=10, restarts=[(5, 0.1), (3, 0.1)])
    with pytest.raises(ValueError, match="restarts"):
        poly_lr(opt, total_iters=10, restarts=[(10, 0.1)])
