"""int8 on x86 CPUs without VNNI: 7-bit weights, because their int8 GEMMs saturate.

ONNX Runtime's and OpenVINO's CPU int8 kernels multiply uint8 activations by int8 weights. On x86 CPUs with VNNI
(``avx512_vnni``, ``avx_vnni``, AMX) one instruction accumulates the products in int32. Without it (AVX2, AVX-512
without VNNI: AMD Zen 2/3, many Intel desktop and older server parts) the kernels use ``vpmaddubsw``, which adds two
adjacent u8 x s8 products into a *saturating int16*: 255 x 127 x 2 = 64770 does not fit in 32767, so a row of
large activations against large weights is clipped. Measured here: a u8/s8 Q/DQ MatMul with weights at +-127 is 50%
off in ONNX Runtime's fused kernel on an AVX2 CPU and exact on the reference path; sana-tiny's int8 transformer is
5-9% off fp32 instead of under 3%.

The remedy both vendors document is 7-bit weights (NNCF's ``OverflowFix.ENABLE``, ONNX Runtime's ``reduce_range``):
255 x 64 x 2 = 32640 fits. The recipe records the weight bits (``QuantRecipe.weight_bits``); by default a CPU recipe
gets 7 bits when the CPU that calibrates it saturates, and 8 otherwise. Graphs made on a VNNI machine for a fleet of
AVX2 machines need ``--weight-bits 7`` explicitly. TensorRT's int8 (GPU) has no such limit: its recipes keep 8 bits.
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

from sana_deploy.errors import fail
from sana_deploy.export.quantized import QuantizeError

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
WEIGHT_BITS = (7, 8)
SATURATING_TOOLS = ("nncf", "onnxruntime")  # their graphs run on the CPU kernels above
CPU_INT8_BACKENDS = ("onnxruntime", "openvino")


@cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo``; None where they cannot be read (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return None


def int8_saturates(flags: frozenset[str] | None = None, machine: str | None = None) -> bool:
    """Whether this CPU's int8 kernels saturate (x86 without VNNI). An x86 CPU whose flags cannot be read counts as
    saturating (7-bit weights are safe everywhere); ARM and other CPUs do not saturate."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    flags = cpu_flags() if flags is None else flags
    return flags is None or not any(f in flags for f in VNNI_FLAGS)


def default_weight_bits(mode: str, tool: str) -> int:
    """7 for an int8 CPU recipe calibrated on a CPU whose int8 kernels saturate, else 8."""
    return 7 if mode == "int8" and tool in SATURATING_TOOLS and int8_saturates() else 8


def required_weight_bits(mode: str, backend: str) -> int | None:
    """7 where ``backend`` runs int8 graphs on this CPU's saturating kernels (only 7-bit-weight graphs are usable
    there), None where any recipe is."""
    return 7 if mode == "int8" and backend in CPU_INT8_BACKENDS and int8_saturates() else None


def check_weight_bits(bits: int, mode: str, tool: str) -> int:
    if bits not in WEIGHT_BITS:
        fail(f"--weight-bits must be 7 or 8, got {bits}.", QuantizeError)
    if bits == 7 and (mode != "int8" or tool not in SATURATING_TOOLS):
        fail(
            f"--weight-bits 7 is for int8 CPU graphs (tools {', '.join(SATURATING_TOOLS)}); {mode} with {tool} "
            "keeps 8 bits (TensorRT's int8 does not saturate).",
            QuantizeError,
        )
    return bits


__all__ = ["check_weight_bits", "cpu_flags", "default_weight_bits", "int8_saturates", "required_weight_bits"]
