"""What every runner shares: input checks against the engine's profile, outputs as fp32 on the inputs' device."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from sana_deploy.engines.entry import EngineEntry
from sana_deploy.errors import ShapeError, fail


class Runner(ABC):
    """``runner(**inputs) -> {output name: tensor}`` for one cache entry. Subclasses implement :meth:`infer`."""

    def __init__(self, entry: EngineEntry) -> None:
        self.entry = entry
        self.input_names = [t["name"] for t in entry.meta["inputs"]]
        self.output_names = [t["name"] for t in entry.meta["outputs"]]
        self.shapes = {name: tuple(map(_tuple, s)) for name, s in entry.meta["input_shapes"].items()}

    def check(self, inputs: dict[str, torch.Tensor]) -> None:
        if sorted(inputs) != sorted(self.input_names):
            fail(f"{self.entry.component} engine takes inputs {self.input_names}, got {sorted(inputs)}.", ShapeError)
        for name, t in inputs.items():
            lo, _opt, hi = self.shapes[name]
            if len(t.shape) != len(lo) or any(not a <= d <= b for d, a, b in zip(t.shape, lo, hi, strict=True)):
                fail(
                    f"{name} of shape {tuple(t.shape)} is outside the engine's profile {self.entry.profile.name} "
                    f"(min {lo}, max {hi}); look the shape up with EngineCache.find / resolve.",
                    ShapeError,
                )

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check(inputs)
        device = next(iter(inputs.values())).device
        outputs = self.infer({n: inputs[n] for n in self.input_names})
        return {k: v.to(device=device, dtype=torch.float32) for k, v in outputs.items()}

    @abstractmethod
    def infer(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the engine on inputs already checked and ordered by name."""


def _tuple(v: int | list) -> tuple:
    return tuple(v) if isinstance(v, list) else (v,)
