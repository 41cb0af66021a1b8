"""Winograd convolutions on the CPU (NNPACK) for the DC-AE stages: a shape sweep against PyTorch's direct
convolution, calls it must leave alone, the fallback when NNPACK refuses a shape, and the pipeline paths that use
it (the torch DC-AE runner by default; ``vae_backend="torch"`` under ONNX Runtime)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sana_deploy.runners import TorchRunner
from sana_deploy.runners.winograd import WinogradConvs, winograd_available, winograd_for
from sana_deploy.runtime.assemble import fixed_stages, torch_runner, use_winograd

needs_nnpack = pytest.mark.skipif(not winograd_available(), reason="this PyTorch build has no working NNPACK")


@needs_nnpack
@pytest.mark.parametrize(
    ("batch", "cin", "cout", "h", "w", "bias"),
    [(1, 128, 128, 64, 64, True), (2, 64, 32, 40, 56, False), (1, 32, 256, 8, 8, True), (1, 3, 8, 17, 9, True)],
)
def test_matches_direct_convolution(batch, cin, cout, h, w, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cin, h, w, generator=g)
    weight = torch.randn(cout, cin, 3, 3, generator=g) / (3 * cin**0.5)
    b = torch.randn(cout, generator=g) if bias else None
    ref = F.conv2d(x, weight, b, padding=1)
    with torch.inference_mode(), WinogradConvs() as convs:
        got = F.conv2d(x, weight, b, padding=1)
        got_module_style = F.conv2d(x, weight, b, (1, 1), (1, 1), (1, 1), 1)  # how nn.Conv2d calls it
    assert convs.calls == 2 and not convs.refused
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert torch.equal(got, got_module_style)


@needs_nnpack
@pytest.mark.parametrize(
    "call",
    [
        lambda x, w: F.conv2d(x, w, padding=1, stride=2),
        lambda x, w: F.conv2d(x, w, padding=0),
        lambda x, w: F.conv2d(x, w, padding=2, dilation=2),
        lambda x, w: F.conv2d(x, w[:, :4], padding=1, groups=2),
        lambda x, w: F.conv2d(x.double(), w.double(), padding=1),
        lambda x, w: F.conv2d(x, w[..., :1, :1]),
    ],
    ids=["stride2", "pad0", "dilated", "grouped", "fp64", "1x1"],
)
def test_other_convolutions_run_unchanged(call):
    x, w = torch.randn(1, 8, 12, 12), torch.randn(16, 8, 3, 3)
    with torch.inference_mode():
        ref = call(x, w)
        with WinogradConvs() as convs:
            got = call(x, w)
    assert convs.calls == 0 and torch.equal(got, ref)


def test_autograd_is_left_to_pytorch():
    x, w = torch.randn(1, 8, 12, 12, requires_grad=True), torch.randn(16, 8, 3, 3)
    with WinogradConvs() as convs:
        F.conv2d(x, w, padding=1).sum().backward()
    assert convs.calls == 0 and x.grad is not None


def test_refused_shape_runs_direct_and_is_not_retried(monkeypatch):
    tried = []

    def refuse(*args, **kwargs):
        tried.append(1)
        raise RuntimeError("NNPACK SpatialConvolution_updateOutput failed")

    monkeypatch.setattr("sana_deploy.runners.winograd.winograd_available", lambda: True)
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", refuse)
    x, w = torch.randn(1, 8, 12, 12), torch.randn(16, 8, 3, 3)
    with torch.inference_mode(), WinogradConvs() as convs:
        first = F.conv2d(x, w, padding=1)
        second = F.conv2d(x, w, padding=1)
    assert tried == [1] and convs.calls == 0 and len(convs.refused) == 1
    assert torch.equal(first, F.conv2d(x, w, padding=1)) and torch.equal(second, first)


def test_dcae_runner_uses_it_by_default_on_the_cpu(tiny, monkeypatch):
    latent = torch.randn(1, 32, 4, 6, generator=torch.Generator().manual_seed(1))
    direct = torch_runner(tiny, "vae", "fp32", winograd=False)
    assert use_winograd("vae", "fp32", "cpu") == winograd_available()
    assert not use_winograd("transformer", "fp32", "cpu") and not use_winograd("vae", "fp32", "cuda")
    monkeypatch.setenv("SANA_DEPLOY_WINOGRAD", "0")
    assert not torch_runner(tiny, "vae", "fp32").winograd
    monkeypatch.delenv("SANA_DEPLOY_WINOGRAD")
    if not winograd_available():
        pytest.skip("this PyTorch build has no working NNPACK")
    runner = torch_runner(tiny, "vae", "fp32")
    assert runner.winograd and not direct.winograd
    got, ref = runner(latent=latent)["sample"], direct(latent=latent)["sample"]
    assert runner.winograd_calls > 0 and direct.winograd_calls == 0
    assert (got - ref).abs().max().item() <= 1e-4


@needs_nnpack
def test_vae_backend_torch_under_onnxruntime(tiny, tiny_export):
    """The DC-AE stage runs on the torch module (Winograd) while the rest stays on ONNX Runtime; the decoded
    image matches the all-ONNX Runtime pipeline within 1/255."""
    from sana_deploy.runtime.pipeline import SanaDeployPipeline

    mixed = SanaDeployPipeline.from_components(tiny, "onnxruntime", export_dir=tiny_export[0], vae_backend="torch")
    plain = SanaDeployPipeline.from_components(tiny, "onnxruntime", export_dir=tiny_export[0])
    request = {"prompt": "a red fox", "height": 128, "width": 192, "num_inference_steps": 2, "generator": 0}
    a, b = mixed(**request, output_type="pt"), plain(**request, output_type="pt")
    vae = mixed.provider.runner("vae", 128, 192, 1)
    assert isinstance(vae, TorchRunner) and vae.winograd and vae.winograd_calls > 0
    assert type(mixed.provider.runner("text_encoder", 128, 192, 1)).__name__ == "OrtRunner"
    assert (a.images - b.images).abs().max().item() <= 1 / 255


@needs_nnpack
def test_winograd_for_a_module(monkeypatch):
    """The exact tiled decode's switch: fp32 CPU modules only, and off with ``SANA_DEPLOY_WINOGRAD=0``."""
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    assert isinstance(winograd_for(conv), WinogradConvs)
    assert not isinstance(winograd_for(conv.to(torch.bfloat16)), WinogradConvs)
    monkeypatch.setenv("SANA_DEPLOY_WINOGRAD", "0")
    assert not isinstance(winograd_for(conv.float()), WinogradConvs)


@needs_nnpack
def test_exact_tiled_decode_uses_it(tiny):
    """A tiled request (exact split decode over the torch DC-AE) runs its convolutions under Winograd, and
    matches the same request with Winograd off within 1/255."""
    from sana_deploy.runtime.pipeline import SanaDeployPipeline
    from sana_deploy.runtime.tiling import TilingConfig

    pipe = SanaDeployPipeline.from_components(
        tiny, "torch", tiling=TilingConfig(enabled=True, tile=256, overlap=64, method="exact")
    )
    request = {"prompt": "a fox", "height": 512, "width": 384, "num_inference_steps": 1, "generator": 0}
    latent = pipe(**request, output_type="latent").images
    calls = []
    real = torch._nnpack_spatial_convolution

    def counted(*args):
        calls.append(args[0].shape)
        return real(*args)

    backends: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "_nnpack_spatial_convolution", counted)
        fast = pipe._decode(latent, 512, 384, backends)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SANA_DEPLOY_WINOGRAD", "0")
        slow = pipe._decode(latent, 512, 384, {})
    assert fast[1] == slow[1] == "exact" and backends["vae"] == "torch (exact tiled)" and calls
    assert (fast[0] - slow[0]).abs().max().item() <= 2 / 255  # both in [-1, 1]: 1/255 of the image's range


@needs_nnpack
def test_vae_backend_torch_over_engines(tmp_path, tiny_export):
    """``from_engines(vae_backend="torch")``: text and transformer on ONNX Runtime engines (built on the miss),
    the DC-AE on its torch module (Winograd) without a DC-AE engine; the image matches the eager torch pipeline."""
    from sana_deploy.runtime.pipeline import SanaDeployPipeline

    engines = tmp_path / "engines"
    pipe = SanaDeployPipeline.from_engines(
        engines, "sana-tiny", backend="onnxruntime", on_miss="build", vae_backend="torch",
        build_kwargs={"export_root": tiny_export[0]},
    )  # fmt: skip
    eager = SanaDeployPipeline.from_model("sana-tiny", "torch")
    request = {"prompt": "a fox", "height": 256, "width": 256, "num_inference_steps": 2, "generator": 0}
    ours = pipe(**request, output_type="pt", resolution_binning=False)
    ref = eager(**request, output_type="pt", resolution_binning=False)
    assert ours.backends["transformer"].startswith("onnxruntime") and ours.backends["vae"].startswith("torch")
    assert any(str(e["engine"]).startswith("override:") for e in pipe.provider.events if e["component"] == "vae")
    assert not [p for p in engines.rglob("meta.json") if "vae" in p.read_text()], "a DC-AE engine was built"
    vae = pipe.provider.runner("vae", 256, 256, 1)
    assert isinstance(vae, TorchRunner) and vae.winograd and vae.winograd_calls > 0
    assert (ours.images - ref.images).abs().max().item() <= 1 / 255


def test_vae_backend_is_checked(tiny):
    with pytest.raises(Exception, match="vae_backend must be None"):
        fixed_stages(tiny, "onnxruntime", "fp32", vae_backend="openvino")
