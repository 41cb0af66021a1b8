"""The post-training quantizers that place Q/DQ nodes in a prepared (inlined, weight-folded) fp32 graph.

* ``nncf`` (int8, the CPU default): NNCF's ONNX PTQ with ``ModelType.TRANSFORMER`` (SmoothQuant on the quantized
  MatMuls' inputs, per-channel symmetric int8 weights, asymmetric activations, fast bias correction), activations
  then rewritten as uint8 (:func:`activations_to_uint8`). Every node but the recipe's quantized ones is in its
  ignored scope. Runs on the CPU; its graph runs in ONNX Runtime and
  OpenVINO (not TensorRT, which takes symmetric activations only).
* ``modelopt`` (fp8, and int8 for TensorRT): NVIDIA Model Optimizer's ONNX PTQ (``modelopt.onnx.quantization``),
  max calibration, symmetric Q/DQ on exactly the recipe's nodes, the rest of the graph left in fp32. It runs on a
  CPU-only machine: calibration goes through ONNX Runtime's CPU provider (``calibration_eps=["cpu"]``). It runs in a
  child process: importing it patches ONNX Runtime's quantization module for the rest of the process.
* ``onnxruntime``: ONNX Runtime's ``quantize_static`` (QDQ format; int8: per-channel int8 weights, uint8
  activations, min/max; fp8: E4M3 weights and activations, distribution calibration), Q/DQ on the quantized nodes'
  inputs only (not on their products). The fallback where the others are not installed.

Each writes ``dst`` (external data beside it); :func:`run_tool` then confines the quantized values to the recipe's
GEMMs (:func:`~sana_deploy.export.quantized.confine_qdq`) and saves it as ``model.onnx`` + ``model.onnx.data`` in
the destination folder.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from sana_deploy.errors import fail
from sana_deploy.export.quantized import LayerPlan, QuantizeError, confine_qdq

Feeds = list[dict]
# Samples a tool calibrates on. NNCF reduces statistics as it goes; Model Optimizer and ONNX Runtime's quantizer keep
# every calibrated activation of every sample in memory (0.6B at 512², CFG pair: ~0.5 GB a sample), so they get an
# even spread of the recorded steps (every prompt, early to late timesteps).
# Calibration samples a tool is given (spread evenly over the recorded steps and prompts). NNCF keeps statistics per
# sample: at 0.6B dimensions, 80 samples (4 prompts x 20 steps) took more than 23 GB and the process was killed.
MAX_SAMPLES = {"nncf": 32, "modelopt": 16, "onnxruntime": 16}
_PACKAGES = {"nncf": "nncf", "modelopt": "modelopt", "onnxruntime": "onnxruntime"}
_EXTRA = "pip install 'sana-deploy[quantize]'"


def tool_available(tool: str) -> bool:
    return importlib.util.find_spec(_PACKAGES[tool]) is not None


def tool_version(tool: str) -> str:
    from sana_deploy.versions import package_version

    return package_version({"modelopt": "nvidia-modelopt"}.get(tool, tool)) or "unknown"


class FeedReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over recorded feeds (with Model Optimizer's
    ``get_first``/``rewind``)."""

    def __init__(self, feeds: Feeds) -> None:
        self.feeds, self.i = feeds, 0

    def get_next(self) -> dict | None:
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def get_first(self) -> dict:
        return self.feeds[0]

    def rewind(self) -> None:
        self.i = 0

    def __len__(self) -> int:
        return len(self.feeds)

    def __iter__(self):  # noqa: ANN204
        return iter(self.feeds)


def spread(feeds: Feeds, limit: int | None) -> Feeds:
    """At most ``limit`` feeds, evenly spaced over the recording (all of them when ``limit`` is None)."""
    if limit is None or len(feeds) <= limit:
        return list(feeds)
    index = sorted({round(i * (len(feeds) - 1) / (limit - 1)) for i in range(limit)})
    return [feeds[i] for i in index]


def _reader(feeds: Feeds) -> FeedReader:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(FeedReader, CalibrationDataReader):
        pass

    return Reader(feeds)


def run_tool(
    tool: str,
    mode: str,
    src: Path,
    out_dir: Path,
    plan: LayerPlan,
    feeds: Feeds,
    say: Callable,
    weight_bits: int = 8,
) -> Path:
    """Quantize the prepared graph ``src`` (its external data beside it) into ``out_dir/model.onnx``.
    ``weight_bits`` 7: int8 weights in half their range, for CPUs whose int8 kernels saturate
    (:mod:`sana_deploy.export.int8_overflow`; nncf and onnxruntime only)."""
    if not tool_available(tool):
        fail(f"Quantization tool {tool!r} is not installed: {_EXTRA}.", QuantizeError)
    if not feeds:
        fail("The calibration set is empty: nothing was recorded.", QuantizeError)
    work = src.parent / f"{tool}-out.onnx"
    feeds = spread(feeds, MAX_SAMPLES[tool])
    bits = f", {weight_bits}-bit weights" if weight_bits != 8 else ""
    say(f"{tool} {mode}: {len(plan.quantize)} layers, {len(feeds)} calibration samples{bits}")
    if tool == "modelopt":
        _modelopt(mode, src, work, plan, feeds)
    else:
        {"nncf": _nncf, "onnxruntime": _onnxruntime}[tool](mode, src, work, plan, feeds, weight_bits == 7)
    model = onnx.load(str(work), load_external_data=True)
    confine_qdq(model, set(plan.quantize))
    out = out_dir / "model.onnx"
    onnx.save_model(
        model, str(out), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data",
        size_threshold=1024,
    )  # fmt: skip
    return out


def _nncf(mode: str, src: Path, dst: Path, plan: LayerPlan, feeds: Feeds, half_range: bool = False) -> None:
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    logging.getLogger("nncf").setLevel(logging.WARNING)
    model = onnx.load(str(src), load_external_data=False)
    keep = set(plan.quantize)
    ignored = [n.name for n in model.graph.node if n.name and n.name not in keep]
    quantized = nncf.quantize(
        model,
        nncf.Dataset(feeds),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(feeds),
        ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
        advanced_parameters=AdvancedQuantizationParameters(
            backend_params={"external_data_dir": str(src.parent.resolve())},  # NNCF wants it absolute
            **({"overflow_fix": OverflowFix.ENABLE} if half_range else {}),  # 7-bit weights on every MatMul
        ),
    )
    from onnx.external_data_helper import load_external_data_for_model

    load_external_data_for_model(quantized, str(src.parent))
    activations_to_uint8(quantized)
    onnx.save_model(quantized, str(dst), save_as_external_data=True, location=dst.name + ".data")


def activations_to_uint8(model: onnx.ModelProto) -> int:
    """Rewrite asymmetric int8 activation Q/DQ pairs (per-tensor zero point) as uint8 with the zero point + 128:
    the same values. ONNX Runtime's CPU provider fuses Q/DQ MatMuls into ``MatMulIntegerToFloat`` only with uint8
    activations; its own S8-to-U8 rewrite skips a quantized input shared by several MatMuls (the Q/K/V
    projections), which then ran as DequantizeLinear + fp32 MatMul. Returns how many zero points were rewritten."""
    inits = {t.name: t for t in model.graph.initializer}
    renamed: dict[str, str] = {}
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear" or len(q.input) < 3 or q.input[2] not in inits:
            continue
        zp = inits[q.input[2]]
        if zp.data_type != onnx.TensorProto.INT8 or list(zp.dims):
            continue
        if zp.name not in renamed:
            value = numpy_helper.to_array(zp).astype(np.int32) + 128
            model.graph.initializer.append(numpy_helper.from_array(value.astype(np.uint8), f"{zp.name}.u8"))
            renamed[zp.name] = f"{zp.name}.u8"
        q.input[2] = renamed[zp.name]
        for dq in model.graph.node:
            if dq.op_type == "DequantizeLinear" and dq.input[0] == q.output[0]:
                dq.input[2] = renamed[zp.name]
    new = set(renamed.values())
    retyped = {q.output[0] for q in model.graph.node if q.op_type == "QuantizeLinear" and q.input[2] in new}
    kept = [v for v in model.graph.value_info if v.name not in retyped]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    used = {i for n in model.graph.node for i in n.input}
    kept_inits = [t for t in model.graph.initializer if t.name in used or t.name not in renamed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept_inits)
    return len(renamed)


def _modelopt(mode: str, src: Path, dst: Path, plan: LayerPlan, feeds: Feeds) -> None:
    """In a child process: Model Optimizer patches ONNX Runtime's quantization module when it is imported (its
    ``ort_patching``), after which ONNX Runtime's own ``quantize_static`` fails in the same process. The feeds go
    to the child as ``.npz`` files beside the graph."""
    folder = src.parent / "modelopt-feeds"
    folder.mkdir(exist_ok=True)
    for i, feed in enumerate(feeds):
        np.savez(folder / f"{i:05d}.npz", **feed)
    (folder / "nodes.json").write_text(json.dumps(list(plan.quantize)))
    cmd = [sys.executable, "-m", "sana_deploy.quantize.tools", "modelopt", mode, str(src), str(dst), str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    shutil.rmtree(folder, ignore_errors=True)
    if done.returncode != 0 or not dst.exists():
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])[-600:]
        fail(f"NVIDIA Model Optimizer could not quantize {src.name} ({mode}): {tail}", QuantizeError)


def _modelopt_child(mode: str, src: Path, dst: Path, folder: Path) -> None:
    from modelopt.onnx.quantization import quantize

    for name in ("modelopt", "modelopt.onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    feeds = [dict(np.load(f)) for f in sorted(folder.glob("*.npz"))]
    quantize(
        str(src),
        quantize_mode=mode,
        calibration_data_reader=_reader(feeds),
        calibration_method="max",
        calibration_eps=["cpu"],
        nodes_to_quantize=json.loads((folder / "nodes.json").read_text()),
        high_precision_dtype="fp32",
        use_external_data_format=True,
        output_path=str(dst),
        log_level="ERROR",
    )


def _onnxruntime(mode: str, src: Path, dst: Path, plan: LayerPlan, feeds: Feeds, half_range: bool = False) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    int8 = mode == "int8"
    quantize_static(
        str(src),
        str(dst),
        _reader(feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"],
        nodes_to_quantize=list(plan.quantize),
        per_channel=int8,
        reduce_range=half_range,  # 7-bit weights
        activation_type=QuantType.QUInt8 if int8 else QuantType.QFLOAT8E4M3FN,
        weight_type=QuantType.QInt8 if int8 else QuantType.QFLOAT8E4M3FN,
        calibrate_method=CalibrationMethod.MinMax if int8 else CalibrationMethod.Distribution,
        use_external_data_format=True,
        # Q/DQ on the inputs only: by default the quantizer also rounds each product to uint8 (PLACEMENT)
        extra_options={"WeightSymmetric": True, "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]},
    )


__all__ = ["FeedReader", "run_tool", "tool_available", "tool_version"]

if __name__ == "__main__":  # the Model Optimizer child process (see _modelopt)
    _modelopt_child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
