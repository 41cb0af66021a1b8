"""Eager PyTorch over a module with the export spec's I/O (``ExportSpec.wrap``), so torch runs the very graph
that is exported (fp32 at the boundary, the module's own dtype inside). ``sana_deploy.runtime.stages`` makes one
per component."""

from __future__ import annotations

import torch

from sana_deploy.plugins.registry import active_kernels, use_kernels
from sana_deploy.runners.base import Runner


class TorchRunner(Runner):
    """``kernels``: which implementation of the ``sana::`` ops runs (``reference``, ``inline`` or ``triton``)."""

    backend = "torch"
    reentrant = True

    def __init__(
        self,
        module: torch.nn.Module,
        component: str,
        input_names: list[str],
        output_names: list[str],
        precision: str = "fp32",
        kernels: str = "reference",
    ) -> None:
        super().__init__(component, input_names, output_names, precision)
        self.module = module.eval()
        self.kernels = kernels
        self.device = next(self.module.parameters()).device

    def infer(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        args = [t.to(self.device) for t in inputs.values()]
        with torch.inference_mode():
            if active_kernels() == self.kernels:  # no global switch: safe when threads share the runner
                out = self.module(*args)
            else:
                with use_kernels(self.kernels):
                    out = self.module(*args)
        outs = out if isinstance(out, tuple) else (out,)
        return dict(zip(self.output_names, outs, strict=True))
