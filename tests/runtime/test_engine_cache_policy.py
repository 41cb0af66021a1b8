"""Engine cache on new resolutions: the miss policies as the runtime applies them (sana-tiny, CPU engines)."""

from __future__ import annotations

import time

import pytest
import torch

from sana_deploy.errors import SanaDeployError, ShapeError

ARGS = dict(height=256, width=256, num_inference_steps=2, resolution_binning=False, output_type="latent")


def _run(pipe):
    return pipe("a fox", generator=torch.Generator().manual_seed(0), **ARGS)


def test_background_build_then_next_request_uses_engine(tmp_path, tiny_export):
    """Request 1 misses: builds start in the background and the torch fallback serves it; once the builds are
    observed finishing, request 2 runs on the new engines, with the same result."""
    from sana_deploy.engines import pending_builds
    from sana_deploy.runtime.pipeline import SanaDeployPipeline

    engines = tmp_path / "engines"
    pipe = SanaDeployPipeline.from_engines(
        engines, "sana-tiny", on_miss="background", build_kwargs={"export_root": tiny_export[0]}
    )
    first = _run(pipe)
    assert first.backends["text_encoder"] == "torch/fp32" and first.backends["transformer"].startswith("torch/fp32")
    assert first.denoiser == "split"
    assert [e["engine"] for e in pipe.provider.events] == ["fallback"] * 3  # text encoder, caption K/V, step
    assert pending_builds(engines) or list(engines.glob("sana-tiny/*/*/meta.json")), "no build was started"
    deadline = time.time() + 600
    while pending_builds(engines) and time.time() < deadline:
        time.sleep(1)
    assert not pending_builds(engines), "background builds did not finish in 10 minutes"
    second = _run(pipe)
    assert second.backends["transformer"].startswith("onnxruntime/"), second.backends
    assert second.backends["text_encoder"].startswith("onnxruntime/")
    assert all(e["engine"] != "fallback" for e in pipe.provider.events[-2:])
    err = float((first.images - second.images).abs().max())
    print(f"engine (onnxruntime) vs torch fallback latents: max abs err {err:.2e}")
    assert err <= 1e-3
    # nothing partly built is left in the cache folders
    assert not [p for p in engines.rglob(".tmp-*") if p.is_dir()]


def test_error_policy_names_the_profile_to_build(tmp_path):
    from sana_deploy.runtime.pipeline import SanaDeployPipeline

    pipe = SanaDeployPipeline.from_engines(tmp_path / "empty", "sana-tiny", on_miss="error")
    with pytest.raises(ShapeError, match="sana-deploy build .*--profiles 512"):
        _run(pipe)


def test_unknown_policy_and_gpu_only_backends_are_clear(tmp_path):
    from sana_deploy.runtime.pipeline import SanaDeployPipeline

    with pytest.raises(SanaDeployError, match="miss policy"):
        SanaDeployPipeline.from_engines(tmp_path, "sana-tiny", on_miss="maybe")
    if not torch.cuda.is_available():
        for backend in ("tensorrt", "tensorrt-rtx"):
            with pytest.raises(SanaDeployError, match="CUDA|not installed"):
                SanaDeployPipeline.from_engines(tmp_path, "sana-tiny", backend=backend)
