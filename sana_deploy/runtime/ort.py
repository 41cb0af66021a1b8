"""A thin ONNX Runtime stage over our ONNX exports (``export/<model>/<precision>/<component>/model.onnx``).

The export is the only build step: when the folder holds no export of the same weights (manifest
``weights_sha256``), the component is exported first, under a file lock so concurrent processes export once.
Execution providers: CUDA where ``onnxruntime-gpu`` has it, then CPU. ONNX Runtime's CPU provider has no bf16
kernels, so a bf16 graph on CPU is refused with a message saying what to use instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sana_deploy.errors import fail
from sana_deploy.runtime.stages import Stage


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """fp32 for float inputs, int64 for ids and masks (the export's boundary types)."""
    t = t.detach().cpu()
    return t.float().numpy() if t.is_floating_point() else t.long().numpy()


def available_providers() -> list[str]:
    import onnxruntime as ort

    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


class OrtRunner:
    """``runner(**inputs) -> {name: tensor}`` over one ``InferenceSession`` (thread-safe ``run``)."""

    def __init__(self, path: Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers or available_providers())
        except Exception as exc:
            first = str(exc).splitlines()[0][:200]
            fail(
                f"ONNX Runtime cannot load {path}: {first}. ONNX Runtime's CPU provider has no bf16 kernels: use "
                f"precision fp32 or fp16 with the onnxruntime backend, or the torch backend for bf16."
            )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        device = next(iter(inputs.values())).device
        feed = {n: _to_numpy(inputs[n]) for n in self.input_names}
        outs = self.session.run(self.output_names, feed)
        return {
            n: torch.from_numpy(np.ascontiguousarray(o)).to(device)
            for n, o in zip(self.output_names, outs, strict=True)
        }


def ort_stage(path: Path, component: str, precision: str, threads: int | None = None) -> Stage:
    """An ONNX Runtime stage for ``component`` over the exported graph at ``path``."""
    runner = OrtRunner(path, threads or usable_cores())
    return Stage(component, runner, "onnxruntime", precision, reentrant=True, detail=str(path))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one): ONNX Runtime's thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
