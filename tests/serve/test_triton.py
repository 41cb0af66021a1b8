"""Triton model repository for sana-tiny: configs parsed by Triton's own proto, and the Python-backend
``sana_pipeline`` (``SanaDeployPipeline`` over BLS runners into Python-backend ONNX Runtime models) served for real
by PyTriton's bundled tritonserver, equal to the product pipeline on the same ONNX exports."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from sana_deploy.contract import PIPELINE_COMPONENTS
from sana_deploy.errors import SanaDeployError
from sana_deploy.runners import OrtRunner
from sana_deploy.serve.triton.pbtxt import validate
from sana_deploy.serve.triton.repository import export_triton_repository
from tests.serve.conftest import free_port

pytest.importorskip("tritonclient.http")

REQUEST = {"prompt": "a red fox", "height": 512, "width": 384, "num_inference_steps": 2, "guidance_scale": 4.5}


@pytest.fixture(scope="module")
def components():
    from sana_deploy.models.loaders import load_components

    return load_components("sana-tiny")


@pytest.fixture(scope="module")
def onnx_dir(components, tmp_path_factory):
    from sana_deploy.export import ensure_export

    out = tmp_path_factory.mktemp("onnx")
    for c in PIPELINE_COMPONENTS:
        ensure_export(components, c, "fp32", out)
    return out


@pytest.fixture(scope="module")
def local_pipe(components, onnx_dir):
    """The product pipeline on the very ONNX exports the repository serves."""
    from sana_deploy.runtime.pipeline import SanaDeployPipeline

    return SanaDeployPipeline.from_components(components, backend="onnxruntime", export_dir=onnx_dir)


def local_latents(pipe, sampler: str, seed: int) -> torch.Tensor:
    return pipe(**REQUEST, sampler=sampler, generator=seed, output_type="latent").images


def test_onnxruntime_platform_configs_validate(onnx_dir, tmp_path):
    models = export_triton_repository(tmp_path / "repo", "sana-tiny", [512, 1024], "onnxruntime", onnx_dir=onnx_dir)
    assert {m.name for m in models} == {*PIPELINE_COMPONENTS, "sana_pipeline"}
    cfg = validate(tmp_path / "repo/vae/config.pbtxt")
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 2
    assert [tuple(i.dims) for i in cfg.input] == [(32, -1, -1)]
    assert [w.name for w in cfg.model_warmup] == ["warmup_512", "warmup_1024"]
    assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
    cached = validate(tmp_path / "repo/transformer_cached/config.pbtxt")  # text_kv is (layers, 2, batch, ...)
    assert cached.max_batch_size == 0 and [i.name for i in cached.input][2] == "text_kv"
    assert [tuple(i.dims) for i in cached.input] == [(-1, 32, -1, -1), (-1,), (2, 2, -1, -1, 64), (-1, -1)]
    pipe = validate(tmp_path / "repo/sana_pipeline/config.pbtxt")
    assert pipe.backend == "python" and [o.name for o in pipe.output] == ["image", "latent"]
    assert all(i.optional for i in pipe.input if i.name != "prompt")


def test_refuses_to_overwrite(onnx_dir, tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "x").write_text("keep me")
    with pytest.raises(Exception, match="overwrite"):
        export_triton_repository(tmp_path / "repo", "sana-tiny", [512], "python", onnx_dir=onnx_dir)
    assert (tmp_path / "repo" / "x").read_text() == "keep me"


def fake_pb_utils(repo, fail_model: str | None = None) -> types.SimpleNamespace:
    """A stand-in for ``triton_python_backend_utils`` whose BLS requests run the repository's ONNX models."""
    runners, calls = {}, []

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class Response:
        def __init__(self, outputs=None, error=None):
            self.outputs, self._error = outputs or {}, error

        def has_error(self):
            return self._error is not None

        def error(self):
            return types.SimpleNamespace(message=lambda: self._error)

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs):
            self.model_name, self.names, self.inputs = model_name, requested_output_names, inputs

        def exec(self):
            calls.append(self.model_name)
            if self.model_name == fail_model:
                return Response(error="boom")
            if self.model_name not in runners:
                runners[self.model_name] = OrtRunner(repo / self.model_name / "1" / "model.onnx")
            out = runners[self.model_name](**{t.name: torch.from_numpy(t.array) for t in self.inputs})
            return Response({n: Tensor(n, out[n].numpy()) for n in self.names})

    return types.SimpleNamespace(
        Tensor=Tensor,
        InferenceRequest=InferenceRequest,
        get_output_tensor_by_name=lambda response, name: response.outputs.get(name),
        calls=calls,
    )


def test_bls_provider_wiring_without_a_server(onnx_dir, local_pipe, tmp_path):
    from sana_deploy.serve.triton.pipeline_model import build_pipeline

    repo = tmp_path / "repo"
    export_triton_repository(repo, "sana-tiny", [512], "python", "bls", onnx_dir=onnx_dir)
    version = repo / "sana_pipeline" / "1"
    meta = json.loads((version / "pipeline.json").read_text())
    pb = fake_pb_utils(repo)
    pipe = build_pipeline(meta, version, pb)
    assert {c: pipe.provider.runner(c, 512, 512, 1).backend for c in PIPELINE_COMPONENTS} == dict.fromkeys(
        PIPELINE_COMPONENTS, "triton"
    )
    out = pipe(**REQUEST, generator=3, output_type="latent")
    assert out.denoiser == "split"  # caption K/V once per request, as the product path
    assert pb.calls.count("transformer_text") == 1 and pb.calls.count("transformer_cached") == 2  # 2 steps
    assert set(pb.calls) == set(PIPELINE_COMPONENTS) - {"vae"}
    torch.testing.assert_close(out.images, local_latents(local_pipe, "flow-dpm-solver", 3), atol=1e-5, rtol=0)
    broken = build_pipeline(meta, version, fake_pb_utils(repo, fail_model="transformer_cached"))
    with pytest.raises(SanaDeployError, match="transformer_cached.*boom"):
        broken(**REQUEST, output_type="latent")


def infer_inputs(http, values: dict) -> list:
    types_ = {"prompt": "BYTES", "sampler": "BYTES", "seed": "INT64", "guidance_scale": "FP32"}
    tensors = []
    for name, value in values.items():
        dtype = types_.get(name, "INT32")
        np_dtype = {"BYTES": object, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32}[dtype]
        t = http.InferInput(name, [1], dtype)
        t.set_data_from_numpy(np.array([value.encode() if dtype == "BYTES" else value], dtype=np_dtype))
        tensors.append(t)
    return tensors


def test_pipeline_on_real_tritonserver_equals_the_product_pipeline(onnx_dir, local_pipe, tmp_path):
    import importlib.util

    if importlib.util.find_spec("pytriton") is None:
        pytest.skip("nvidia-pytriton (which bundles tritonserver) is not installed")
    import tritonclient.http as http

    from sana_deploy.serve.triton.server import TritonServer

    repo = tmp_path / "repo"
    export_triton_repository(repo, "sana-tiny", [512], "python", "bls", onnx_dir=onnx_dir)
    port = free_port()
    served = {}
    with TritonServer(repo, tmp_path / "work", port, timeout_s=240) as server:
        client = http.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
        assert client.is_model_ready("sana_pipeline"), server.log_tail()
        for sampler, seed in (("flow-dpm-solver", 11), ("flow-euler", 12)):
            outputs = [http.InferRequestedOutput("latent")]
            result = client.infer(
                "sana_pipeline", infer_inputs(http, {**REQUEST, "sampler": sampler, "seed": seed}), outputs=outputs
            )
            served[sampler] = result.as_numpy("latent")
        image = client.infer("sana_pipeline", infer_inputs(http, {**REQUEST, "seed": 11})).as_numpy("image")
        with pytest.raises(Exception, match="height must be positive"):
            client.infer("sana_pipeline", infer_inputs(http, {"prompt": "x", "height": -5}))
        assert client.is_model_ready("sana_pipeline")  # a bad request is an error response, not a dead model

    for sampler, seed in (("flow-dpm-solver", 11), ("flow-euler", 12)):
        expected = local_latents(local_pipe, sampler, seed).numpy()
        assert served[sampler].shape == expected.shape
        assert np.abs(served[sampler] - expected).max() <= 1e-4, sampler
    expected_image = np.asarray(local_pipe(**REQUEST, generator=11).images[0])
    assert image.shape == (512, 384, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - expected_image.astype(int)).max() <= 1
    assert image.std() > 0
