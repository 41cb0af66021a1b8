"""HTTP app on 127.0.0.1 with a fake pipeline: auth, limits, queueing, timeouts, batching, metrics, OpenAI client."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from sana_deploy.errors import ShapeError
from sana_deploy.serve.http import create_app
from sana_deploy.serve.service import ImageService
from sana_deploy.serve.settings import default_settings
from tests.serve.conftest import FakePipeline, ThreadedServer


def start(pipe, **overrides):
    settings = default_settings("sana-tiny", sizes="64x64,96x64", **overrides)
    service = ImageService(pipe, settings)
    return service, ThreadedServer(create_app(service))


@pytest.fixture
def server(fake_pipe):
    service, srv = start(fake_pipe, api_key="sk-test", max_n=2, batch_wait_s=0.0)
    yield srv
    srv.stop()
    service.close()


AUTH = {"Authorization": "Bearer sk-test"}


def test_openai_client_gets_decodable_png(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0, timeout=30)
    out = client.images.generate(prompt="a red fox", n=2, size="96x64", response_format="b64_json")
    assert len(out.data) == 2
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in out.data]
    assert all(im.format == "PNG" and im.size == (96, 64) for im in images)
    assert images[0].tobytes() != images[1].tobytes()  # each image has its own generator


def test_auth(server):
    r = httpx.post(server.url + "/v1/images/generations", json={"prompt": "a"})
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/images/generations", json={"prompt": "a"}, headers={"Authorization": "Bearer no"})
    assert r.status_code == 401
    assert httpx.get(server.url + "/health").json()["status"] == "ok"  # health needs no key


def test_bad_requests_never_break_the_worker(server):
    post = lambda **kw: httpx.post(server.url + "/v1/images/generations", headers=AUTH, timeout=30, **kw)  # noqa: E731
    assert post(content=b"{oops").status_code == 400
    assert post(json={"prompt": "a", "size": "1024x1024"}).status_code == 400
    assert post(json={"prompt": "a", "n": 3}).status_code == 400
    assert post(json={"prompt": "a" * 3000}).status_code == 400
    assert post(content=b"x" * (70 * 1024)).status_code == 413
    assert httpx.get(server.url + "/v1/images/generations").status_code == 405
    r = post(json={"prompt": "still fine", "seed": 1})
    assert r.status_code == 200 and len(r.json()["data"]) == 1


def test_same_seed_same_image_regardless_of_batch(server):
    post = lambda p: httpx.post(  # noqa: E731
        server.url + "/v1/images/generations", headers=AUTH, json={"prompt": p, "seed": 42}, timeout=30
    ).json()["data"][0]["b64_json"]
    assert post("same") == post("same")


def test_queue_full_gives_429_and_timeout_gives_504():
    pipe = FakePipeline(delay_s=0.6)
    service, srv = start(pipe, max_queue=2, request_timeout_s=0.3, batch_wait_s=0.0, max_batch_images=1)
    try:
        url = srv.url + "/v1/images/generations"
        with cf.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(httpx.post, url, json={"prompt": f"p{i}"}, timeout=30) for i in range(4)]
            codes = sorted(f.result().status_code for f in futures)
        assert 429 in codes, codes  # only 2 fit in the queue
        assert 504 in codes, codes  # the 0.6 s pipeline exceeds the 0.3 s timeout
        assert set(codes) <= {429, 504}
        time.sleep(1.5)  # the running call finishes; timed-out queued requests were dropped, not run
        assert len(pipe.calls) <= 2
        metrics = httpx.get(srv.url + "/metrics").text
        assert 'sana_requests_total{status="429"}' in metrics
    finally:
        srv.stop()
        service.close()


def test_batches_within_a_size_bucket_only():
    pipe = FakePipeline(delay_s=0.2)
    service, srv = start(pipe, batch_wait_s=0.1, max_batch_images=4)
    try:
        url = srv.url + "/v1/images/generations"
        sizes = ["64x64", "96x64", "64x64", "96x64", "64x64", "64x64"]
        with cf.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(httpx.post, url, json={"prompt": "p", "size": s}, timeout=30) for s in sizes]
            assert all(f.result().status_code == 200 for f in futures)
        assert sum(len(c["prompts"]) for c in pipe.calls) == 6
        assert len(pipe.calls) < 6  # some requests shared a call
        assert all(len(c["prompts"]) <= 4 for c in pipe.calls)
        assert pipe.max_active == 1  # one pipeline call at a time per replica
    finally:
        srv.stop()
        service.close()


class MissPipeline(FakePipeline):
    def __call__(self, prompt, **kw):
        if kw["width"] == 96:
            raise ShapeError("No engine in /srv/engines covers 64x96; run `sana-deploy build --profiles 512`.")
        if kw["width"] == 64 and prompt[0] == "boom":
            raise RuntimeError("kaboom")
        return super().__call__(prompt, **kw)


def test_engine_miss_is_503_and_crash_is_500_then_server_still_serves():
    service, srv = start(MissPipeline(), batch_wait_s=0.0)
    try:
        url = srv.url + "/v1/images/generations"
        r = httpx.post(url, json={"prompt": "p", "size": "96x64"}, timeout=30)
        assert r.status_code == 503 and "sana-deploy build" in r.json()["error"]["message"]
        assert "/srv/engines" not in r.text  # the server's own text stays in its log
        r = httpx.post(url, json={"prompt": "boom"}, timeout=30)
        assert r.status_code == 500 and "kaboom" not in r.text
        assert httpx.post(url, json={"prompt": "ok"}, timeout=30).status_code == 200
    finally:
        srv.stop()
        service.close()


def test_metrics_and_health(server):
    httpx.post(server.url + "/v1/images/generations", headers=AUTH, json={"prompt": "m"}, timeout=30)
    text = httpx.get(server.url + "/metrics").text
    assert 'sana_requests_total{status="200"}' in text and "sana_request_latency_seconds" in text
    health = httpx.get(server.url + "/health").json()
    assert health["sizes"] == ["64x64", "96x64"] and health["max_n"] == 2
    assert json.loads(json.dumps(health))  # plain JSON


# --- the real sana-tiny pipeline, built as `sana-deploy serve` builds it -------------------------------------------


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    from sana_deploy.serve.shared import load_pipeline

    pipe = load_pipeline("sana-tiny", engine_dir=tmp_path_factory.mktemp("engines"))  # no engines: torch
    service = ImageService(pipe, default_settings("sana-tiny", num_inference_steps=2, batch_wait_s=0.0))
    srv = ThreadedServer(create_app(service))
    yield srv
    srv.stop()
    service.close()


@pytest.mark.parametrize("size", ["512x512", "1792x1024"])
def test_openai_client_standard_sizes_on_default_server(tiny_server, size):
    from openai import OpenAI

    client = OpenAI(base_url=tiny_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    out = client.images.generate(prompt="a red fox", size=size, response_format="b64_json")
    image = Image.open(io.BytesIO(base64.b64decode(out.data[0].b64_json)))
    assert image.format == "PNG" and image.size == tuple(int(v) for v in size.split("x"))
    assert np.asarray(image).std() > 0


def test_default_server_refuses_bad_sizes_clearly(tiny_server):
    url = tiny_server.url + "/v1/images/generations"
    for size in ("0x512", "512x99999", "big"):
        r = httpx.post(url, json={"prompt": "a", "size": size}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "size", r.text
        assert "WIDTHxHEIGHT" in r.json()["error"]["message"]
    assert httpx.get(tiny_server.url + "/health").json()["sizes"] is None  # any size


# --- `sana-deploy serve` builds its pipeline exactly as `generate` does ---------------------------------------------


@pytest.fixture
def constructors(monkeypatch):
    """Record SanaDeployPipeline.from_model / from_engines calls; `serve` returns before binding a port."""
    from sana_deploy.runtime.pipeline import SanaDeployPipeline
    from sana_deploy.serve import http

    calls = []

    def record(name):
        def make(cls, *args, **kwargs):
            calls.append((name, args, kwargs))
            return FakePipeline()

        return classmethod(make)

    monkeypatch.setattr(SanaDeployPipeline, "from_model", record("from_model"))
    monkeypatch.setattr(SanaDeployPipeline, "from_engines", record("from_engines"))
    monkeypatch.setattr(FakePipeline, "set_progress_bar", lambda self, on: None, raising=False)
    monkeypatch.setattr(http, "serve_http", lambda service, host, port: service.close())
    return calls


def run_serve(*args: str) -> None:
    from click.testing import CliRunner

    from sana_deploy.cli import main

    result = CliRunner().invoke(main, ["serve", "--port", "0", *args])  # 0: no start-up check of a fixed port
    assert result.exit_code == 0, result.output + repr(result.exception)


def test_serve_random_weights_reach_the_pipeline_with_engines(constructors, tmp_path):
    run_serve("--engines", str(tmp_path), "--backend", "onnxruntime", "--random-weights")
    (name, args, kwargs), *_ = constructors
    assert name == "from_engines" and args[:3] == (tmp_path, "sana-tiny", "onnxruntime")
    assert kwargs["random_weights"] is True
    assert kwargs["on_miss"] == "build"  # generate's default miss policy


def test_serve_default_is_generates_auto_backend(constructors, tmp_path, monkeypatch):
    from sana_deploy.runtime.generate import GenerateRequest, build_pipeline

    monkeypatch.chdir(tmp_path)  # `engines/` here has no engines: auto runs the PyTorch model, as generate does
    run_serve("--random-weights")
    build_pipeline(GenerateRequest(prompts=["x"], random_weights=True))
    assert len(constructors) == 2 and constructors[0] == constructors[1]
    name, _args, kwargs = constructors[0]
    assert name == "from_model" and kwargs["random_weights"] is True


def test_requests_of_one_aspect_bucket_share_a_call_and_get_their_own_sizes():
    from sana_deploy.models.config import PRESETS
    from sana_deploy.serve.requests import ImageRequest
    from sana_deploy.serve.shared import generate_batch

    pipe = FakePipeline()
    pipe.preset = PRESETS["sana-tiny"]  # 512x512 and 1024x1024 both bin to the 1024x1024 bucket
    reqs = [ImageRequest("a", 1, 512, 512, 2, 4.5, seed=1), ImageRequest("b", 2, 1024, 1024, 2, 4.5, seed=2)]
    out = generate_batch(pipe, reqs)
    assert len(pipe.calls) == 1 and (pipe.calls[0]["width"], pipe.calls[0]["height"]) == (1024, 1024)
    assert [[im.size for im in r] for r in out] == [[(512, 512)], [(1024, 1024)] * 2]
    with pytest.raises(ValueError, match="one bucket"):
        generate_batch(pipe, [reqs[0], ImageRequest("c", 1, 1792, 1024, 2, 4.5)])
