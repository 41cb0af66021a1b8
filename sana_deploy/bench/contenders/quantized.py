"""``openvino`` and ``onnxruntime-int8``: the product pipeline over OpenVINO engines (f32, bf16 or int8) and over
ONNX Runtime engines of the int8 Q/DQ transformer graphs (``SanaDeployPipeline.from_engines``).

Options: ``openvino[precision=fp32|bf16|int8,split=1]`` (default: the case's precision); ``onnxruntime-int8[split=1]``.
An int8 contender calibrates first when no int8 recipe exists under the work folder's exports (the built-in prompts,
20 steps at 512²: ``sana_deploy.quantize.ensure_quantized``); that time is part of its ``build_s``.
"""

from __future__ import annotations

from sana_deploy.bench.case import BenchCase
from sana_deploy.bench.contenders.base import CaseContext, Prepared
from sana_deploy.bench.contenders.engines import EngineContender
from sana_deploy.contract import pipeline_components
from sana_deploy.errors import SanaDeployError, fail
from sana_deploy.runtime.pipeline import SanaDeployPipeline

OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")


class _QuantizingContender(EngineContender):
    needs_cuda = False

    def make_pipeline(self, ctx: CaseContext) -> tuple[SanaDeployPipeline, Prepared]:
        precision = self.engine_precision(ctx.case)
        notes = []
        if precision == "int8":
            from sana_deploy.quantize import ensure_quantized

            model, random_weights = ctx.engine_model()
            written = ensure_quantized(
                model, "int8", self.backend, pipeline_components(self.split), ctx.export_root,
                random_weights=random_weights, loaded=ctx.build_comps,
            )  # fmt: skip
            notes.append(f"int8 recipe {written} calibrated here" if written else "int8 recipe found in the exports")
        pipe, prepared = super().make_pipeline(ctx)
        prepared.notes[:0] = notes
        return pipe, prepared


class OpenVinoContender(_QuantizingContender):
    name = "openvino"
    description = "SanaDeployPipeline over OpenVINO engines (CPU; fp32, bf16 hint or int8 Q/DQ)"
    option_names = ("split", "precision")

    def validate(self) -> None:
        super().validate()
        if self.options.get("precision", "fp32") not in OPENVINO_PRECISIONS:
            fail(f"openvino option precision={self.options['precision']!r}: choose {', '.join(OPENVINO_PRECISIONS)}.")

    def engine_precision(self, case: BenchCase) -> str:
        return self.options.get("precision", case.precision)

    def unavailable(self, case: BenchCase) -> str | None:
        if case.device != "cpu":
            return "OpenVINO engines run on the CPU here (--device cpu)"
        why = super().unavailable(case)
        if why is not None:
            return why
        from sana_deploy.runners.openvino import check_precision

        try:
            check_precision(self.engine_precision(case))
        except SanaDeployError as exc:
            return str(exc)
        return None


class OrtInt8Contender(_QuantizingContender):
    name = "onnxruntime-int8"
    description = "SanaDeployPipeline over ONNX Runtime engines of the int8 Q/DQ transformer graphs"
    option_names = ("split",)

    @property
    def backend(self) -> str:
        return "onnxruntime"

    def engine_precision(self, case: BenchCase) -> str:
        return "int8"

    def unavailable(self, case: BenchCase) -> str | None:
        if case.device != "cpu":
            return "the int8 Q/DQ graphs run on ONNX Runtime's CPU provider here (--device cpu)"
        return super().unavailable(case)


__all__ = ["OpenVinoContender", "OrtInt8Contender"]
