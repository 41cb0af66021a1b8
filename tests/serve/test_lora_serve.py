"""LoRA in ``serve``: adapters from ``--lora-dir`` named per request, batches per adapter set, a bounded LRU of
fused weight sets, and unknown adapters refused with the known ones listed."""

from __future__ import annotations

import base64
import io
import threading

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sana_deploy.runtime.pipeline import SanaDeployPipeline
from sana_deploy.serve.http import create_app
from sana_deploy.serve.service import ImageService
from sana_deploy.serve.settings import ServeSettingsError, adapter_files, default_settings
from sana_deploy.serve.shared import load_pipeline
from tests.serve.conftest import ThreadedServer

SIZE = "256x256"
STEPS = 2
TARGETS = ("attn1.to_q", "attn2.to_v", "ff.conv_point")


def _write_adapter(path, seed: int, rank: int = 4) -> None:  # noqa: ANN001
    """A PEFT-layout LoRA on both sana-tiny blocks (hidden 64, Mix-FFN hidden 160), random A and B."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for block in range(2):
        for target in TARGETS:
            out_f, in_f = (64, 160) if target == "ff.conv_point" else (64, 64)
            conv = target.startswith("ff.")
            a = torch.randn(rank, in_f, *((1, 1) if conv else ()), generator=g) * 0.3
            b = torch.randn(out_f, rank, *((1, 1) if conv else ()), generator=g) * 0.3
            key = f"transformer.transformer_blocks.{block}.{target}"
            sd[f"{key}.lora_A.weight"], sd[f"{key}.lora_B.weight"] = a, b
    save_file(sd, str(path))


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    for i, name in enumerate(("ink", "neon", "clay")):
        _write_adapter(folder / f"{name}.safetensors", seed=i + 1)
    return folder


@pytest.fixture(scope="module")
def server(lora_dir, tmp_path_factory):
    engines = tmp_path_factory.mktemp("no-engines")
    pipe = load_pipeline("sana-tiny", engine_dir=engines, backend="auto", lora_dir=lora_dir, lora_cache_size=2)
    settings = default_settings(
        "sana-tiny", num_inference_steps=STEPS, adapters=tuple(adapter_files(lora_dir)), lora_cache_size=2
    )
    service = ImageService(pipe, settings)
    srv = ThreadedServer(create_app(service))
    yield srv, pipe
    srv.stop()
    service.close()


def _post(url: str, body: dict) -> httpx.Response:
    return httpx.post(url + "/v1/images/generations", json={"size": SIZE, "seed": 5, **body}, timeout=300)


def _image(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["data"][0]["b64_json"])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _single(lora_dir, name: str | None, weight: float = 1.0) -> np.ndarray:  # noqa: ANN001
    """What ``generate`` gives with that one adapter: a fresh pipeline, load_lora_weights, one call."""
    pipe = SanaDeployPipeline.from_model("sana-tiny", backend="torch")
    if name is not None:
        pipe.load_lora_weights(lora_dir / f"{name}.safetensors", adapter_name=name, scale=weight)
    out = pipe(
        ["a paper boat"], negative_prompt="", height=256, width=256, num_inference_steps=STEPS, guidance_scale=4.5,
        generator=[torch.Generator().manual_seed(5)],
    )  # fmt: skip
    return np.asarray(out.images[0].convert("RGB"))


def test_concurrent_requests_with_different_adapters(server, lora_dir) -> None:
    srv, _pipe = server
    bodies = {
        "ink": {"prompt": "a paper boat", "adapters": ["ink"]},
        "neon": {"prompt": "a paper boat", "model": "sana-tiny+neon:0.5"},
        "base": {"prompt": "a paper boat"},
    }
    results: dict[str, httpx.Response] = {}
    threads = [
        threading.Thread(target=lambda k=k, b=b: results.__setitem__(k, _post(srv.url, b))) for k, b in bodies.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = {k: _image(r) for k, r in results.items()}
    assert np.array_equal(got["ink"], _single(lora_dir, "ink"))
    assert np.array_equal(got["neon"], _single(lora_dir, "neon", 0.5))
    assert np.array_equal(got["base"], _single(lora_dir, None))
    assert not np.array_equal(got["ink"], got["base"])  # the adapter changed the image


def test_lru_keeps_the_configured_number_of_sets(server) -> None:
    srv, pipe = server
    for adapters in (["ink"], ["neon"], ["clay"], ["clay", "ink:0.5"]):
        assert _post(srv.url, {"prompt": "x", "adapters": adapters}).status_code == 200
    assert len(pipe.cached_adapter_sets()) == 2
    assert _post(srv.url, {"prompt": "x"}).status_code == 200  # back to the base model


def test_unknown_adapter_is_400_listing_known(server) -> None:
    srv, _ = server
    for body in ({"adapters": ["nope"]}, {"model": "sana-tiny+nope"}):
        r = _post(srv.url, {"prompt": "x", **body})
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert "nope" in message and all(n in message for n in ("ink", "neon", "clay"))
    for bad in (["ink:-1"], ["ink:abc"], [{"name": "ink", "weight": "x"}], ["ink", "ink"], "ink"):
        assert _post(srv.url, {"prompt": "x", "adapters": bad}).status_code == 400
    assert httpx.get(srv.url + "/health", timeout=30).json()["status"] == "ok"


def test_lora_dir_checked_at_start(tmp_path) -> None:
    with pytest.raises(ServeSettingsError, match="not a folder"):
        adapter_files(tmp_path / "missing")
    with pytest.raises(ServeSettingsError, match="no .safetensors"):
        adapter_files(tmp_path)
