"""Triton model repository for sana-tiny: configs parsed by Triton's own proto, and the Python-backend pipeline
(BLS into Python-backend ONNX Runtime engine models) served for real by PyTriton's bundled tritonserver."""

from __future__ import annotations

import numpy as np
import pytest

from sana_deploy.serve.triton.pbtxt import validate
from sana_deploy.serve.triton.repository import export_triton_repository
from tests.serve.conftest import free_port

pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    from sana_deploy.export import export_model
    from sana_deploy.models.loaders import load_components

    out = tmp_path_factory.mktemp("onnx")
    export_model(load_components("sana-tiny"), ("text_encoder", "transformer", "vae"), "fp32", out, parity=False)
    return out


def test_onnxruntime_platform_configs_validate(onnx_dir, tmp_path):
    models = export_triton_repository(tmp_path / "repo", "sana-tiny", [512, 1024], "onnxruntime", onnx_dir=onnx_dir)
    assert {m.name for m in models} == {"text_encoder", "transformer", "vae", "sana_pipeline"}
    cfg = validate(tmp_path / "repo/transformer/config.pbtxt")
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 2
    assert [tuple(i.dims) for i in cfg.input] == [(32, -1, -1), (1,), (-1, 64), (-1,)]
    assert cfg.input[1].HasField("reshape") and list(cfg.input[1].reshape.shape) == []
    assert [w.name for w in cfg.model_warmup] == ["warmup_512", "warmup_1024"]
    assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
    pipe = validate(tmp_path / "repo/sana_pipeline/config.pbtxt")
    assert pipe.backend == "python" and [o.name for o in pipe.output] == ["image"]
    assert all(i.optional for i in pipe.input if i.name != "prompt")


def test_refuses_to_overwrite(onnx_dir, tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "x").write_text("keep me")
    with pytest.raises(Exception, match="overwrite"):
        export_triton_repository(tmp_path / "repo", "sana-tiny", [512], "python", onnx_dir=onnx_dir)
    assert (tmp_path / "repo" / "x").read_text() == "keep me"


def test_pipeline_on_real_tritonserver_matches_local_loop(onnx_dir, tmp_path):
    import importlib.util

    if importlib.util.find_spec("pytriton") is None:
        pytest.skip("nvidia-pytriton (which bundles tritonserver) is not installed")
    import tritonclient.http as http

    from sana_deploy.runtime.ort import OrtRunner
    from sana_deploy.serve.triton.sampler import SanaLoop
    from sana_deploy.serve.triton.server import TritonServer

    repo = tmp_path / "repo"
    export_triton_repository(repo, "sana-tiny", [512], "python", "bls", onnx_dir=onnx_dir)
    port = free_port()
    inputs = {"prompt": ("a red fox", "BYTES"), "height": (512, "INT32"), "width": (384, "INT32")}
    inputs |= {"num_inference_steps": (2, "INT32"), "seed": (11, "INT64"), "guidance_scale": (4.5, "FP32")}
    with TritonServer(repo, tmp_path / "work", port, timeout_s=240) as server:
        client = http.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
        assert client.is_model_ready("sana_pipeline"), server.log_tail()
        tensors = []
        for name, (value, dtype) in inputs.items():
            t = http.InferInput(name, [1], dtype)
            np_dtype = {"BYTES": object, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32}[dtype]
            t.set_data_from_numpy(np.array([value.encode() if dtype == "BYTES" else value], dtype=np_dtype))
            tensors.append(t)
        image = client.infer("sana_pipeline", tensors).as_numpy("image")
        bad = http.InferInput("prompt", [1], "BYTES")
        bad.set_data_from_numpy(np.array([b"x"], dtype=object))
        size = http.InferInput("height", [1], "INT32")
        size.set_data_from_numpy(np.array([100], dtype=np.int32))
        with pytest.raises(Exception, match="not covered"):
            client.infer("sana_pipeline", [bad, size])  # a bad request is an error response, not a dead model
        assert client.is_model_ready("sana_pipeline")

    import json

    from transformers import AutoTokenizer

    meta = json.loads((repo / "sana_pipeline/1/pipeline.json").read_text())
    names = [p["name"] for p in meta["profiles"]]
    engines = {c: OrtRunner(repo / c / "1" / "model.onnx") for c in ("text_encoder", "transformer", "vae")}
    loop = SanaLoop(
        AutoTokenizer.from_pretrained(repo / "sana_pipeline/1/tokenizer"),
        engines["text_encoder"],
        dict.fromkeys(names, engines["transformer"]),
        dict.fromkeys(names, engines["vae"]),
        meta["profiles"],
        meta["flow_shift"],
        meta["vae_scaling_factor"],
    )
    expected = loop.generate("a red fox", height=512, width=384, num_inference_steps=2, guidance_scale=4.5, seed=11)
    assert image.shape == (512, 384, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1
    assert image.std() > 0
