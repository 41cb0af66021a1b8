"""OpenVINO on the CPU: one compiled model per graph, with an inference-precision hint (f32 or bf16).

The graph is an OpenVINO IR (what the ``openvino`` engine backend writes) or an ONNX file without ``sana`` local
functions (OpenVINO's ONNX reader has no rule for them: inline them first, ``sana_deploy.export.inline``). Inputs and
outputs are the export spec's, fp32 floats and int64 ids/masks at the boundary, whatever the hint.

bf16 on the CPU: the plugin runs every floating-point node in bf16 except the "graph tail" (nodes between a model
output and the last MatMul/FullyConnected/Convolution before it). That puts the angle of a sinusoidal embedding in
bf16: ``timestep * freq`` reaches ~1000 rad, where bf16's 8-bit mantissa is off by up to 4 rad, and the timestep
embedding becomes noise (measured on sana-tiny: 27% relative L2 error of the transformer output instead of 0.6%).
PyTorch computes these angles in fp32 under bf16 too. The input of every ``Sin``/``Cos`` is made an extra
(discarded) output: the plugin then keeps the angle computation in f32 as graph tail. Gemma-2's rotary embedding is
covered the same way. The bf16 engines sana-deploy builds also carry OpenVINO's ``precise`` attribute on every layer
but the GEMMs (``sana_deploy.engines.backends.openvino.keep_f32_outside_gemms``: the Python API cannot set it, the
IR stores it), which keeps the angles f32 too, except in nodes the plugin's fusions create; the extra outputs stay
for those and for IRs without the attribute.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path

import numpy as np
import torch

from sana_deploy.errors import SanaDeployError, fail
from sana_deploy.runners.base import Runner, Shapes
from sana_deploy.runners.onnxruntime import usable_cores

HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32", "fp8": "f32"}  # int8: the Q/DQ graph's float parts in f32
_ANGLE_OPS = ("Sin", "Cos")
KEEP_F32_PREFIX = "sana_deploy.keep_f32."


class OpenVinoError(SanaDeployError):
    """OpenVINO cannot run a graph at the requested precision on this CPU (the message says what to use)."""


@cache
def cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of this CPU (``BF16``, ``FP16``, ``INT8``, ...)."""
    import openvino as ov

    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def check_precision(precision: str) -> str:
    """The OpenVINO inference-precision hint for ``precision``, or a clear error when this CPU cannot run it."""
    if precision == "fp16":
        if "FP16" not in cpu_capabilities():
            fail(
                "OpenVINO runs fp16 on the CPU only with AVX512-FP16 or AMX-FP16, which this CPU lacks "
                f"(capabilities: {', '.join(cpu_capabilities())}). Use --precision bf16 (where supported) or fp32.",
                OpenVinoError,
            )
        return "f16"
    if precision not in HINTS:
        fail(f"OpenVINO has no precision {precision!r}; use fp32, bf16 or --quantize int8.", OpenVinoError)
    if precision == "fp8":
        fail(
            "OpenVINO on the CPU has no fp8 kernels: fp8 is for TensorRT (--backend tensorrt or tensorrt-rtx). "
            "On a CPU use --quantize int8 or --precision bf16.",
            OpenVinoError,
        )
    if precision == "bf16" and "BF16" not in cpu_capabilities():
        fail(
            "This CPU has no bf16 support (OpenVINO needs AVX512_BF16 or AMX; capabilities: "
            f"{', '.join(cpu_capabilities())}), so --precision bf16 would not run in bf16 here. Use --precision fp32, "
            "or --quantize int8 for the transformer (int8 with VNNI/AVX2).",
            OpenVinoError,
        )
    return HINTS[precision]


def keep_angles_f32(model) -> int:  # noqa: ANN001 (openvino.Model)
    """Make the input of every Sin/Cos an extra output (see the module doc); returns how many were added."""
    ports, seen = [], set()
    for op in model.get_ordered_ops():
        if op.get_type_name() in _ANGLE_OPS:
            port = op.input_value(0)
            key = (port.get_node().get_friendly_name(), port.get_index())
            if key not in seen:
                seen.add(key)
                ports.append(port)
    for i, port in enumerate(ports):
        port.get_tensor().add_names({f"{KEEP_F32_PREFIX}{i}"})
    if ports:
        model.add_outputs(ports)
    return len(ports)


def compile_model(path: str | Path, precision: str, threads: int | None = None):  # noqa: ANN201
    """Read ``path`` (IR or ONNX) and compile it for the CPU at ``precision``; returns (core, compiled model)."""
    import openvino as ov

    hint = check_precision(precision)
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except Exception as exc:  # noqa: BLE001 (OpenVINO raises RuntimeError subclasses with long texts)
        first = (str(exc).strip().splitlines() or [""])[-1][:300]
        fail(f"OpenVINO cannot read {path}: {first}. ONNX graphs must have their sana functions inlined.")
    if hint == "bf16":
        keep_angles_f32(model)
    config = {
        "INFERENCE_PRECISION_HINT": hint,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": int(threads or usable_cores()),
    }
    return core, core.compile_model(model, "CPU", config)


class OpenVinoRunner(Runner):
    """One compiled model and one infer request per calling thread, so threads may call it at once."""

    backend = "openvino"
    reentrant = True

    def __init__(
        self,
        path: str | Path,
        component: str = "",
        precision: str = "fp32",
        shapes: Shapes | None = None,
        output_names: list[str] | None = None,
        threads: int | None = None,
    ) -> None:
        self._core, self.compiled = compile_model(path, precision, threads)
        inputs = [p.get_any_name() for p in self.compiled.inputs]
        outputs = [p.get_any_name() for p in self.compiled.outputs if not _is_extra(p)]
        super().__init__(
            component or Path(path).parent.name, inputs, output_names or outputs, precision, shapes, str(path)
        )
        self.path = Path(path)
        self.hint = HINTS.get(precision, precision)
        self._local = threading.local()

    def _request(self):  # noqa: ANN202
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def infer(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feed = {}
        for name, t in inputs.items():
            t = t.detach().cpu()
            feed[name] = np.ascontiguousarray(t.float().numpy() if t.is_floating_point() else t.long().numpy())
        request = self._request()
        request.infer(feed)
        return {n: torch.from_numpy(np.array(request.get_tensor(n).data, copy=True)) for n in self.output_names}


def _is_extra(port) -> bool:  # noqa: ANN001
    return any(n.startswith(KEEP_F32_PREFIX) for n in port.get_names())


__all__ = ["HINTS", "OpenVinoError", "OpenVinoRunner", "check_precision", "compile_model", "cpu_capabilities"]
