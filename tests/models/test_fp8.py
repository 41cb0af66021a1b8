"""FP8 layers (sana_deploy.models.fp8) on the CPU: the emulated FP8 product, which layers are converted, the
quality against bf16, the torch pipeline path and torch.export tracing. The FP8 GEMM itself (torch._scaled_mm)
needs a GPU of compute capability 8.9+: benchmarks/bench_fp8.py runs it there."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from sana_deploy.errors import SanaDeployError
from sana_deploy.models.fp8 import E4M3, Float8Linear, Fp8Error, fp8_layer_names, quantize_rows, to_fp8_
from sana_deploy.models.random import random_components

FP8_BOUND = 5e-2  # transformer output relative L2 against the unquantized model (docs/QUANTIZATION.md)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_rows_round_trip_within_e4m3_precision():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 128, generator=g) * torch.logspace(-3, 3, 64).unsqueeze(1)  # rows of very different size
    x[5] = 0.0
    q, scale = quantize_rows(x)
    assert q.dtype == E4M3 and scale.shape == (64, 1)
    back = q.float() * scale
    assert torch.isfinite(back).all() and back[5].abs().max() == 0
    big = x.abs() > x.abs().amax(dim=1, keepdim=True) / 64  # normal e4m3 numbers: 3 mantissa bits
    assert ((back - x).abs()[big] <= x.abs()[big] / 16 + 1e-12).all()
    assert (back.abs().amax(dim=1) - x.abs().amax(dim=1)).abs().max() <= 1e-5 * x.abs().max()


@pytest.mark.parametrize("conv", [False, True])
def test_layer_matches_its_float_layer_within_fp8_error(conv):
    g = torch.Generator().manual_seed(1)
    layer = nn.Conv2d(96, 160, 1) if conv else nn.Linear(96, 160)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.05)
    x = torch.randn(2, 96, 5, 7, generator=g) if conv else torch.randn(3, 11, 96, generator=g)
    with torch.no_grad():
        expected = layer(x)
        got = Float8Linear.from_module(layer)(x)
    assert got.shape == expected.shape and got.dtype == x.dtype
    assert 1e-4 < _rel(got, expected) < 4e-2  # quantized (not the float product), and close to it


def test_converts_exactly_the_block_linear_layers():
    c = random_components("sana-tiny", ("transformer",))
    names = to_fp8_(c.transformer)
    per_block = {re.sub(r"^transformer_blocks\.\d+\.", "", n) for n in names}
    assert per_block == {
        "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
        "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
        "ff.conv_inverted", "ff.conv_point",
    }  # fmt: skip
    assert len(names) == 10 * c.preset.transformer.num_layers
    for name, module in c.transformer.named_modules():
        if isinstance(module, Float8Linear):
            assert name in names
        elif isinstance(module, (nn.Linear, nn.Conv2d)):  # embedders, patch embedding, depthwise conv, final layer
            assert name not in names
    assert isinstance(c.transformer.get_submodule("transformer_blocks.0.ff.conv_depth"), nn.Conv2d)
    with pytest.raises(Fp8Error, match="already FP8"):
        to_fp8_(c.transformer)
    assert fp8_layer_names(nn.Sequential(nn.Linear(16, 16))) == []  # outside transformer blocks: left alone


def test_transformer_output_within_the_fp8_bound_at_every_timestep():
    base = random_components("sana-tiny", ("transformer",)).transformer.to(torch.bfloat16)
    fp8 = random_components("sana-tiny", ("transformer",)).transformer.to(torch.bfloat16)
    to_fp8_(fp8)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 32, 16, 24, generator=g).bfloat16()
    y = torch.randn(2, 300, base.config.caption_channels, generator=g).bfloat16()
    mask = torch.ones(2, 300, dtype=torch.long)
    mask[1, 40:] = 0
    errors = []
    for t in (999.0, 750.0, 500.0, 250.0, 20.0):
        ts = torch.full((2,), t)
        with torch.no_grad():
            errors.append(_rel(fp8(x, ts, y, mask), base(x, ts, y, mask)))
    assert all(1e-4 < e <= FP8_BOUND for e in errors), errors


def test_torch_pipeline_runs_fp8_layers(tiny):
    from sana_deploy.runtime.pipeline import SanaDeployPipeline

    args = dict(height=256, width=256, num_inference_steps=2, resolution_binning=False, output_type="latent")
    ref = SanaDeployPipeline.from_components(random_components("sana-tiny"), backend="torch", precision="bf16")
    pipe = SanaDeployPipeline.from_components(
        random_components("sana-tiny"), backend="torch", precision="bf16", quantize="fp8"
    )
    a = ref("a red fox", generator=0, **args).images
    b = pipe("a red fox", generator=0, **args).images
    assert 1e-4 < _rel(b, a) <= 0.1
    with pytest.raises(SanaDeployError, match="build FP8 engines"):
        SanaDeployPipeline.from_components(tiny, backend="onnxruntime", quantize="fp8")
    with pytest.raises(SanaDeployError, match="int8 needs calibrated graphs"):
        SanaDeployPipeline.from_components(tiny, backend="torch", quantize="int8")


def test_fp8_transformer_traces_with_torch_export():
    """What the aoti backend compiles: torch.export of the spec's wrapper with FP8 layers, dynamic latent size."""
    from sana_deploy.export import SPECS

    c = random_components("sana-tiny", ("transformer",))
    spec = SPECS["transformer_cached"](c)
    module = spec.wrap(c).to(torch.bfloat16).eval()
    assert len(to_fp8_(module)) == 10 * c.preset.transformer.num_layers  # found through the wrapper
    inputs = spec.dummy_inputs(c, {"batch": 2, "latent_h": 8, "latent_w": 12, "text_len": 20})
    with torch.no_grad():
        program = torch.export.export(module, (), kwargs=inputs)
        eager = module(**inputs)
        traced = program.module()(**inputs)
    eager = eager[0] if isinstance(eager, (tuple, list)) else eager
    traced = traced[0] if isinstance(traced, (tuple, list)) else traced
    assert _rel(traced, eager) < 1e-2
    assert any(n.target == torch.ops.aten.clamp.default for n in program.graph.nodes)  # the activation quantizer


def test_bench_fp8_contenders_say_why_they_cannot_run_here():
    from sana_deploy.bench.case import BenchCase
    from sana_deploy.bench.contenders import parse_backends

    case = BenchCase("sana-tiny", 512, 2, 4.5, "bf16", "cpu")
    for contender in parse_backends("torch[quantize=fp8],aoti[precision=fp8]", add_baseline=False):
        assert "FP8 layers need a CUDA GPU" in contender.unavailable(case)
    assert parse_backends("torch", add_baseline=False)[0].unavailable(case) is None
    with pytest.raises(SanaDeployError, match="only fp8"):
        parse_backends("torch[quantize=int4]", add_baseline=False)
