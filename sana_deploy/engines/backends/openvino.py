"""``openvino``: the ONNX export as an OpenVINO IR for the CPU, bounded to the profile, compiled at load with an
inference-precision hint (f32, or bf16 on CPUs with AVX512_BF16/AMX), or a quantized (Q/DQ) graph run in int8.

OpenVINO's ONNX reader has no rule for the ``sana`` local functions, so the build inlines them first
(``sana_deploy.export.inline``). Every input dimension is bounded by the profile's min/max (static profiles fix
them, except the batch). The IR keeps the fp32 weights; bf16 is a compile-time hint, so ``--precision bf16``
builds from the fp32 export (:meth:`export_precision`). The build compiles the IR once with the entry's hint, so a
graph OpenVINO cannot compile, or bf16 on a CPU without bf16, fails at build time with the reason. In an int8 build
the transformer graphs are the Q/DQ exports, and the text encoder's weights are compressed to int8 (weight-only).

bf16 means bf16 GEMMs and convolutions, everything else in f32 (what PyTorch's autocast does). Left to itself, the
CPU plugin runs every float node in bf16 under the bf16 hint: the residual stream, the norms, the adaLN modulation,
the element-wise ops. At 0.6B dimensions (28 blocks) that is 1.4e-2 relative L2 error per transformer step against
fp32, while rounding only the GEMMs' operands gives about half of it. The plugin keeps a node's original precision
when the node carries the ``precise`` runtime attribute (conversion disabled), which the Python API cannot set but
the IR format stores; a bf16 build writes it into ``model.xml`` for every layer but :data:`BF16_OPS`
(:func:`keep_f32_outside_gemms`) and checks the compiled model (:func:`check_bf16_scope`).
"""

from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from sana_deploy.engines.backends.base import Backend, BuildJob, BuildOptions, BuildOutput, EngineBuildError
from sana_deploy.errors import SanaDeployError, fail
from sana_deploy.export.inline import write_inlined
from sana_deploy.fileio import atomic_path
from sana_deploy.runners.openvino import HINTS, check_precision, compile_model

ARTIFACT = "model.xml"  # the IR; its weights are model.bin beside it
# An int8 build's text encoder: Gemma-2 at batch 1-2 is bound by reading its weights, so its MatMul weights are
# stored in int8 (per-channel, asymmetric; activations stay float, no calibration). Reported as its own stage.
WEIGHT_ONLY_INT8 = ("text_encoder",)
# IR layer types that a bf16 engine runs in bf16; every other float layer keeps f32
BF16_OPS = ("MatMul", "Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData")
_IO_AND_CONSTANTS = ("Parameter", "Result", "Const")
# OpenVINO's "precise" runtime attribute (disable precision conversion) as the IR stores it: no conversion of the
# layer's float precision to a reduced one, which the CPU plugin reads as "keep the original precision"
_KEEP_F32 = {"name": "precise", "version": "0", "value": "dynamic:f16"}


class OpenVinoBackend(Backend):
    name = "openvino"
    package = "openvino"
    module = "openvino"
    extra = "openvino"

    def target_device(self, options: BuildOptions) -> str:
        return "cpu"

    def export_precision(self, precision: str) -> str:
        """bf16 is the compile-time hint over the fp32 graph (OpenVINO's CPU plugin converts it)."""
        return "fp32" if precision in ("bf16", "fp16") else precision

    def build(self, job: BuildJob) -> BuildOutput:
        import openvino as ov

        try:
            hint = check_precision(job.precision)
        except SanaDeployError as exc:
            fail(f"Cannot build the openvino engine for {job.component}: {exc}", EngineBuildError)
        job.progress(f"reading {job.onnx_path.name} into OpenVINO")
        with tempfile.TemporaryDirectory(dir=job.out_dir, prefix=".inline-") as tmp:
            inlined = write_inlined(job.onnx_path, Path(tmp))
            try:
                model = ov.Core().read_model(str(inlined))
            except Exception as exc:  # noqa: BLE001 (OpenVINO raises RuntimeError subclasses with long texts)
                last = (str(exc).strip().splitlines() or [""])[-1][:300]
                fail(f"OpenVINO cannot read the {job.component} graph: {last}", EngineBuildError)
            model.reshape({name: _bounded(ov, s) for name, s in job.input_shapes.items()})
            weights = "fp32"
            if job.precision == "int8" and job.component in WEIGHT_ONLY_INT8:
                model, weights = _compress_weights(model, job), "int8 weight-only (nncf.compress_weights)"
            ov.save_model(model, str(job.out_dir / ARTIFACT), compress_to_fp16=False)
            del model
        info = dict(self.key_flags(job.precision))
        if hint == "bf16":
            info["f32_layers"] = keep_f32_outside_gemms(job.out_dir / ARTIFACT)
        job.progress(f"compiling for the CPU ({hint})")
        try:  # what loading will do: fails now, with the reason, instead of at the first request
            _core, compiled = compile_model(job.out_dir / ARTIFACT, job.precision)
        except SanaDeployError as exc:
            fail(f"OpenVINO cannot compile the {job.component} engine ({job.precision}): {exc}", EngineBuildError)
        except Exception as exc:  # noqa: BLE001
            last = (str(exc).strip().splitlines() or [""])[-1][:300]
            fail(f"OpenVINO cannot compile the {job.component} engine ({job.precision}): {last}", EngineBuildError)
        if hint == "bf16":
            info["runtime_precisions"] = check_bf16_scope(compiled, job.component)
        del compiled
        return BuildOutput(ARTIFACT, {"hint": HINTS.get(job.precision, hint), "weights_file": "model.bin",
                                      "weights": weights, **info})  # fmt: skip

    def key_flags(self, precision: str) -> dict:
        """bf16 engines run only GEMMs/convolutions in bf16 (engines of the whole-graph bf16 are not reused)."""
        return {"bf16_scope": "gemm"} if precision == "bf16" else {}

    def inspect(self, artifact: Path, meta: dict) -> dict:
        import openvino as ov

        model = ov.Core().read_model(str(artifact))
        kinds: dict[str, int] = {}
        for op in model.get_ordered_ops():
            kinds[op.get_type_name()] = kinds.get(op.get_type_name(), 0) + 1
        return {
            "inputs": {p.get_any_name(): str(p.get_partial_shape()) for p in model.inputs},
            "outputs": {p.get_any_name(): str(p.get_partial_shape()) for p in model.outputs},
            "ops": len(model.get_ordered_ops()),
            "fake_quantize": kinds.get("FakeQuantize", 0) + kinds.get("FakeConvert", 0),
        }


def keep_f32_outside_gemms(xml_path: Path) -> int:
    """Mark every float layer of the IR at ``xml_path`` but :data:`BF16_OPS` to keep its precision; returns how many.

    The attribute goes in the layer's ``rt_info`` element, where ``openvino.save_model`` writes runtime attributes
    and the IR reader restores them. The file is rewritten atomically.
    """
    tree = ET.parse(xml_path)
    marked = 0
    for layer in tree.getroot().iter("layer"):
        if layer.get("type") in BF16_OPS or layer.get("type") in _IO_AND_CONSTANTS:
            continue
        rt_info = layer.find("rt_info")
        if rt_info is None:
            rt_info = ET.Element("rt_info")
            layer.insert(1 if layer.find("data") is not None else 0, rt_info)
        if not any(a.get("name") == _KEEP_F32["name"] for a in rt_info.iter("attribute")):
            ET.SubElement(rt_info, "attribute", _KEEP_F32)
            marked += 1
    with atomic_path(xml_path) as tmp:
        tree.write(tmp, encoding="utf-8", xml_declaration=True)
    return marked


def runtime_precisions(compiled) -> dict[str, dict[str, int]]:  # noqa: ANN001 (openvino.CompiledModel)
    """How many nodes of each runtime type the compiled model executes at each precision (``{type: {prec: n}}``)."""
    counts: dict[str, dict[str, int]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        per_kind = counts.setdefault(kind, {})
        per_kind[precision] = per_kind.get(precision, 0) + 1
    return counts


def check_bf16_scope(compiled, component: str) -> dict[str, dict[str, int]]:  # noqa: ANN001
    """Refuse a bf16 engine whose GEMMs are not in bf16 or whose element-wise ops mostly are (marks not read).

    Nodes the plugin's fusions create (RMS norms, attention subgraphs, some element-wise chains) do not inherit the
    mark and run in bf16; the rest of the element-wise ops must stay f32.
    """
    import openvino as ov

    counts = runtime_precisions(compiled)
    gemms = sum(counts.get(k, {}).get("bf16", 0) for k in ("FullyConnected", "MatMul", "Convolution"))
    eltwise = counts.get("Eltwise", {})
    if gemms == 0 or eltwise.get("bf16", 0) > eltwise.get("f32", 0):
        fail(
            f"OpenVINO {ov.get_version()} compiled the {component} bf16 engine with {gemms} GEMMs in bf16 and "
            f"{eltwise.get('bf16', 0)} of {eltwise.get('bf16', 0) + eltwise.get('f32', 0)} element-wise ops in bf16: "
            "it did not apply the 'precise' layer attribute that keeps everything but GEMMs in f32. Use --precision "
            "fp32, or another OpenVINO release.",
            EngineBuildError,
        )
    return counts


def _compress_weights(model, job: BuildJob):  # noqa: ANN001, ANN202 (openvino.Model)
    try:
        import nncf
    except ImportError:
        fail(
            "An int8 openvino build stores the text encoder's weights in int8 with NNCF, which is not installed: "
            "pip install 'sana-deploy[quantize]'.",
            EngineBuildError,
        )
    job.progress("int8 weight-only compression (NNCF)")
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)


def _bounded(ov, shape) -> object:  # noqa: ANN001 (openvino module, ShapeTuple)
    """A PartialShape with each axis bounded by the profile's min and max."""
    lo = shape.min if isinstance(shape.min, tuple) else (shape.min,)
    hi = shape.max if isinstance(shape.max, tuple) else (shape.max,)
    return ov.PartialShape(
        [ov.Dimension(int(a)) if a == b else ov.Dimension(int(a), int(b)) for a, b in zip(lo, hi, strict=True)]
    )
