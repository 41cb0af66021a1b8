"""``torch``: the product pipeline over sana-deploy's eager PyTorch modules (``SanaDeployPipeline.from_components``,
``backend="torch"``).

Options (``torch[kernels=reference,split=0,quantize=fp8]``):
  kernels   the ``sana::`` op implementation (default: Triton on a CUDA GPU with triton installed, else reference)
  split     1: caption K/V once per request + the cached step graph (default); 0: the one-graph transformer
  quantize  fp8: the transformer blocks' linear layers in FP8 (``sana_deploy.models.fp8``; a CUDA GPU of compute
            capability 8.9+)
"""

from __future__ import annotations

import copy

from sana_deploy.bench.case import BenchCase
from sana_deploy.bench.contenders.base import CaseContext, PipelineContender, Prepared
from sana_deploy.errors import fail
from sana_deploy.models.fp8 import fp8_unavailable
from sana_deploy.runtime.assemble import default_kernels
from sana_deploy.runtime.pipeline import SanaDeployPipeline


class TorchContender(PipelineContender):
    name = "torch"
    description = "SanaDeployPipeline over sana-deploy's PyTorch modules, eager, our kernels"
    option_names = ("kernels", "split", "quantize")

    def validate(self) -> None:
        super().validate()
        if self.options.get("quantize") not in (None, "fp8"):
            fail(f"torch option quantize={self.options['quantize']!r}: only fp8 (FP8 linear layers) is offered.")

    def unavailable(self, case: BenchCase) -> str | None:
        if self.options.get("quantize") == "fp8" and (why := fp8_unavailable(case.device)):
            return why
        return super().unavailable(case)

    def make_pipeline(self, ctx: CaseContext) -> tuple[SanaDeployPipeline, Prepared]:
        case = ctx.case
        kernels = self.options.get("kernels") or default_kernels()
        quantize = self.options.get("quantize")
        comps = ctx.comps
        if quantize:  # FP8 layers replace the transformer's in place: on a copy, the other contenders keep theirs
            comps = copy.copy(comps)
            comps.transformer = copy.deepcopy(comps.transformer)
            if comps.controlnet is not None:  # a ControlNet's blocks are made FP8 too
                comps.controlnet = copy.deepcopy(comps.controlnet)
        pipe = SanaDeployPipeline.from_components(
            comps, "torch", case.precision, device=case.device, kv_cache=self.split, kernels=kernels,
            quantize=quantize,
        )  # fmt: skip
        notes = [f"kernels={kernels}"] + ([f"{quantize} linear layers in the transformer blocks"] if quantize else [])
        return pipe, Prepared(notes=notes, build_cached=None)
