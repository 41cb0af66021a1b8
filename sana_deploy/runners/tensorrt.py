"""TensorRT and TensorRT-RTX plans (the same runtime API; the Python module differs).

I/O is bound by tensor name; the optimisation profile is chosen by the input shapes; output buffers are device
tensors allocated once and grown only when a larger shape arrives (results are copied out, so a later call cannot
overwrite them). A weight-stripped plan is refitted from the ONNX it was built from. On a machine without CUDA it
fails with a clear message before touching the library. Written against the real API; the CI machines have no
GPU, so it is unverified there (docs/VERIFIED.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import torch

from sana_deploy.errors import SanaDeployError, ShapeError, fail
from sana_deploy.runners.base import Runner, Shapes
from sana_deploy.runners.weights import WeightSwapError, read_weight_map, require_map, stored_weights, to_layout


def make_logger(trt: ModuleType):
    """A TensorRT logger that keeps errors so build failures can quote them."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg: str) -> None:  # noqa: ANN001 (TensorRT's enum)
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
            elif severity == trt.ILogger.Severity.WARNING and os.environ.get("SANA_DEPLOY_TRT_VERBOSE"):
                print(f"[TRT] {msg}")

    return _Logger()


def deserialize(trt: ModuleType, plan: bytes):
    """An ICudaEngine, or a clear error where CUDA is missing (the library returns None, logging cudaError 35)."""
    if not torch.cuda.is_available():
        fail(
            "TensorRT engines need a CUDA GPU to deserialize and run; this machine has none. Run it on a GPU "
            "machine, or use --backend onnxruntime here.",
            SanaDeployError,
        )
    logger = make_logger(trt)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        fail(f"TensorRT could not deserialize the engine: {' | '.join(logger.errors)}", SanaDeployError)
    return engine, runtime, logger


def torch_dtype(trt: ModuleType, dt) -> torch.dtype:  # noqa: ANN001
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.BF16: torch.bfloat16,
        trt.DataType.INT64: torch.int64,
        trt.DataType.INT32: torch.int32,
        trt.DataType.BOOL: torch.bool,
    }
    return table[dt]


class TrtRunner(Runner):
    """``refit_onnx``: (serialized ONNX as the parser takes it, its path for external data) that a weight-stripped
    plan is refitted from (None: the plan holds its weights)."""

    reentrant = False

    def __init__(
        self,
        path: str | Path,
        trt: ModuleType,
        component: str,
        input_names: list[str],
        output_names: list[str],
        precision: str = "fp32",
        shapes: Shapes | None = None,
        backend: str = "tensorrt",
        plugin_libraries: tuple[str, ...] = (),
        qdp_plugins: bool = False,
        refit_onnx: tuple[bytes, str] | None = None,
        refittable: Mapping[str, str] | None = None,
        base_onnx: str | Path | None = None,
    ) -> None:
        super().__init__(component, input_names, output_names, precision, shapes, detail=str(path))
        self.backend = backend
        if not torch.cuda.is_available():
            fail(
                f"{backend} engines run on a CUDA GPU and this machine has none (torch.cuda.is_available() is False). "
                f"Run on a GPU machine, or build --backend onnxruntime for this one.",
                SanaDeployError,
            )
        self.trt = trt
        self.refittable = dict(refittable or {})  # parameter name -> weights name (marked at build)
        self.base_onnx = Path(base_onnx) if base_onnx else None
        self._base: dict[str, torch.Tensor] = {}
        self._changed: set[str] = set()
        for lib in plugin_libraries:
            trt.get_plugin_registry().load_library(lib)
        if qdp_plugins:  # JIT implementations run in this process
            from sana_deploy.plugins.trt_plugins import register_trt_plugins

            register_trt_plugins()
        self.engine, self.runtime, self.logger = deserialize(trt, Path(path).read_bytes())
        if refit_onnx is not None:
            self._refit(*refit_onnx)
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.active_profile = -1
        self.buffers: dict[str, torch.Tensor] = {}

    def _refit(self, data: bytes, onnx_path: str) -> None:
        """Weight-stripped plan: supply the weights from the same (inlined) ONNX it was built from."""
        trt = self.trt
        refitter = trt.Refitter(self.engine, self.logger)
        parser_refitter = trt.OnnxParserRefitter(refitter, self.logger)
        if not parser_refitter.refit_from_bytes(data, onnx_path) or not refitter.refit_cuda_engine():
            fail(f"Could not refit the weight-stripped engine from {onnx_path}: {self.logger.errors}")

    def swappable_weights(self) -> dict[str, tuple[int, ...]]:
        refs = read_weight_map(self.base_onnx.parent) if self.base_onnx and self.refittable else None
        return {n: refs[n].shape for n in self.refittable if n in refs} if refs else {}

    def set_weight_deltas(self, deltas: Mapping[str, torch.Tensor]) -> None:
        """Refit ``base + delta`` into the weights marked refittable at build time (TensorRT's ``Refitter``);
        weights changed before and not now get their base back. Unverified here: refitting needs CUDA."""
        if not deltas and not self._changed:
            return
        refs = require_map(self.component, read_weight_map(self.base_onnx.parent) if self.base_onnx else None)
        names = set(deltas) | self._changed
        need = names - set(self._base)
        if need:
            self._base.update(stored_weights(self.base_onnx, refs, need))
        refitter = self.trt.Refitter(self.engine, self.logger)
        keep = []
        for name in names:
            base = self._base[name]
            value = base if name not in deltas else (base.float() + deltas[name].float()).to(base.dtype)
            array = to_layout(value, refs[name].layout).contiguous().numpy()
            keep.append(array)  # the refitter reads the host memory when it refits
            if not refitter.set_named_weights(self.refittable[name], self.trt.Weights(array)):
                fail(f"TensorRT refused new weights for {name}: {self.logger.errors}", WeightSwapError)
        with self._lock:
            if not refitter.refit_cuda_engine():
                fail(f"TensorRT could not refit {self.detail}: {self.logger.errors}", WeightSwapError)
        self._changed = set(deltas)

    def _profile_for(self, inputs: dict[str, torch.Tensor]) -> int:
        for p in range(self.engine.num_optimization_profiles):
            ok = True
            for name, t in inputs.items():
                lo, _opt, hi = self.engine.get_tensor_profile_shape(name, p)
                ok &= all(a <= d <= b for d, a, b in zip(t.shape, lo, hi, strict=True))
            if ok:
                return p
        fail(
            f"No optimisation profile of {self.detail} covers {[tuple(t.shape) for t in inputs.values()]}.",
            ShapeError,
        )

    def infer(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        profile = self._profile_for(inputs)
        if profile != self.active_profile:
            self.context.set_optimization_profile_async(profile, self.stream.cuda_stream)
            self.active_profile = profile
        keep = []
        for name, t in inputs.items():
            t = t.to(device="cuda", dtype=torch_dtype(self.trt, self.engine.get_tensor_dtype(name))).contiguous()
            keep.append(t)
            if not self.context.set_input_shape(name, tuple(t.shape)):
                fail(f"TensorRT refused shape {tuple(t.shape)} for {name}: {self.logger.errors}", ShapeError)
            self.context.set_tensor_address(name, t.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch_dtype(self.trt, self.engine.get_tensor_dtype(name))
            numel = 1
            for d in shape:
                numel *= d
            buf = self.buffers.get(name)
            if buf is None or buf.numel() < numel or buf.dtype != dtype:
                buf = torch.empty(numel, dtype=dtype, device="cuda")
                self.buffers[name] = buf
            out = buf[:numel].view(shape)
            self.context.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        self.stream.wait_stream(torch.cuda.current_stream())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            fail(f"TensorRT execution failed: {self.logger.errors}")
        torch.cuda.current_stream().wait_stream(self.stream)
        return {n: o.clone() for n, o in outputs.items()}
