"""``torch``: the product pipeline over sana-deploy's eager PyTorch modules (``SanaDeployPipeline.from_components``,
``backend="torch"``).

Options (``torch[kernels=reference,split=0]``):
  kernels  the ``sana::`` op implementation (default: Triton on a CUDA GPU with triton installed, else reference)
  split    1: caption K/V once per request + the cached step graph (default); 0: the one-graph transformer
"""

from __future__ import annotations

from sana_deploy.bench.contenders.base import CaseContext, PipelineContender, Prepared
from sana_deploy.runtime.assemble import default_kernels
from sana_deploy.runtime.pipeline import SanaDeployPipeline


class TorchContender(PipelineContender):
    name = "torch"
    description = "SanaDeployPipeline over sana-deploy's PyTorch modules, eager, our kernels"
    option_names = ("kernels", "split")

    def make_pipeline(self, ctx: CaseContext) -> tuple[SanaDeployPipeline, Prepared]:
        case = ctx.case
        kernels = self.options.get("kernels") or default_kernels()
        pipe = SanaDeployPipeline.from_components(
            ctx.comps, "torch", case.precision, device=case.device, kv_cache=self.split, kernels=kernels
        )
        return pipe, Prepared(notes=[f"kernels={kernels}"], build_cached=None)
