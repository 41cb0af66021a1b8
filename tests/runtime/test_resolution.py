"""Request sizes: binning (960x720 works), strict sizes with helpful errors, bad values."""

from __future__ import annotations

import pytest
import torch

from sana_deploy.errors import ShapeError
from sana_deploy.models.config import get_preset
from sana_deploy.runtime.resolution import bin_size, plan_size, resize_and_crop

TINY = get_preset("sana-tiny")


def test_binning_maps_to_nearest_bucket_and_back():
    plan = plan_size(960, 720, TINY, binning=True)
    assert (plan.height, plan.width) == (1152, 896) and (plan.out_height, plan.out_width) == (960, 720)
    assert plan.height % 32 == 0 and plan.width % 32 == 0 and plan.resized
    assert plan_size(None, None, TINY).latent_size == (32, 32)
    assert bin_size(4096, 4096, 4096) == (4096, 4096)
    assert plan_size(960, 720, get_preset("sana-tiny-pe")).height % 32 == 0  # 4K tier table


def test_no_binning_errors_name_nearest_valid_sizes():
    with pytest.raises(ShapeError) as e:
        plan_size(960, 720, TINY, binning=False)
    msg = str(e.value)
    assert "960x704" in msg and "960x736" in msg and "multiples of 32" in msg
    assert plan_size(960, 736, TINY, binning=False).latent_size == (30, 23)


@pytest.mark.parametrize(
    "bad,match",
    [
        (0, "positive"),
        (-64, "positive"),
        (512.5, "whole number"),
        ("512", "integer"),
        (True, "integer"),
        (None.__class__, "integer"),
        (1 << 20, "largest"),
    ],
)
def test_bad_sizes_are_clear_errors(bad, match):
    for binning in (True, False):
        with pytest.raises(ShapeError, match=match):
            plan_size(bad, 512, TINY, binning=binning)


def test_float_integer_sizes_are_accepted():
    assert plan_size(512.0, 512, TINY, binning=False).height == 512


def test_resize_and_crop_covers_then_centers():
    x = torch.arange(2 * 3 * 64 * 32, dtype=torch.float32).reshape(2, 3, 64, 32)
    y = resize_and_crop(x, 30, 30)
    assert y.shape == (2, 3, 30, 30)
