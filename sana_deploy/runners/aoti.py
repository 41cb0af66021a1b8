"""AOTInductor: a ``.pt2`` package through ``torch._inductor.aoti_load_package`` (no model code at run time)."""

from __future__ import annotations

from pathlib import Path

import torch

from sana_deploy.runners.base import Runner, Shapes


class AotiRunner(Runner):
    """The package's runner keeps state between calls, so calls are serialised."""

    backend = "aoti"
    reentrant = False

    def __init__(
        self,
        path: str | Path,
        component: str,
        input_names: list[str],
        output_names: list[str],
        precision: str = "fp32",
        device: str = "cpu",
        shapes: Shapes | None = None,
    ) -> None:
        super().__init__(component, input_names, output_names, precision, shapes, detail=str(path))
        self.device = torch.device(device)
        self.model = torch._inductor.aoti_load_package(str(path))

    def infer(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            out = self.model(**{k: v.to(self.device).contiguous() for k, v in inputs.items()})
        outs = out if isinstance(out, (list, tuple)) else [out]
        return dict(zip(self.output_names, outs, strict=True))
