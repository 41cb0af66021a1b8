"""Runs an ``onnxruntime`` entry: a session over the saved optimised graph, no re-optimisation at start."""

from __future__ import annotations

import numpy as np
import torch

from sana_deploy.engines.backends.onnxruntime import choose_providers
from sana_deploy.engines.entry import EngineEntry
from sana_deploy.engines.runners.base import Runner


def provider_options(entry: EngineEntry, providers: list[str]) -> list:
    """TensorRT EP: keep its engines next to the entry and give it the profile's shapes (min/opt/max)."""
    shapes = entry.meta["input_shapes"]

    def fmt(i: int) -> str:
        return ",".join(f"{n}:{'x'.join(map(str, s[i]))}" for n, s in shapes.items())

    out = []
    for p in providers:
        if p == "TensorrtExecutionProvider":
            out.append(
                (
                    p,
                    {
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(entry.path / "ort_trt_cache"),
                        "trt_profile_min_shapes": fmt(0),
                        "trt_profile_opt_shapes": fmt(1),
                        "trt_profile_max_shapes": fmt(2),
                    },
                )
            )
        else:
            out.append(p)
    return out


class OrtRunner(Runner):
    def __init__(self, entry: EngineEntry) -> None:
        import onnxruntime as ort

        super().__init__(entry)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # done at build time
        providers = [p for p in entry.meta["info"].get("providers", []) if p in ort.get_available_providers()]
        providers = providers or choose_providers()
        self.session = ort.InferenceSession(str(entry.artifact), so, providers=provider_options(entry, providers))
        self.providers = self.session.get_providers()

    def infer(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feed = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in inputs.items()}
        results = self.session.run(self.output_names, feed)
        return {n: torch.from_numpy(r) for n, r in zip(self.output_names, results, strict=True)}
