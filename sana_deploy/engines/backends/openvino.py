"""``openvino``: the ONNX export as an OpenVINO IR for the CPU, bounded to the profile, compiled at load with an
inference-precision hint (f32, or bf16 on CPUs with AVX512_BF16/AMX), or a quantized (Q/DQ) graph run in int8.

OpenVINO's ONNX reader has no rule for the ``sana`` local functions, so the build inlines them first
(``sana_deploy.export.inline``). Every input dimension is bounded by the profile's min/max (static profiles fix
them, except the batch). The IR keeps the fp32 weights; bf16 is a compile-time hint, so ``--precision bf16``
builds from the fp32 export (:meth:`export_precision`). The build compiles the IR once with the entry's hint, so a
graph OpenVINO cannot compile, or bf16 on a CPU without bf16, fails at build time with the reason. In an int8 build
the transformer graphs are the Q/DQ exports, and the text encoder's weights are compressed to int8 (weight-only).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from sana_deploy.engines.backends.base import Backend, BuildJob, BuildOptions, BuildOutput, EngineBuildError
from sana_deploy.errors import SanaDeployError, fail
from sana_deploy.export.inline import write_inlined
from sana_deploy.runners.openvino import HINTS, check_precision, compile_model

ARTIFACT = "model.xml"  # the IR; its weights are model.bin beside it
# An int8 build's text encoder: Gemma-2 at batch 1-2 is bound by reading its weights, so its MatMul weights are
# stored in int8 (per-channel, asymmetric; activations stay float, no calibration). Reported as its own stage.
WEIGHT_ONLY_INT8 = ("text_encoder",)


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
        job.progress(f"compiling for the CPU ({hint})")
        try:  # what loading will do: fails now, with the reason, instead of at the first request
            _core, compiled = compile_model(job.out_dir / ARTIFACT, job.precision)
        except SanaDeployError as exc:
            fail(f"OpenVINO cannot compile the {job.component} engine ({job.precision}): {exc}", EngineBuildError)
        except Exception as exc:  # noqa: BLE001
            last = (str(exc).strip().splitlines() or [""])[-1][:300]
            fail(f"OpenVINO cannot compile the {job.component} engine ({job.precision}): {last}", EngineBuildError)
        del compiled
        return BuildOutput(ARTIFACT, {"hint": HINTS.get(job.precision, hint), "weights_file": "model.bin",
                                      "weights": weights})  # fmt: skip

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
