"""Quantized engines: a build option of the one builder (``build_engines(..., quantize="int8")``).

The builder never calibrates: it reads the Q/DQ graphs ``sana-deploy quantize`` wrote
(``<export root>/<mode>-<digest>/<component>/``) for the transformer graphs, and the fp32 exports for the text
encoder and the DC-AE. Every engine of the build is recorded at precision ``int8``/``fp8``, and the quantized ones
carry their recipe in the key's flags, so ``find(precision="fp32")`` (or no precision) never returns one.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

from sana_deploy.engines.backends.base import Backend, BuildOptions
from sana_deploy.errors import fail
from sana_deploy.export.int8_overflow import required_weight_bits
from sana_deploy.export.quantized import (
    FP32_UNLESS_COVERED,
    QUANT_MODES,
    QUANTIZABLE,
    SELF_QUANTIZING,
    QuantizeError,
    check_backend,
    find_quantized,
    tools_for,
)

FP8_TARGETS = ("sm89", "sm120", "sm121")  # FP8 tensor cores among tensorrt-rtx's targets (Ada, Blackwell)


def split_precision(precision: str, quantize: str | None) -> tuple[str, str | None]:
    """``precision="int8"`` is ``quantize="int8"`` over fp32 graphs (what a lookup asking for int8 builds)."""
    if precision in QUANT_MODES:
        if quantize not in (None, precision):
            fail(f"--precision {precision} and --quantize {quantize} disagree; give one of them.", QuantizeError)
        return "fp32", precision
    if quantize is not None:
        if quantize not in QUANT_MODES:
            fail(f"Unknown quantization mode {quantize!r}; choose int8 or fp8.", QuantizeError)
        if precision != "fp32":
            fail(f"--quantize {quantize} quantizes the fp32 graphs; drop --precision {precision}.", QuantizeError)
    return precision, quantize


def quant_options(backend: Backend, options: BuildOptions, mode: str | None) -> BuildOptions:
    """Check that ``backend`` runs ``mode``; tensorrt-rtx fp8 builds for FP8-capable targets unless told."""
    if mode is None:
        return options
    check_backend(mode, backend.name)
    if mode == "fp8" and backend.name == "tensorrt-rtx":
        if options.targets is None:
            return dataclasses.replace(options, targets=("sm89", "sm120"))
        bad = [t for t in options.targets if t.lower().replace(".", "") not in FP8_TARGETS]
        if bad:
            fail(
                f"--quantize fp8 needs FP8 tensor cores; tensorrt-rtx targets {bad} have none. Use --targets "
                f"{','.join(FP8_TARGETS[:2])} (Ada, Blackwell), or --quantize int8 for {','.join(bad)}.",
                QuantizeError,
            )
    if mode == "fp8" and backend.name in ("tensorrt", "aoti"):
        device = backend.target_device(options)
        if device.startswith("sm") and int(device[2:]) < 89:
            fail(f"--quantize fp8 needs compute capability 8.9+ (FP8); this GPU is {device}.", QuantizeError)
        if backend.name == "aoti" and not device.startswith("sm"):  # aoti compiles for the machine it runs on
            fail(
                f"--backend {backend.name} --quantize fp8 compiles FP8 GEMMs for this machine's GPU, and it has "
                f"none ({device}). Build on a CUDA GPU of compute capability 8.9+ (Ada, Hopper, Blackwell); on a "
                f"CPU use --quantize int8 with onnxruntime or openvino.",
                QuantizeError,
            )
    return options


def quantized_export(
    root: Path, component: str, mode: str, recipe: str | None, weights_sha256: str, backend: str, model: str
) -> tuple[Path, dict] | None:
    """The Q/DQ export of ``component`` a build uses (None for graphs that are never quantized, for the caption K/V
    graph when no recipe covers it, and for backends that quantize the PyTorch model themselves), or an error with
    the command that writes it."""
    if component not in QUANTIZABLE or backend in SELF_QUANTIZING[mode]:
        return None
    tools = tools_for(mode, backend)
    bits = required_weight_bits(mode, backend)  # 7 on a CPU whose int8 kernels saturate with 8-bit weights
    found = (bits and find_quantized(root, component, mode, recipe, weights_sha256, tools, bits)) or find_quantized(
        root, component, mode, recipe, weights_sha256, tools
    )
    if found is not None and bits and found[1]["quantization"].get("weight_bits", 8) != bits:
        warnings.warn(
            f"The {mode} graph of {component} ({found[1]['quantization']['recipe']}) has 8-bit weights, and this "
            f"CPU's int8 kernels (no VNNI) saturate with them: expect several times the int8 error. Quantize on "
            f"this machine (`sana-deploy quantize --mode int8` picks 7-bit weights here) or pass --weight-bits 7.",
            stacklevel=2,
        )
    if found is None and component in FP32_UNLESS_COVERED:  # no recipe covers it: it stays fp32
        return None
    if found is None:
        other = find_quantized(root, component, mode, recipe, weights_sha256)
        if other is not None:  # there is one, for another backend's kind of Q/DQ
            check_backend(mode, backend, other[1]["quantization"]["tool"])
        which = f" recipe {recipe}" if recipe else ""
        fail(
            f"No {mode}{which} graph of {component} for these weights in {root}. Write it first: `sana-deploy "
            f"quantize --model {model} --mode {mode} --components {component.replace('_', '-')} --export-dir "
            f"{root}` (or run `sana-deploy build ... --quantize {mode}`, which calibrates on the built-in prompts).",
            QuantizeError,
        )
    return found


def quant_flags(manifest: dict) -> dict:
    """What a quantized graph adds to the cache key's flags: its recipe."""
    q = manifest.get("quantization")
    return {"quantize": {"mode": q["mode"], "recipe": q["recipe"], "tool": q["tool"]}} if q else {}


__all__ = ["FP8_TARGETS", "quant_flags", "quant_options", "quantized_export", "split_precision"]
