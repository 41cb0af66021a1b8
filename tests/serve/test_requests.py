"""Request parsing and validation: every bad request is a 4xx with a message naming what to fix."""

from __future__ import annotations

import json

import pytest

from sana_deploy.serve.requests import RequestError, parse_body
from sana_deploy.serve.settings import default_settings, parse_sizes

SETTINGS = default_settings("sana-tiny", sizes="256x256,512x256", max_n=2, max_prompt_chars=50)


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_valid_request_defaults():
    r = parse_body(body(prompt="a cat"), SETTINGS)
    assert (r.prompt, r.n, r.width, r.height) == ("a cat", 1, 256, 256)
    r = parse_body(body(prompt="x", size="512x256", n=2, seed=7, response_format="b64_json"), SETTINGS)
    assert (r.width, r.height, r.n, r.seed) == (512, 256, 2, 7)


@pytest.mark.parametrize(
    "raw, status, needle",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (body(prompt=""), 400, "prompt"),
        (body(prompt=3), 400, "prompt"),
        (body(prompt="x" * 51), 400, "limit is 50"),
        (body(prompt="a", size="1024x1024"), 400, "not served here"),
        (body(prompt="a", size="big"), 400, "WIDTHxHEIGHT"),
        (body(prompt="a", n=3), 400, "from 1 to 2"),
        (body(prompt="a", n=0), 400, "'n'"),
        (body(prompt="a", n=True), 400, "'n'"),
        (body(prompt="a", response_format="url"), 400, "b64_json"),
        (body(prompt="a", guidance_scale="high"), 400, "guidance_scale"),
        (body(prompt="a", seed=-1), 400, "seed"),
        (body(prompt="a", colour="red"), 400, "Unknown field"),
        (b" " * (SETTINGS.max_body_bytes + 1), 413, "limit"),
    ],
)
def test_bad_requests(raw, status, needle):
    with pytest.raises(RequestError) as info:
        parse_body(raw, SETTINGS)
    assert info.value.status == status
    assert needle in info.value.message
    assert info.value.to_json()["error"]["message"] == info.value.message


def test_default_settings_serve_every_size_generate_accepts():
    s = default_settings("sana-tiny")
    assert s.sizes is None and s.default_size == (1024, 1024)
    for size in ("256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "1792x1024", "1024x1792", "1000x700"):
        r = parse_body(body(prompt="a", size=size), s)
        assert f"{r.width}x{r.height}" == size
    for size in ("0x512", "512x-1", "512x20000"):
        with pytest.raises(RequestError, match="not served here"):
            parse_body(body(prompt="a", size=size), s)


def test_profiles_allow_their_buckets_only():
    s = default_settings("sana-tiny", bases=[1024])
    assert (1024, 1024) in s.sizes and s.default_size == (1024, 1024)
    assert all(w % 32 == 0 and h % 32 == 0 for w, h in s.sizes)
    assert any(w != h for w, h in s.sizes)  # non-square aspect-ratio buckets are served too
    with pytest.raises(RequestError, match="not served here"):
        parse_body(body(prompt="a", size="1000x700"), s)


def test_parse_sizes_takes_any_positive_size():
    assert parse_sizes("1000x700, 512x512") == ((1000, 700), (512, 512))
    with pytest.raises(Exception, match="positive sides"):
        parse_sizes("0x1000")
