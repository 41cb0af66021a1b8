"""Engine backends behind one interface, and ``auto``: the best one this machine can build with."""

from __future__ import annotations

from sana_deploy.engines.backends.aoti import AotiBackend
from sana_deploy.engines.backends.base import (
    Backend,
    BackendUnavailable,
    BuildJob,
    BuildOptions,
    BuildOutput,
    EngineBuildError,
)
from sana_deploy.engines.backends.onnxruntime import OnnxRuntimeBackend
from sana_deploy.engines.backends.tensorrt import TensorRtBackend
from sana_deploy.engines.backends.tensorrt_rtx import TensorRtRtxBackend
from sana_deploy.errors import fail

BACKENDS: dict[str, Backend] = {
    b.name: b for b in (TensorRtBackend(), TensorRtRtxBackend(), OnnxRuntimeBackend(), AotiBackend())
}
BACKEND_CHOICES = (*BACKENDS, "auto")


def auto_backend() -> tuple[Backend, str]:
    """tensorrt when importable with a GPU, else tensorrt-rtx when installed, else onnxruntime; and why."""
    from sana_deploy.engines.devices import cuda_available

    trt, rtx = BACKENDS["tensorrt"], BACKENDS["tensorrt-rtx"]
    if trt.available() and cuda_available():
        return trt, "tensorrt is installed and a CUDA GPU is present"
    why = "tensorrt is not installed" if not trt.available() else "tensorrt is installed but there is no CUDA GPU"
    if rtx.available():
        return rtx, f"{why}; tensorrt-rtx is installed (builds RTX engines on the CPU)"
    return BACKENDS["onnxruntime"], f"{why} and tensorrt-rtx is not installed; onnxruntime is the fallback"


def get_backend(name: str) -> tuple[Backend, str]:
    """The backend called ``name`` (checked to be installed) and why it was chosen."""
    key = (name or "auto").strip().lower()
    if key == "auto":
        backend, why = auto_backend()
    elif key in BACKENDS:
        backend, why = BACKENDS[key], "requested"
    else:
        fail(f"Unknown backend {name!r}; choose one of {', '.join(BACKEND_CHOICES)}.")
    backend.require()
    return backend, why


__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "Backend",
    "BackendUnavailable",
    "BuildJob",
    "BuildOptions",
    "BuildOutput",
    "EngineBuildError",
    "auto_backend",
    "get_backend",
]
