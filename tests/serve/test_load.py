"""Bounded loopback load tests with the real sana-tiny SanaDeployPipeline (12 at concurrency 4; 50 at 8 is slow)."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import time

import httpx
import pytest
from PIL import Image

from sana_deploy.serve.http import create_app
from sana_deploy.serve.requests import ImageRequest
from sana_deploy.serve.service import ImageService
from sana_deploy.serve.settings import default_settings
from sana_deploy.serve.shared import SharedPipeline, load_pipeline
from tests.serve.conftest import ThreadedServer


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    return load_pipeline("sana-tiny", engine_dir=tmp_path_factory.mktemp("engines"))  # as `serve` builds it


def test_shared_pipeline_is_thread_safe(tiny_pipe):
    shared = SharedPipeline(tiny_pipe)
    reqs = [ImageRequest(f"prompt {i % 2}", 1, 512, 512, 2, 4.5, seed=i % 2) for i in range(6)]
    with cf.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda r: shared.generate([r])[0][0].tobytes(), reqs))
    assert results[0] == results[2] == results[4] and results[1] == results[3] == results[5]
    assert results[0] != results[1]
    assert shared.generate([reqs[0]])[0][0].tobytes() == results[0]  # same as a lone sequential call


@pytest.mark.parametrize("total, concurrency", [(12, 4), pytest.param(50, 8, marks=pytest.mark.slow)])
def test_load(tiny_pipe, total, concurrency):
    settings = default_settings("sana-tiny", sizes="512x512", num_inference_steps=2, max_queue=16, max_batch_images=4)
    service = ImageService(tiny_pipe, settings)
    server = ThreadedServer(create_app(service))
    latencies: list[float] = []

    def one(i: int) -> int:
        start = time.perf_counter()
        r = httpx.post(server.url + "/v1/images/generations", json={"prompt": f"a cat {i}", "seed": i}, timeout=120)
        latencies.append(time.perf_counter() - start)
        if r.status_code == 200:
            Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"]))).verify()
        return r.status_code

    try:
        start = time.perf_counter()
        with cf.ThreadPoolExecutor(concurrency) as pool:
            codes = list(pool.map(one, range(total)))
        wall = time.perf_counter() - start
    finally:
        server.stop()
        service.close()
    lat = sorted(latencies)
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    print(
        f"\nload: {total} requests, concurrency {concurrency}: {wall:.1f}s wall, p50 {p50:.2f}s, p99 {p99:.2f}s, "
        f"{service.metrics.batches} pipeline calls"
    )
    assert codes == [200] * total
    assert service.metrics.batches < total  # same-size requests were batched
