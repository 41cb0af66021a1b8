"""What every runner shares: its I/O names, an optional shape check against a profile, fp32 outputs on the
inputs' device, a label for reports, and a lock for runners that reuse buffers between calls."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch

from sana_deploy.errors import ShapeError, fail
from sana_deploy.runners.weights import WeightSwapError

Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]  # input -> (min, opt, max)


class Runner(ABC):
    """``runner(**inputs) -> {output: tensor}``. Subclasses set :attr:`backend` and implement :meth:`infer`.

    ``shapes``: the (min, opt, max) shape per input of the engine's profile; calls outside it are refused with a
    :class:`~sana_deploy.errors.ShapeError`. ``reentrant``: whether several threads may call :meth:`infer` at once
    (torch modules in inference mode and ONNX Runtime sessions may; engines that reuse device buffers may not, and
    their calls are serialised here).
    """

    backend = ""
    reentrant = True

    def __init__(
        self,
        component: str,
        input_names: list[str],
        output_names: list[str],
        precision: str = "fp32",
        shapes: Shapes | None = None,
        detail: str = "",
    ) -> None:
        self.component = component
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.precision = precision
        self.shapes = shapes
        self.detail = detail  # the artifact, for messages
        self._lock = threading.Lock()
        self.weights_token: object = None  # which weight set is applied (the provider's bookkeeping)

    @property
    def label(self) -> str:
        """``backend/precision`` of this component as it runs (what ``SanaDeployOutput.backends`` reports)."""
        return f"{self.backend}/{self.precision}"

    @property
    def pad_seq_to(self) -> int | None:
        """Text encoder only: the sequence length a static engine needs (None when any length runs)."""
        if not self.shapes or "input_ids" not in self.shapes:
            return None
        lo, _opt, hi = self.shapes["input_ids"]
        return int(lo[1]) if lo[1] == hi[1] else None

    def check(self, inputs: dict[str, torch.Tensor]) -> None:
        if sorted(inputs) != sorted(self.input_names):
            fail(f"The {self.component} runner takes inputs {self.input_names}, got {sorted(inputs)}.", ShapeError)
        for name, t in inputs.items():
            if self.shapes is None or name not in self.shapes:
                continue
            lo, _opt, hi = self.shapes[name]
            if len(t.shape) != len(lo) or any(not a <= d <= b for d, a, b in zip(t.shape, lo, hi, strict=True)):
                fail(
                    f"{name} of shape {tuple(t.shape)} is outside the {self.component} engine's profile (min {lo}, "
                    f"max {hi}); look the shape up with EngineCache.find / resolve.",
                    ShapeError,
                )

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check(inputs)
        device = next(iter(inputs.values())).device
        ordered = {n: inputs[n] for n in self.input_names}
        if self.reentrant:
            outputs = self.infer(ordered)
        else:
            with self._lock:
                outputs = self.infer(ordered)
        return {k: v.to(device=device, dtype=torch.float32) for k, v in outputs.items()}

    def swappable_weights(self) -> dict[str, tuple[int, ...]]:
        """``{parameter name: shape}`` of the weights :meth:`set_weight_deltas` can change (diffusers' names)."""
        return {}

    def set_weight_deltas(self, deltas: Mapping[str, torch.Tensor]) -> None:
        """Run with ``base + delta`` for these weights and the base for every other (``{}``: the base model).

        ``deltas``: fp32 changes in the parameters' own shapes, keys among :meth:`swappable_weights`. The swap
        never recompiles: each backend replaces the weights inside the compiled artifact. On an error the runner
        keeps the weights it had.
        """
        if not deltas:
            return
        fail(f"The {self.backend} runner of {self.component} cannot swap weights.", WeightSwapError)

    @abstractmethod
    def infer(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run on inputs already checked and in :attr:`input_names` order; return tensors no later call reuses."""


def shapes_from_meta(meta: dict) -> Shapes:
    """An engine entry's ``input_shapes`` (JSON lists) as tuples."""

    def as_tuple(v: int | list) -> tuple:
        return tuple(v) if isinstance(v, list) else (v,)

    return {name: tuple(map(as_tuple, s)) for name, s in meta.get("input_shapes", {}).items()}
