import pytest

from core.configs import ScheduleConfig
from core.errors import ConfigError
from core.schedule import CropSchedule, from_config, scale_crop_sizes

SIZES = [400, 480, 560, 640, 720, 800]


def test_constant_is_the_largest_crop():
    assert CropSchedule("constant", SIZES, 4).sizes() == [800, 800, 800, 800]


def test_coarse2fine_plus_with_warmup():
    schedule = CropSchedule("coarse2fine+", SIZES, 8, warmup_epochs=2)
    assert schedule.sizes() == [800, 800, 400, 480, 560, 640, 720, 800]


def test_coarse2fine_plus_cycles():
    schedule = CropSchedule("coarse2fine+", SIZES, 8)
    assert schedule.sizes() == [400, 480, 560, 640, 720, 800, 400, 480]


def test_fine2coarse_plus_cycles():
    schedule = CropSchedule("fine2coarse+", SIZES, 8, warmup_epochs=1)
    assert schedule.sizes() == [800, 800, 720, 640, 560, 480, 400, 800]


def test_coarse2fine_blocks():
    schedule = CropSchedule("coarse2fine", SIZES, 12)
    expected = [400, 400, 480, 480, 560, 560, 640, 640, 720, 720, 800, 800]
    assert schedule.sizes() == expected


def test_fine2coarse_uneven_blocks_give_the_extra_epochs_to_the_first_blocks():
    # 8 epochs over 6 sizes: the first two blocks get two epochs, the rest one.
    schedule = CropSchedule("fine2coarse", SIZES, 8)
    assert schedule.sizes() == [800, 800, 720, 720, 640, 560, 480, 400]


def test_coarse2fine_blocks_after_warmup():
    schedule = CropSchedule("coarse2fine", [400, 600, 800], 5, warmup_epochs=2)
    assert schedule.sizes() == [800, 800, 400, 600, 800]


def test_coarse2fine_with_fewer_epochs_than_sizes():
    assert CropSchedule("coarse2fine", SIZES, 3).sizes() == [400, 480, 560]


def test_sizes_are_sorted_and_deduplicated():
    schedule = CropSchedule("coarse2fine+", [800, 400, 400, 600], 4)
    assert schedule.sizes() == [400, 600, 800, 400]


def test_batch_size_keeps_pixels_per_step_about_constant():
    schedule = CropSchedule("coarse2fine+", SIZES, 6, base_batch_size=8)
    # 8 * (800 / crop) ** 2: 32, 22.2, 16.3, 12.5 (half to even -> 12), 9.9, 8.
    assert [schedule.batch_size_at(e) for e in range(6)] == [32, 22, 16, 12, 10, 8]
    assert schedule.at(0) == (400, 32)
    assert schedule.at(2) == (560, 16)


def test_batch_growth_one_grows_the_batch_with_the_side_zero_keeps_it():
    linear = CropSchedule("coarse2fine+", SIZES, 6, base_batch_size=8, batch_growth=1.0)
    # 8 * 800 / crop: 16, 13.3, 11.4, 10, 8.9, 8.
    assert [linear.batch_size_at(e) for e in range(6)] == [16, 13, 11, 10, 9, 8]
    fixed = CropSchedule("coarse2fine+", SIZES, 6, base_batch_size=8, batch_growth=0.0)
    assert [fixed.batch_size_at(e) for e in range(6)] == [8] * 6
    with pytest.raises(ConfigError, match=r"batch_growth must be in \[0, 2\], got 2.5"):
        CropSchedule("constant", SIZES, 6, batch_growth=2.5)


def test_batch_size_is_at_least_one():
    schedule = CropSchedule("constant", [100], 1, base_batch_size=1)
    assert schedule.batch_size_at(0) == 1


def test_epoch_out_of_range():
    schedule = CropSchedule("constant", SIZES, 3)
    with pytest.raises(ValueError, match="epoch 3"):
        schedule.crop_size_at(3)
    with pytest.raises(ValueError, match="epoch -1"):
        schedule.batch_size_at(-1)


def test_invalid_schedules_are_config_errors():
    with pytest.raises(ConfigError, match="unknown crop schedule"):
        CropSchedule("random", SIZES, 3)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        CropSchedule("coarse2fine", SIZES, 3, warmup_epochs=4)
    with pytest.raises(ConfigError, match="crop sizes"):
        CropSchedule("coarse2fine", [], 3)


def test_from_config():
    cfg = ScheduleConfig(kind="fine2coarse+", warmup_epochs=1, base_batch_size=2)
    schedule = from_config(cfg, 3)
    assert schedule.sizes() == [800, 800, 720]
    assert schedule.batch_size_at(2) == 2  # round(2 * (800 / 720) ** 2) = round(2.47)
    grow = from_config(cfg.model_copy(update={"batch_growth": 0.0, "base_batch_size": 3}), 3)
    assert grow.batch_size_at(2) == 3


def test_scale_crop_sizes_for_small_images():
    # CamVid is 360 x 480: factor 360 / 1024 = 0.3515625.
    # 400 -> 140.6 -> 144, 560 -> 196.9 -> 200, 800 -> 281.25 -> 280.
    assert scale_crop_sizes([400, 560, 800], (360, 480)) == [144, 200, 280]


def test_scale_crop_sizes_leaves_large_images_alone():
    assert scale_crop_sizes(SIZES, (1024, 2048)) == SIZES
    assert scale_crop_sizes(SIZES, (2048, 4096)) == SIZES


def test_scale_crop_sizes_has_a_floor_of_16():
    assert scale_crop_sizes([400, 800], (16, 16)) == [16, 16]
