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
from sana_deploy.engines.backends.openvino import OpenVinoBackend
from sana_deploy.engines.backends.tensorrt import TensorRtBackend
from sana_deploy.engines.backends.tensorrt_rtx import TensorRtRtxBackend
from sana_deploy.errors import fail

BACKENDS: dict[str, Backend] = {
    b.name: b for b in (TensorRtBackend(), TensorRtRtxBackend(), OnnxRuntimeBackend(), AotiBackend(), OpenVinoBackend())
}
BACKEND_CHOICES = (*BACKENDS, "auto")


def auto_backend() -> tuple[Backend, str]:
    """The best installed backend whose engines run on this machine, and why it was chosen.

    tensorrt with a CUDA GPU; else tensorrt-rtx with a CUDA GPU it targets (RTX-class, not Hopper); else
    onnxruntime. tensorrt-rtx can build on a CPU-only machine for another one, but only when asked for by name.
    """
    from sana_deploy.engines.devices import cuda_available

    trt, rtx = BACKENDS["tensorrt"], BACKENDS["tensorrt-rtx"]
    gpu = cuda_available()
    if trt.available() and gpu:
        return trt, "tensorrt is installed and a CUDA GPU is present"
    why = "tensorrt is not installed" if not trt.available() else "tensorrt is installed but there is no CUDA GPU"
    if not rtx.available():
        return BACKENDS["onnxruntime"], f"{why} and tensorrt-rtx is not installed; onnxruntime is the fallback"
    unsupported = rtx.unsupported_here()
    if unsupported is None:
        return rtx, f"{why}; tensorrt-rtx is installed and targets this GPU"
    return BACKENDS["onnxruntime"], (
        f"{why}; tensorrt-rtx is installed but {unsupported}, so onnxruntime, whose engines run here "
        f"(--backend tensorrt-rtx still builds RTX engines for another machine)"
    )


def not_runnable_note(backend: Backend, device: str) -> str | None:
    """A line for build output when engines built for ``device`` cannot run on this machine, else None."""
    reason = backend.can_run(device)
    if reason is None:
        return None
    what = TensorRtRtxBackend.describe(device) if isinstance(backend, TensorRtRtxBackend) else device
    return (
        f"note: these {backend.name} engines are for {what}; they will not run on this machine ({reason}). "
        f"Copy them to such a machine, or build with --backend auto for engines that run here."
    )


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
    "not_runnable_note",
]
