"""Analytic FLOP count of one Sana transformer forward, and the peak rate of the device it ran on.

Counts 2 FLOPs per multiply-accumulate of every matmul/conv (docs/SANA.md#flop-estimate);
element-wise work (norms, activations, modulation) is left out, as is usual for "model FLOPs".
Check: 1.6B at 1024² is about 3.0 TFLOP per image per step (the rough parameter-count estimate is ~3.2).
"""

from __future__ import annotations

import re

from sana_deploy.models.config import LATENT_CHANNELS, LINEAR_HEAD_DIM, TransformerConfig
from sana_deploy.models.transformer import TIMESTEP_CHANNELS

__all__ = ["transformer_flops", "device_peak_tflops"]


def transformer_flops(
    cfg: TransformerConfig, batch: int, latent_h: int, latent_w: int, text_len: int = 300, caption_kv: bool = True
) -> float:
    """FLOPs of one transformer forward over ``batch`` latents (CFG doubles the batch).

    caption_kv: whether the graph computes the caption projection and every block's cross-attention K/V
    (the plain transformer does; the cached step graph of the transformer split does not).
    """
    n, c, f, lt = latent_h * latent_w, cfg.hidden_size, cfg.ffn_hidden, text_len
    per_block = (
        2 * n * c * 3 * c  # self-attention q, k, v
        + 2 * 2 * n * c * LINEAR_HEAD_DIM  # linear attention: k^T v and q (k^T v)
        + 2 * 2 * n * c  # normaliser: sum k, q . sum k
        + 2 * n * c * c  # self-attention out projection
        + 2 * n * c * c  # cross-attention q
        + 2 * 2 * n * lt * c  # cross-attention scores and weighted values
        + 2 * n * c * c  # cross-attention out projection
        + 2 * n * c * 2 * f  # Mix-FFN inverted 1x1 conv
        + 2 * n * 2 * f * 9  # Mix-FFN depthwise 3x3
        + 2 * n * f * c  # Mix-FFN point-wise 1x1 conv
    )
    per_sample = cfg.num_layers * per_block
    per_sample += 2 * n * LATENT_CHANNELS * c * 2  # patch embed + final projection
    per_sample += 2 * (TIMESTEP_CHANNELS * c + c * c + c * 6 * c)  # timestep MLP + adaLN-single
    if caption_kv:
        per_sample += 2 * lt * (cfg.caption_channels * c + c * c)  # caption projection
        per_sample += cfg.num_layers * 2 * lt * c * 2 * c  # every block's K and V of the caption
    return float(batch * per_sample)


# Dense peak TFLOP/s by GPU name (tensor cores, no sparsity), for bf16/fp16 and tf32 math.
_GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    (r"H200", {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7}),
    (r"H100.*PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0}),
    (r"H100", {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7}),
    (r"A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0}),
    (r"L40S", {"bf16": 362.1, "fp16": 362.1, "fp32": 183.0}),
    (r"L4\b", {"bf16": 121.0, "fp16": 121.0, "fp32": 60.0}),
    (r"4090", {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6}),
]


def device_peak_tflops(device: dict, precision: str) -> tuple[float | None, str]:
    """Peak TFLOP/s of the benchmarked device for ``precision`` and where the number comes from.

    GPUs: datasheet dense tensor-core peaks (fp32 means TF32). CPUs: cores x clock x FLOP/cycle from the
    CPU flags (AVX-512: 64, AVX2+FMA: 32 fp32 FLOP per cycle per core) -- an estimate, labelled as such.
    """
    gpu = device.get("gpu") or {}
    if gpu.get("name"):
        for pattern, peaks in _GPU_PEAKS:
            if re.search(pattern, gpu["name"]):
                return peaks.get(precision), "datasheet dense tensor-core peak"
        return None, f"no peak known for {gpu['name']}"
    cpu = device.get("cpu") or {}
    mhz, cores, flags = cpu.get("mhz"), cpu.get("cores_used") or cpu.get("logical_cores"), cpu.get("flags", "")
    if not mhz or not cores or precision != "fp32":
        return None, "unknown"
    per_cycle = 64 if "avx512f" in flags else 32 if "fma" in flags else 8
    return cores * mhz * 1e6 * per_cycle / 1e12, f"estimate: {cores} cores x {mhz:.0f} MHz x {per_cycle} FLOP/cycle"
