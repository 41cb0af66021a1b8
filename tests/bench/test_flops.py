"""The analytic FLOP count against the estimate in docs/SANA.md (flop-estimate) and hand arithmetic."""

from __future__ import annotations

import pytest

from sana_deploy.bench.flops import device_peak_tflops, transformer_flops
from sana_deploy.models.config import get_preset


def test_flops_match_reference_budget():
    t = get_preset("sana-1.6b-1024").transformer
    per_image_step = transformer_flops(t, 1, 32, 32)
    assert 2.8e12 < per_image_step < 3.3e12  # reference: ~3.2 TFLOP per 1024² forward (its rough estimate)
    t4k = get_preset("sana-1.6b-4k").transformer
    total = transformer_flops(t4k, 2, 128, 128) * 20  # CFG batch 2, 20 steps
    assert total / 989.4e12 == pytest.approx(1.85, abs=0.1)  # the ~1.9 s FLOP floor on one H100


def test_flops_scale_and_caption_kv():
    t = get_preset("sana-0.6b-512").transformer
    one, two = transformer_flops(t, 1, 16, 16), transformer_flops(t, 2, 16, 16)
    assert two == pytest.approx(2 * one)
    cached = transformer_flops(t, 1, 16, 16, caption_kv=False)
    kv = t.num_layers * 2 * 300 * t.hidden_size * 2 * t.hidden_size + 2 * 300 * (2304 * 1152 + 1152 * 1152)
    assert one - cached == pytest.approx(kv)


def test_device_peaks():
    assert device_peak_tflops({"gpu": {"name": "NVIDIA H100 80GB HBM3"}}, "bf16")[0] == pytest.approx(989.4)
    assert device_peak_tflops({"gpu": {"name": "NVIDIA H100 PCIe"}}, "bf16")[0] == pytest.approx(756.0)
    assert device_peak_tflops({"gpu": {"name": "Some Future GPU"}}, "bf16")[0] is None
    cpu = {"gpu": None, "cpu": {"mhz": 2000.0, "cores_used": 2, "flags": "avx2 fma"}}
    peak, source = device_peak_tflops(cpu, "fp32")
    assert peak == pytest.approx(2 * 2000e6 * 32 / 1e12) and "estimate" in source
