"""Profiles as value objects: ranges from Sana's aspect-ratio buckets, coverage, static shapes, bad input."""

import pytest

from sana_deploy.contract import bucket_sizes
from sana_deploy.engines import PROFILE_BASES, Profile, parse_profiles
from sana_deploy.engines.profiles import ShapeTuple, profile_for_request
from sana_deploy.errors import ShapeError


@pytest.mark.parametrize("base", PROFILE_BASES)
def test_profile_covers_every_bucket_of_its_base(base):
    p = Profile.from_base(base, max_batch=2)
    buckets = bucket_sizes(base)
    assert len(buckets) >= 30  # diffusers' tables: 33 (512/1024) or 40 (2048/4096) aspect ratios
    for h, w in buckets:
        assert p.covers(h, w, 1) and p.covers(w, h, 4), (h, w)
    assert not p.covers(base, base, 5)  # 2 x max-batch is the limit
    assert p.axes["latent_h"].opt == p.axes["latent_w"].opt == base // 32


def test_ranges_1024():
    p = Profile.from_base(1024)
    assert p.axes["batch"].to_json() == [1, 2, 2]  # CFG doubles batch 1
    assert p.axes["latent_h"].to_json() == [16, 32, 64]  # 512..2048 px buckets
    assert p.covers(1024, 768, 2) and p.covers(512, 2048, 1)
    assert not p.covers(1024, 1000, 1)  # not a multiple of 32
    assert not p.covers(4096, 4096, 1)
    assert p.covers(8192, 8192, 2, component="text_encoder")  # the text encoder ignores resolution


def test_input_shapes_resolve_against_manifest_patterns():
    p = Profile.from_base(2048, max_batch=2)
    shapes = p.input_shapes(
        [
            {"name": "latent", "shape": ["batch", 32, "latent_h", "latent_w"]},
            {"name": "encoder_attention_mask", "shape": ["batch", "text_len"]},
        ]
    )
    assert shapes["latent"].min == (1, 32, 32, 32) and shapes["latent"].max == (4, 32, 128, 128)
    assert shapes["latent"].opt == (4, 32, 64, 64)
    assert shapes["encoder_attention_mask"].max == (4, 300)


def test_static_profile_is_one_size_with_a_batch_range():
    """Static: one image size and fixed text lengths; the batch stays 1 .. 2 x max-batch so the same profile
    covers the transformer's CFG batch and the DC-AE decode at batch 1."""
    p = Profile.from_base(1024, max_batch=1, static=True)
    assert p.static and p.name == "1024-static"
    assert p.axes["batch"] == ShapeTuple(1, 2, 2)
    assert all(p.axes[a].min == p.axes[a].max for a in ("latent_h", "latent_w", "text_len", "seq"))
    assert p.covers(1024, 1024, 2) and p.covers(1024, 1024, 1)
    assert p.covers(1024, 1024, 1, component="vae")
    assert not p.covers(1024, 768, 2) and not p.covers(1024, 1024, 3)
    assert p.describe("vae") == "1024 x 1024 px, batch 1-2"
    assert Profile.from_json(p.to_json()) == p and hash(Profile.from_json(p.to_json())) == hash(p)
    p4 = Profile.from_base(512, max_batch=2, static=True)
    assert p4.axes["batch"] == ShapeTuple(1, 4, 4) and p4.covers(512, 512, 3) and not p4.covers(512, 512, 5)


def test_exact_profile():
    p = Profile.exact(384, 640, 4)
    assert p.static and p.name == "384x640-b4" and p.axes["batch"] == ShapeTuple(1, 4, 4)
    assert p.covers(384, 640, 1) and p.covers(384, 640, 4) and not p.covers(640, 384, 1)
    with pytest.raises(ShapeError, match="multiple of 32"):
        Profile.exact(500, 512, 2)
    with pytest.raises(ShapeError, match="batch must be a positive integer"):
        Profile.exact(512, 512, 0)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("1000", "No profile 1000; valid profiles are 512, 1024, 2048, 4096"),
        ("abc", "'abc' is not a number"),
        ("", "No profiles"),
    ],
)
def test_bad_profiles_say_what_is_valid(spec, message):
    with pytest.raises(ShapeError, match=message):
        parse_profiles(spec)


@pytest.mark.parametrize("max_batch", [0, -1, 33, "2"])
def test_bad_max_batch(max_batch):
    with pytest.raises(ShapeError, match="max-batch must be an integer from 1 to 32"):
        Profile.from_base(1024, max_batch=max_batch)


def test_parse_keeps_order_and_drops_duplicates():
    assert parse_profiles("2048, 1024,2048") == [2048, 1024]


def test_profile_for_request_picks_the_closest_covering_base():
    assert profile_for_request(384, 640, 2).name == "512"
    assert profile_for_request(768, 1024, 2).name == "1024"  # covered by 512 too, but 1024's opt is closer
    assert profile_for_request(2048, 2048, 2).name == "2048"
    assert profile_for_request(4096, 2048, 3).axes["batch"].max == 4
    with pytest.raises(ShapeError, match="No profile covers"):
        profile_for_request(1000, 1000, 1)
