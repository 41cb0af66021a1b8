"""`sana-deploy serve` under bad settings and bad clients: start-up checks, vanished clients, slow bodies, 503s.

Every server test ends by checking the server still answers /health and a normal request.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest
from click.testing import CliRunner

from sana_deploy.cli import main
from sana_deploy.serve.http import create_app
from sana_deploy.serve.service import ImageService
from sana_deploy.serve.settings import ServeSettings, ServeSettingsError, default_settings
from tests.serve.conftest import FakePipeline, ThreadedServer

# --- start-up checks: each invalid option refuses to start, naming it, before anything loads ---------------------

BAD_OPTIONS = [
    (["--max-n", "0"], "--max-n"),
    (["--max-queue", "0"], "--max-queue"),
    (["--timeout", "0"], "--timeout"),
    (["--timeout", "-3"], "--timeout"),
    (["--timeout", "nan"], "--timeout"),
    (["--timeout", "inf"], "--timeout"),
    (["--body-timeout", "0"], "--body-timeout"),
    (["--steps", "0"], "--steps"),
    (["--steps", "51"], "--steps"),  # above the server's cap of 50
    (["--engines", "{file}"], "is a file"),
    (["--engines", "{file}/engines", "--backend", "onnxruntime"], "cannot be created"),
    (["--api-key", "clé-secrète"], "--api-key"),
    (["--api-key", ""], "--api-key"),
    (["--api-key", "two words"], "--api-key"),
    (["--port", "99999"], "--port"),
    (["--port", "-1"], "--port"),
    (["--port", "{busy}"], "--port"),  # something already listens there
    (["--host", "10.255.255.1"], "--host"),  # not an address of this machine
    (["--profiles", "abc"], "--profiles"),
    (["--profiles", "1000"], "--profiles"),
    (["--sizes", "0x512"], "--sizes"),
    (["--sizes", "big"], "--sizes"),
    (["--ray", "--replicas", "0"], "--replicas"),
    (["--ray", "--gpus-per-replica", "-1"], "--gpus-per-replica"),
]


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if `serve` gets as far as loading a pipeline or listening."""
    from sana_deploy.serve import http, shared

    calls = []
    monkeypatch.setattr(shared, "load_pipeline", lambda *a, **k: calls.append("load"))
    monkeypatch.setattr(http, "serve_http", lambda *a, **k: calls.append("listen"))
    return calls


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("args, needle", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_invalid_option_refuses_to_start(args, needle, nothing_loads, busy_port, tmp_path, monkeypatch):
    monkeypatch.delenv("SANA_DEPLOY_API_KEY", raising=False)
    file = tmp_path / "engines.txt"
    file.write_text("not a folder")
    args = [a.format(file=file, busy=busy_port) for a in args]
    result = CliRunner().invoke(main, ["serve", "--random-weights", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output  # one line
    assert nothing_loads == []  # refused before the model loads


def test_non_ascii_api_key_from_the_environment_refuses_to_start(nothing_loads, monkeypatch):
    monkeypatch.setenv("SANA_DEPLOY_API_KEY", "clé")
    result = CliRunner().invoke(main, ["serve", "--random-weights", "--port", "0"])
    assert result.exit_code == 2 and "SANA_DEPLOY_API_KEY" in result.output, result.output
    assert "clé" not in result.output  # a key is never echoed
    assert nothing_loads == []


@pytest.mark.parametrize("args, needle", [(["--port", "99999"], "--port"), (["--profiles", "abc"], "--profiles")])
def test_invalid_option_in_a_real_process_prints_one_line(args, needle):
    proc = subprocess.run(
        [sys.executable, "-c", "from sana_deploy.cli import main; main()", "serve", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert "serving" not in proc.stdout  # never claims to serve


def test_settings_check_themselves_in_the_library():
    good = default_settings("sana-tiny")
    for changes in (
        {"max_n": 0},
        {"max_queue": -1},
        {"request_timeout_s": float("nan")},
        {"num_inference_steps": 51},
        {"max_inference_steps": 0},
        {"guidance_scale": float("inf")},
        {"max_n": True},
        {"api_key": "ключ"},
        {"default_size": (0, 64)},
    ):
        with pytest.raises(ServeSettingsError):
            good.with_(**changes)
    with pytest.raises(ServeSettingsError, match="not among the sizes"):
        ServeSettings(sizes=((64, 64),), default_size=(96, 64))
    assert good.with_(max_n=1, max_queue=1, num_inference_steps=50).max_n == 1


# --- a running server and clients that misbehave -------------------------------------------------------------------


class SteppingPipeline(FakePipeline):
    """A fake pipeline with a denoising loop: ``step_s`` per step, calling ``callback`` after each (as
    ``SanaDeployPipeline`` does); counts the steps it ran."""

    def __init__(self, step_s: float = 0.05) -> None:
        super().__init__()
        self.step_s = step_s
        self.steps_run = 0

    def __call__(self, prompt, *, num_inference_steps, callback=None, **kw):
        self.calls.append({"prompts": [prompt] if isinstance(prompt, str) else list(prompt), "started": True})
        for i in range(num_inference_steps):
            time.sleep(self.step_s)
            self.steps_run += 1
            if callback is not None:
                callback(i, 1.0 - i / num_inference_steps, None)
        images = super().__call__(prompt, num_inference_steps=num_inference_steps, **kw)
        self.calls.pop()  # keep one record per call
        return images


class Logs(logging.Handler):
    """Collects the records of the server's loggers (uvicorn's own do not propagate to the root)."""

    NAMES = ("uvicorn.error", "uvicorn", "asyncio", "sana_deploy.serve", "")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tracebacks(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.exc_info or "Traceback" in r.getMessage()]


@pytest.fixture
def served():
    """A server around a SteppingPipeline (one request per call, so a second one queues), with its logs."""
    pipe = SteppingPipeline()
    settings = default_settings(
        "sana-tiny", sizes="64x64", batch_wait_s=0.0, max_batch_images=1, body_timeout_s=0.5, request_timeout_s=60
    )
    service = ImageService(pipe, settings)
    srv = ThreadedServer(create_app(service))
    logs = Logs()
    for name in Logs.NAMES:
        logging.getLogger(name).addHandler(logs)
    yield pipe, service, srv, logs
    for name in Logs.NAMES:
        logging.getLogger(name).removeHandler(logs)
    srv.stop()
    service.close()


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def raw_post(port: int, body: bytes, declared: int | None = None) -> socket.socket:
    """A POST sent by hand, so the test decides when (and whether) the body ends and the connection closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        "POST /v1/images/generations HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body) if declared is None else declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def metric(srv: ThreadedServer, name: str) -> float:
    for line in httpx.get(srv.url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def assert_still_serves(srv: ThreadedServer, pipe: SteppingPipeline, prompt: str = "still here") -> None:
    assert httpx.get(srv.url + "/health", timeout=30).json()["status"] == "ok"
    r = httpx.post(srv.url + "/v1/images/generations", json={"prompt": prompt, "num_inference_steps": 2}, timeout=60)
    assert r.status_code == 200 and len(r.json()["data"]) == 1, r.text
    assert pipe.calls[-1]["prompts"] == [prompt]


def test_a_queued_request_whose_client_disconnects_never_runs(served):
    pipe, service, srv, logs = served
    url = srv.url + "/v1/images/generations"
    with cf.ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, url, json={"prompt": "first", "num_inference_steps": 50}, timeout=60)
        wait_until(lambda: len(pipe.calls) == 1)  # "first" is running (about 2.5 s)
        gone = raw_post(srv.port, b'{"prompt": "gone", "num_inference_steps": 2}')
        wait_until(lambda: service.depth == 2)  # "gone" waits in the queue
        gone.close()
        wait_until(lambda: service.metrics.disconnects["queued"] == 1)
        assert first.result().status_code == 200
    assert service.depth == 0
    assert_still_serves(srv, pipe)
    assert [c["prompts"] for c in pipe.calls] == [["first"], ["still here"]]  # "gone" never reached the pipeline
    assert metric(srv, 'sana_client_disconnects_total{stage="queued"}') == 1
    assert metric(srv, 'sana_requests_total{status="200"}') == 2  # the vanished request is not a 200
    assert logs.tracebacks() == []


def test_a_running_request_whose_client_disconnects_stops_between_steps(served):
    pipe, service, srv, logs = served
    pipe.step_s = 0.1
    sock = raw_post(srv.port, b'{"prompt": "long", "num_inference_steps": 50}')  # 50 x 0.1 s
    wait_until(lambda: pipe.steps_run >= 2)
    sock.close()
    wait_until(lambda: service.metrics.stopped_batches == 1)
    assert pipe.steps_run < 50
    assert_still_serves(srv, pipe)
    assert metric(srv, 'sana_client_disconnects_total{stage="running"}') == 1
    assert metric(srv, "sana_batches_stopped_total") == 1
    assert metric(srv, 'sana_requests_total{status="200"}') == 1  # only the check's own request
    assert logs.tracebacks() == []


def test_a_partial_body_left_open_times_out_and_is_closed(served):
    pipe, service, srv, logs = served
    started = time.perf_counter()
    sock = raw_post(srv.port, b'{"prompt": "sl', declared=100)  # 14 of 100 bytes, then nothing
    answer = b""
    while chunk := sock.recv(65536):  # b"" once the server closes the connection
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"did not arrive within 0.5s" in answer
    assert time.perf_counter() - started < 10
    assert pipe.calls == []
    assert_still_serves(srv, pipe)
    assert metric(srv, 'sana_requests_total{status="408"}') == 1
    assert logs.tracebacks() == []


def test_a_partial_body_then_close_logs_no_traceback(served):
    pipe, service, srv, logs = served
    sock = raw_post(srv.port, b'{"prompt": "cut', declared=100)
    time.sleep(0.1)
    sock.close()
    wait_until(lambda: service.metrics.disconnects["body"] == 1)
    assert pipe.calls == []
    assert_still_serves(srv, pipe)
    assert metric(srv, 'sana_client_disconnects_total{stage="body"}') == 1
    assert logs.tracebacks() == [], logs.tracebacks()


# --- a size no engine covers, under miss policy `error`: 503, and no server path in the body ------------------------


PATH = re.compile(r"(^|[\s'\"`(=])(/|[A-Za-z]:\\)[\w.-]+[/\\]")  # an absolute POSIX or Windows path


def test_no_engine_for_the_size_is_503_without_server_paths(tmp_path):
    from sana_deploy.serve.shared import load_pipeline

    engines = tmp_path / "engine-cache"
    engines.mkdir()
    pipe = load_pipeline("sana-tiny", engine_dir=engines, backend="onnxruntime", miss_policy="error")
    service = ImageService(pipe, default_settings("sana-tiny", num_inference_steps=2, batch_wait_s=0.0))
    srv = ThreadedServer(create_app(service))
    try:
        r = httpx.post(srv.url + "/v1/images/generations", json={"prompt": "a fox", "size": "512x512"}, timeout=120)
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "engine_unavailable" and "512x512" in error["message"]
        assert str(tmp_path) not in r.text and "engine-cache" not in r.text
        assert not PATH.search(error["message"]), error["message"]
        assert httpx.get(srv.url + "/health", timeout=30).json()["status"] == "ok"
        assert 'sana_requests_total{status="503"} 1' in httpx.get(srv.url + "/metrics", timeout=30).text
    finally:
        srv.stop()
        service.close()


def test_server_side_errors_never_show_their_text():
    from sana_deploy.errors import SanaDeployError, ShapeError
    from sana_deploy.serve.requests import ImageRequest
    from sana_deploy.serve.service import _as_request_error

    req = ImageRequest("p", 1, 640, 480, 2, 4.5)
    secret = "/srv/private/engines/sana/meta.json"
    for exc, status in ((ShapeError(secret), 503), (SanaDeployError(secret), 503), (OSError(secret), 500)):
        err = _as_request_error(exc, req)
        assert err.status == status and secret not in str(err.to_json())
        assert not PATH.search(err.message), err.message
        if status == 503:
            assert "640x480" in err.message and err.code == "engine_unavailable"
