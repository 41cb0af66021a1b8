"""Stage runners: the one interface the pipeline calls, whatever runs the stage.

A stage runner is ``runner(**inputs) -> {output_name: tensor}`` with the names of the export spec
(``sana_deploy.export.specs``): float tensors are fp32 at the boundary, masks and ids int64, outputs on the
inputs' device. That is exactly the engines' ``load_runner(entry)`` contract, so torch modules, ONNX Runtime
sessions and compiled engines are interchangeable and the pipeline never knows which one it holds.

Thread safety: torch modules under ``inference_mode`` and ONNX Runtime sessions are safe to call from several
threads at once (``reentrant = True``). Engine runners own execution contexts and device buffers reused across
calls, so :class:`Stage` serialises calls into a non-reentrant runner with a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from sana_deploy.export.specs import SPECS
from sana_deploy.models.components import SanaComponents
from sana_deploy.plugins.registry import active_kernels, use_kernels

Runner = Callable[..., dict[str, torch.Tensor]]
STAGES = ("text_encoder", "transformer", "vae")


@dataclass
class Stage:
    """A runner plus what the pipeline needs to know about it: a label, and whether calls must be serialised."""

    component: str
    runner: Runner
    backend: str  # "torch", "onnxruntime", "aoti", "tensorrt", "tensorrt-rtx"
    precision: str = "fp32"
    reentrant: bool = True
    detail: str = ""  # e.g. the engine file or ONNX path, for messages
    pad_seq_to: int | None = None  # text encoder only: a static engine's sequence length
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.reentrant:
            return self.runner(**inputs)
        with self._lock:
            out = self.runner(**inputs)
            return {k: v.clone() for k, v in out.items()}  # engine output buffers are reused by the next call

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.precision}"


class TorchRunner:
    """Eager PyTorch: the export spec's I/O wrapper around the loaded module (fp32 in and out)."""

    def __init__(self, components: SanaComponents, component: str, kernels: str = "reference") -> None:
        spec = SPECS[component](components)
        self.module = spec.wrap(components).eval()
        self.input_names = [t.name for t in spec.inputs]
        self.output_names = [t.name for t in spec.outputs]
        self.kernels = kernels
        self.device = next(self.module.parameters()).device

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        args = [inputs[name].to(self.device) for name in self.input_names]
        with torch.inference_mode():
            if active_kernels() == self.kernels:  # no global switch: safe when threads share the runner
                out = self.module(*args)
            else:
                with use_kernels(self.kernels):
                    out = self.module(*args)
        outs = out if isinstance(out, tuple) else (out,)
        return dict(zip(self.output_names, outs, strict=True))


def torch_stage(components: SanaComponents, component: str, precision: str = "fp32") -> Stage:
    return Stage(component, TorchRunner(components, component), "torch", precision, reentrant=True)
