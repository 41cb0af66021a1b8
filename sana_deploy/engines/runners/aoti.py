"""Runs an ``aoti`` entry: the ``.pt2`` package through ``torch._inductor.aoti_load_package`` (no model code)."""

from __future__ import annotations

import torch

from sana_deploy.engines.entry import EngineEntry
from sana_deploy.engines.runners.base import Runner


class AotiRunner(Runner):
    def __init__(self, entry: EngineEntry) -> None:
        super().__init__(entry)
        self.device = torch.device(entry.meta["info"].get("device", "cpu"))
        self.model = torch._inductor.aoti_load_package(str(entry.artifact))

    def infer(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            out = self.model(**{k: v.to(self.device).contiguous() for k, v in inputs.items()})
        outs = out if isinstance(out, (list, tuple)) else [out]
        return dict(zip(self.output_names, outs, strict=True))
