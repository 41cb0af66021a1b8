"""``tensorrt``: standard TensorRT 10.x/11.x (the ``tensorrt`` extra). Builds on, and for, the local GPU.

Written against the real API and sharing its build path with ``tensorrt-rtx`` (trt_common.py), but it cannot be
installed on the CPU-only CI machines (pip TensorRT needs pypi.nvidia.com and a GPU), so it is not run there.
Plugins, when present: C++ plugin libraries given with ``--plugin`` or ``SANA_DEPLOY_PLUGIN_LIBS`` are loaded,
and the Python quickly-deployable plugins of
``sana_deploy.plugins.trt_plugins`` are registered when ``tensorrt.plugin`` is importable (``SANA_DEPLOY_TRT_QDP=0``
turns that off; AOT implementations are preferred so engines run without Python where the plugin has one). With
the ``sana`` creators registered the ONNX keeps its plugin nodes, otherwise it is inlined. The hashes of the
libraries and of the plugin sources are part of the cache key.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import cache
from pathlib import Path

from sana_deploy.engines.backends import trt_common
from sana_deploy.engines.backends.base import Backend, BuildJob, BuildOptions, BuildOutput, EngineBuildError
from sana_deploy.engines.backends.tensorrt_rtx import trt_inspect
from sana_deploy.engines.devices import cuda_available, current_device
from sana_deploy.errors import fail

DEFAULT_PLUGIN_LIBS: tuple[Path, ...] = ()  # no C++ plugin library ships: the sana plugins are Python (QDP) plugins


def plugin_libraries(options: BuildOptions) -> tuple[Path, ...]:
    """Plugin libraries to load: explicit ones, else ``SANA_DEPLOY_PLUGIN_LIBS`` (os.pathsep list), else defaults
    that exist."""
    if options.plugin_libraries:
        paths = tuple(Path(p) for p in options.plugin_libraries)
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            fail(
                f"Plugin library not found: {missing}. Check the path, or drop --plugin (the sana plugins "
                f"themselves are Python plugins, registered in process)."
            )
        return paths
    env = os.environ.get("SANA_DEPLOY_PLUGIN_LIBS")
    if env:
        return tuple(Path(p) for p in env.split(os.pathsep) if p)
    return tuple(p for p in DEFAULT_PLUGIN_LIBS if p.exists())


@cache
def _sha256(path: str, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@cache
def _load_library(trt, path: str) -> None:  # noqa: ANN001
    if trt.get_plugin_registry().load_library(path) is None:
        fail(f"TensorRT could not load plugin library {path}; was it built against this TensorRT version?")


def qdp_available() -> bool:
    """Whether the sana quickly-deployable plugins can be registered (tensorrt.plugin + our definitions)."""
    if os.environ.get("SANA_DEPLOY_TRT_QDP", "1") == "0":
        return False
    try:
        return importlib.util.find_spec("tensorrt.plugin") is not None and (
            importlib.util.find_spec("sana_deploy.plugins.trt_plugins") is not None
        )
    except (ImportError, ValueError):
        return False


def qdp_sources_hash() -> str:
    """sha256 over the Python plugin sources (definitions and kernels) that end up in an engine."""
    root = Path(__file__).resolve().parents[2] / "plugins"
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


class TensorRtBackend(Backend):
    name = "tensorrt"
    package = "tensorrt"
    module = "tensorrt"
    extra = "tensorrt"
    timing_cache = True

    def _trt(self):
        import tensorrt

        return tensorrt

    def version(self) -> str:
        from sana_deploy.versions import package_version

        for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13", "tensorrt_cu12"):
            if v := package_version(dist):
                return v
        return self._trt().__version__

    def target_device(self, options: BuildOptions) -> str:
        return current_device()  # standard TensorRT plans are tied to the GPU they were built on

    def plugin_hashes(self, options: BuildOptions) -> dict[str, str]:
        hashes = {p.name: _sha256(str(p.resolve()), p.stat().st_mtime) for p in plugin_libraries(options)}
        if qdp_available():
            hashes["sana_deploy.plugins (QDP)"] = qdp_sources_hash()
        return hashes

    def build(self, job: BuildJob) -> BuildOutput:
        if not cuda_available():
            fail(
                "The tensorrt backend builds on the GPU it targets and this machine has no CUDA GPU. Use "
                "--backend tensorrt-rtx (builds on the CPU for RTX GPUs) or onnxruntime here.",
                EngineBuildError,
            )
        trt = self._trt()
        libs = plugin_libraries(job.options)
        for lib in libs:
            _load_library(trt, str(lib.resolve()))
        qdp = qdp_available()
        if qdp:
            from sana_deploy.plugins.trt_plugins import register_trt_plugins

            register_trt_plugins()
        keep = (bool(libs) or qdp) and trt_common.sana_plugins_registered(trt)
        out = trt_common.build_plan(trt, job, keep_plugin_nodes=keep, prefer_aot_plugins=qdp)
        out.info["plugin_libraries"] = [str(p) for p in libs]
        out.info["qdp_plugins"] = qdp and keep
        return out

    def inspect(self, artifact: Path, meta: dict) -> dict:
        return trt_inspect(self._trt(), artifact, meta)
