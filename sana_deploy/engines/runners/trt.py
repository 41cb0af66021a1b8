"""Runs ``tensorrt`` and ``tensorrt-rtx`` plans (same runtime API; the module differs).

I/O is bound by tensor name; the optimisation profile is chosen by the input shapes; output buffers are
device tensors reused across calls (results are copied out so a later call cannot overwrite them). On a machine
without CUDA it fails with a clear message before touching the library. Written against the real API; this CI
machine has no GPU, and tensorrt-rtx does not target the H100 lent for GPU checks, so it is unverified here.
"""

from __future__ import annotations

from types import ModuleType

import torch

from sana_deploy.engines.backends import trt_common
from sana_deploy.engines.devices import cuda_available
from sana_deploy.engines.entry import EngineEntry
from sana_deploy.engines.runners.base import Runner
from sana_deploy.errors import SanaDeployError, ShapeError, fail


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
    def __init__(self, entry: EngineEntry, trt: ModuleType) -> None:
        super().__init__(entry)
        if not cuda_available():
            fail(
                f"{entry.backend} engines run on a CUDA GPU and this machine has none (torch.cuda.is_available() is "
                f"False). Run on a GPU machine ({entry.device}), or build --backend onnxruntime for this one.",
                SanaDeployError,
            )
        self.trt = trt
        for lib in entry.meta.get("info", {}).get("plugin_libraries", []):
            trt.get_plugin_registry().load_library(lib)
        if entry.meta.get("info", {}).get("qdp_plugins"):  # JIT implementations run in this process
            from sana_deploy.plugins.trt_plugins import register_trt_plugins

            register_trt_plugins()
        self.engine, self.runtime, self.logger = trt_common.deserialize(trt, entry.artifact.read_bytes())
        if entry.meta["flags"].get("strip_weights"):
            self._refit()
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.active_profile = -1
        self.buffers: dict[str, torch.Tensor] = {}

    def _refit(self) -> None:
        """Weight-stripped plan: supply the weights from the same (inlined) ONNX it was built from."""
        trt, meta = self.trt, self.entry.meta
        refitter = trt.Refitter(self.engine, self.logger)
        parser_refitter = trt.OnnxParserRefitter(refitter, self.logger)
        data = trt_common.onnx_for_parser(meta["onnx_path"], meta["info"].get("plugin_nodes", False))
        if not parser_refitter.refit_from_bytes(data, meta["onnx_path"]) or not refitter.refit_cuda_engine():
            fail(f"Could not refit the weight-stripped engine from {meta['onnx_path']}: {self.logger.errors}")

    def _profile_for(self, inputs: dict[str, torch.Tensor]) -> int:
        for p in range(self.engine.num_optimization_profiles):
            ok = True
            for name, t in inputs.items():
                lo, _opt, hi = self.engine.get_tensor_profile_shape(name, p)
                ok &= all(a <= d <= b for d, a, b in zip(t.shape, lo, hi, strict=True))
            if ok:
                return p
        fail(
            f"No optimisation profile of {self.entry.path} covers {[tuple(t.shape) for t in inputs.values()]}.",
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
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch_dtype(self.trt, self.engine.get_tensor_dtype(name))
            buf = self.buffers.get(name)
            numel = 1
            for d in shape:
                numel *= d
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
