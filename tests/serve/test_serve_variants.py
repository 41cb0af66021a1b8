"""img2img, ControlNet, PAG and Sana-Sprint through ``serve``: each response equals the one pipeline call with the
same seed and options, requests share a call only when their images and options are equal, every bad variant
request is a 4xx naming what to change (and the server serves the next one), and a bad ``--controlnet`` stops
start-up."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from sana_deploy.errors import SanaDeployError
from sana_deploy.models.config import PRESETS
from sana_deploy.models.controlnet import random_controlnet, save_controlnet
from sana_deploy.runtime.variants import VariantError
from sana_deploy.serve.http import create_app
from sana_deploy.serve.requests import RequestError, parse_body
from sana_deploy.serve.service import ImageService
from sana_deploy.serve.settings import check_server, default_settings
from sana_deploy.serve.shared import batch_key, generate_batch, load_pipeline
from tests.serve.conftest import FakePipeline, ThreadedServer

SIZE = 256
STEPS = 2
SEED = 11


def _png(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def _picture(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A smooth RGB test image (a gradient plus seeded noise), not the request's size: the pipeline resizes it."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([x * 255 / size[0], y * 255 / size[1], (x + y) * 127 / sum(size)], -1)
    return Image.fromarray(np.clip(base + g.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


WIDE_CONFIG = {
    "_class_name": "SanaControlNetModel", "num_attention_heads": 3, "attention_head_dim": 32, "num_layers": 1,
    "cross_attention_dim": 96, "caption_channels": 64, "num_cross_attention_heads": 2, "cross_attention_head_dim": 48,
}  # fmt: skip
START = _picture(1)
EDGES = _picture(2, (64, 64))


@pytest.fixture(scope="module")
def controlnet_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("controlnet") / "tiny-cn"
    save_controlnet(random_controlnet(PRESETS["sana-tiny"], num_layers=1, seed=3), folder)
    return folder


@pytest.fixture(scope="module")
def server(controlnet_dir, tmp_path_factory):
    """sana-tiny on torch with a ControlNet, as ``sana-deploy serve --controlnet DIR --steps 2`` builds it."""
    engines = tmp_path_factory.mktemp("no-engines")
    pipe = load_pipeline("sana-tiny", engine_dir=engines, backend="torch", controlnet=controlnet_dir)
    settings = default_settings("sana-tiny", num_inference_steps=STEPS, controlnet=True)
    service = ImageService(pipe, settings)
    srv = ThreadedServer(create_app(service))
    yield srv, pipe
    srv.stop()
    service.close()


def _post(url: str, body: dict) -> httpx.Response:
    return httpx.post(
        url + "/v1/images/generations", json={"size": f"{SIZE}x{SIZE}", "seed": SEED, **body}, timeout=300
    )


def _image(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["data"][0]["b64_json"])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def _direct(pipe, prompt: str = "a red kite", guidance: float = 4.5, **options) -> np.ndarray:  # noqa: ANN001
    """The single pipeline call the request stands for (``generate``'s call with the same seed)."""
    out = pipe(
        [prompt], negative_prompt="", height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=guidance,
        generator=[torch.Generator().manual_seed(SEED)], num_images_per_prompt=1, **options,
    )  # fmt: skip
    return np.asarray(out.images[0].convert("RGB")).astype(np.int16)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert int(np.abs(a - b).max()) <= 1  # within 1/255 (in practice: equal)


def test_img2img_controlnet_and_pag_equal_the_pipeline_call(server) -> None:
    srv, pipe = server
    plain = _image(_post(srv.url, {"prompt": "a red kite"}))
    cases = [
        ({"image": _png(START), "strength": 0.7}, {"image": START, "strength": 0.7}),
        ({"image": "data:image/jpeg;base64," + _png(START, "JPEG")}, None),  # default strength 0.6, JPEG
        (
            {"control_image": _png(EDGES), "control_scale": 0.8},
            {"control_image": EDGES, "controlnet_conditioning_scale": 0.8},
        ),
        ({"pag_scale": 2.0, "pag_layers": ["transformer_blocks.1"]}, {"pag_scale": 2.0, "pag_applied_layers": [1]}),
        ({"pag_scale": 1.5, "pag_adaptive_scale": 0.5}, {"pag_scale": 1.5, "pag_adaptive_scale": 0.5}),
    ]  # fmt: skip
    for body, options in cases:
        got = _image(_post(srv.url, {"prompt": "a red kite", **body}))
        if options is None:  # the JPEG as the server decodes it
            jpeg = Image.open(io.BytesIO(base64.b64decode(body["image"].split(",", 1)[1]))).convert("RGB")
            options = {"image": jpeg, "strength": 0.6}
        _same(got, _direct(pipe, **options))
        assert not np.array_equal(got, plain), body.keys()  # the option changed the image


def test_requests_share_a_call_only_with_equal_images_and_options() -> None:
    settings = default_settings("sana-tiny", num_inference_steps=STEPS, controlnet=True)

    def req(**fields):  # noqa: ANN003, ANN202
        return parse_body(json.dumps({"prompt": "a", "seed": 1, **fields}).encode(), settings)

    def key(r):  # noqa: ANN001, ANN202
        return batch_key(r, lambda w, h: (w, h))

    a, a2 = req(image=_png(START)), req(image="data:image/png;base64," + _png(START), prompt="b")
    assert key(a) == key(a2)  # the same pixels: one call
    different = [
        req(image=_png(EDGES)), req(image=_png(START), strength=0.3), req(control_image=_png(START)),
        req(control_image=_png(START), control_scale=0.5), req(pag_scale=1.0), req(pag_scale=2.0),
        req(pag_scale=1.0, pag_layers=[1]), req(pag_scale=1.0, pag_adaptive_scale=0.1), req(),
    ]  # fmt: skip
    keys = [key(r) for r in [a, *different]]
    assert len(set(keys)) == len(keys)
    assert key(req(pag_layers=None)) == key(req(pag_adaptive_scale=0))  # no PAG: its other fields do not split

    class Recording(FakePipeline):
        def __call__(self, prompt, **kwargs):  # noqa: ANN001, ANN003, ANN204
            options = {k: kwargs.pop(k) for k in list(kwargs) if k not in ("negative_prompt", "height", "width",
                       "num_inference_steps", "guidance_scale", "generator", "num_images_per_prompt")}  # fmt: skip
            self.options = options
            return super().__call__(prompt, **kwargs)

    fake = Recording()
    out = generate_batch(fake, [a, a2])  # one call for both requests, with the image once
    assert len(fake.calls) == 1 and fake.calls[0]["prompts"] == ["a", "b"] and len(out) == 2
    assert set(fake.options) == {"image", "strength"} and fake.options["strength"] == 0.6
    assert np.array_equal(np.asarray(fake.options["image"]), np.asarray(START))
    with pytest.raises(ValueError, match="one bucket"):
        generate_batch(fake, [a, different[0]])


def _bad_bodies(png: str) -> list[tuple[dict, int, str]]:
    big = _png(Image.new("RGB", (4097, 4096)))
    return [
        ({"strength": 0.5}, 400, "send 'image' too"),
        ({"image": png, "strength": 0}, 400, "(0, 1]"),
        ({"image": png, "strength": "high"}, 400, "'strength'"),
        ({"image": "not base64!"}, 400, "not valid base64"),
        ({"image": base64.b64encode(b"plain text").decode()}, 400, "PNG or JPEG"),
        ({"image": _png(START, "GIF")}, 400, "send a PNG or JPEG"),
        ({"image": "data:text/plain;base64,aGk="}, 400, "data URL"),
        ({"image": 5}, 400, "base64 PNG or JPEG"),
        ({"image": big}, 400, "4097x4096 pixels"),
        ({"control_scale": 0.5}, 400, "send 'control_image' too"),
        ({"control_image": png, "control_scale": -1}, 400, "'control_scale'"),
        ({"control_image": png, "control_scale": "strong"}, 400, "'control_scale'"),
        ({"control_image": png, "pag_scale": 1.0}, 400, "ControlNet and PAG together"),
        ({"pag_scale": -1}, 400, "'pag_scale'"),
        ({"pag_scale": 1, "pag_adaptive_scale": -0.5}, 400, "'pag_adaptive_scale'"),
        ({"pag_scale": 1, "pag_layers": [7]}, 400, "PAG layer 7 is out of range"),
        ({"pag_scale": 1, "pag_layers": ["attn"]}, 400, "is not a block"),
        ({"pag_scale": 1, "pag_layers": 1}, 400, "list of block indices"),
        ({"pag_layers": [1]}, 400, "send 'pag_scale' > 0 too"),
    ]


def test_bad_variant_requests_are_4xx_and_the_server_serves_on(server) -> None:
    srv, _ = server
    for body, status, needle in _bad_bodies(_png(EDGES)):
        r = _post(srv.url, {"prompt": "x", **body})
        assert r.status_code == status, (body.keys(), r.text)
        assert needle in r.json()["error"]["message"], r.text
    assert _post(srv.url, {"prompt": "x", "image": _png(START)}).status_code == 200


def test_parse_refusals_without_a_server() -> None:
    """Refusals that depend on the server: no ControlNet, a Sprint model, the body and image byte limits."""
    png = _png(EDGES)
    plain = default_settings("sana-tiny")
    with pytest.raises(RequestError, match="has no ControlNet.*--controlnet") as err:
        parse_body(json.dumps({"prompt": "a", "control_image": png}).encode(), plain)
    assert err.value.status == 400
    with_cn = plain.with_(controlnet=True)
    for raw in (b'"control_scale": Infinity', b'"control_scale": NaN', b'"pag_scale": Infinity'):
        body = b'{"prompt": "a", "control_image": "' + png.encode() + b'", ' + raw + b"}"
        if b"pag" in raw:
            body = b'{"prompt": "a", ' + raw + b"}"
        with pytest.raises(RequestError, match="finite") as err:
            parse_body(body, with_cn)
        assert err.value.status == 400
    sprint = default_settings("sana-sprint-tiny")
    assert parse_body(b'{"prompt": "a"}', sprint).num_inference_steps == 2  # the model's default
    for fields, needle in (({"negative_prompt": "blur"}, "no negative prompt"), ({"pag_scale": 1.0}, "Sana-Sprint")):
        with pytest.raises(RequestError, match=needle):
            parse_body(json.dumps({"prompt": "a", **fields}).encode(), sprint)
    small = plain.with_(max_image_bytes=1000)
    with pytest.raises(RequestError, match="over 1000 bytes|limit is 1000") as err:
        parse_body(json.dumps({"prompt": "a", "image": _png(_picture(4))}).encode(), small)
    assert err.value.status == 413
    with pytest.raises(RequestError) as err:  # padding beside an image still counts against the field limit
        parse_body(json.dumps({"prompt": "a" * 70_000, "image": png}).encode(), plain)
    assert err.value.status == 413


@pytest.fixture(scope="module")
def sprint_server(tmp_path_factory):
    engines = tmp_path_factory.mktemp("no-engines")
    pipe = load_pipeline("sana-sprint-tiny", engine_dir=engines, backend="torch")
    service = ImageService(pipe, default_settings("sana-sprint-tiny"))
    srv = ThreadedServer(create_app(service))
    yield srv, pipe
    srv.stop()
    service.close()


def test_sprint_requests_equal_the_pipeline_call(sprint_server) -> None:
    srv, pipe = sprint_server
    got = _image(_post(srv.url, {"prompt": "a red kite", "guidance_scale": 3.0}))  # default steps: the model's 2
    _same(got, _direct(pipe, guidance=3.0))
    assert not np.array_equal(got, _image(_post(srv.url, {"prompt": "a red kite", "guidance_scale": 6.0})))
    got = _image(_post(srv.url, {"prompt": "a red kite", "image": _png(START), "strength": 0.5}))
    _same(got, _direct(pipe, image=START, strength=0.5))
    r = _post(srv.url, {"prompt": "a red kite", "negative_prompt": "blur"})
    assert r.status_code == 400 and "no negative prompt" in r.json()["error"]["message"]
    assert _post(srv.url, {"prompt": "a red kite", "num_inference_steps": 1}).status_code == 200


def test_bad_controlnet_stops_start_up(tmp_path) -> None:
    with pytest.raises(SanaDeployError, match="not a diffusers Sana ControlNet folder"):
        check_server("127.0.0.1", 0, tmp_path / "engines", controlnet=tmp_path / "missing", model="sana-tiny")
    wide = tmp_path / "wide-cn"  # a ControlNet of hidden size 96 (sana-tiny's is 64): its config is enough
    wide.mkdir()
    (wide / "config.json").write_text(json.dumps(WIDE_CONFIG))
    with pytest.raises(SanaDeployError, match="another model size"):
        check_server("127.0.0.1", 0, tmp_path / "engines", controlnet=wide, model="sana-tiny")
    tiny = tmp_path / "tiny-cn"
    save_controlnet(random_controlnet(PRESETS["sana-tiny"], num_layers=1), tiny)
    with pytest.raises(SanaDeployError, match="Sana-Sprint"):
        check_server("127.0.0.1", 0, tmp_path / "engines", controlnet=tiny, model="sana-sprint-tiny")
    check_server("127.0.0.1", 0, tmp_path / "engines", controlnet=tiny, model="sana-tiny")  # fits: no error


def test_settings_follow_the_loaded_pipeline(server) -> None:
    """An embedder's plain settings learn the ControlNet, depth and Sprint flag from the pipeline it serves."""
    _, pipe = server
    service = ImageService(pipe, default_settings("sana-tiny"))  # made without controlnet=True
    try:
        assert (service.settings.controlnet, service.settings.num_layers, service.settings.sprint) == (True, 2, False)
        req = parse_body(json.dumps({"prompt": "a", "control_image": _png(EDGES)}).encode(), service.settings)
        assert req.control_digest
    finally:
        service.close()
    fake = ImageService(FakePipeline(), default_settings("sana-tiny"))  # a stand-in without a preset: as given
    try:
        assert fake.settings == default_settings("sana-tiny")
    finally:
        fake.close()


def test_pipeline_variant_errors_are_400() -> None:
    """A check only the pipeline can make (PAG blocks of a model that is not a preset) is a 400 with its message."""

    class Refusing(FakePipeline):
        def __call__(self, prompt, **kwargs):  # noqa: ANN001, ANN003, ANN204
            raise VariantError("PAG layer 30 is out of range: this model has 28 transformer blocks (0-27).")

    settings = default_settings("custom-model", num_inference_steps=STEPS)
    assert settings.num_layers is None  # not a preset: the depth is the pipeline's to check
    service = ImageService(Refusing(), settings)
    try:
        req = parse_body(json.dumps({"prompt": "a", "pag_scale": 1.0, "pag_layers": [30]}).encode(), settings)
        assert req.pag_layers == (30,)
        error = service.submit(req).exception(timeout=30)
        assert isinstance(error, RequestError) and error.status == 400 and "PAG layer 30" in error.message
        fine = ImageService(FakePipeline(), settings)
        assert len(fine.submit(parse_body(b'{"prompt": "a"}', settings)).result(timeout=30)) == 1
        fine.close()
    finally:
        service.close()
