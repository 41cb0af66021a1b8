"""The same app on Ray Serve (2 replicas, 127.0.0.1): serves, and a replica killed mid-run is replaced."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import time

import httpx
import pytest

from sana_deploy.serve.settings import default_settings
from tests.serve.conftest import FakePipeline, free_port

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


@pytest.fixture(scope="module")
def ray_app():
    from sana_deploy.serve.ray_app import build_deployment

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ray.init(
        num_cpus=2, include_dashboard=False, configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": root}}
    )
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = default_settings("sana-tiny", sizes="64x64,96x64", batch_wait_s=0.02)
        serve.run(build_deployment(FakePipeline, settings, replicas=2, num_cpus=0.5), name="sana", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def post(url: str, i: int) -> int:
    try:
        r = httpx.post(url + "/v1/images/generations", json={"prompt": f"p{i}", "size": "96x64"}, timeout=60)
        return r.status_code
    except httpx.HTTPError:
        return -1


def test_serves_and_replaces_a_killed_replica(ray_app):
    with cf.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda i: post(ray_app, i), range(8))) == [200] * 8
    handle = serve.get_app_handle("sana")
    pids = {handle.pid.remote().result() for _ in range(20)}
    assert len(pids) == 2  # two replicas, each with its own pipeline
    victim = next(iter(pids))
    with cf.ThreadPoolExecutor(4) as pool:
        during = [pool.submit(post, ray_app, i) for i in range(8)]
        os.kill(victim, signal.SIGKILL)  # a replica process this test's Ray cluster started
        [f.result() for f in during]  # some may fail while the replica dies; none may hang
    deadline = time.time() + 90
    while time.time() < deadline:
        new = {handle.pid.remote().result() for _ in range(20)}
        if len(new) == 2 and victim not in new:
            break
        time.sleep(1)
    else:
        pytest.fail("the killed replica was not replaced in 90 s")
    with cf.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda i: post(ray_app, i), range(8))) == [200] * 8
