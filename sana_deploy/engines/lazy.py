"""Lazy loaders in the Polygraphy style: each captures its arguments and does the work when called.

``EngineFromOnnx(backend, job)`` builds into a staging folder, ``SaveEngine(engine, cache, meta)`` commits it to
the cache, ``EngineFromPath(entry)`` verifies an entry and loads a runner for it. Arguments may be values or
loaders (callables), so ``SaveEngine(EngineFromOnnx(...), cache, meta)()`` composes a build. Each has an eager
snake_case twin.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from sana_deploy.engines.backends import trt_common
from sana_deploy.engines.backends.base import Backend, BuildJob, BuildOutput
from sana_deploy.engines.backends.onnxruntime import choose_providers
from sana_deploy.engines.cache import EngineCache, sha256_file
from sana_deploy.engines.records import CacheError, EngineEntry, is_plain_name
from sana_deploy.errors import fail
from sana_deploy.runners import AotiRunner, OrtOptions, OrtRunner, Runner, TrtRunner
from sana_deploy.runners.base import shapes_from_meta
from sana_deploy.runners.openvino import OpenVinoRunner


def _value(v):  # noqa: ANN001, ANN202
    return v() if callable(v) else v


class BaseLoader(ABC):
    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        return self.call_impl(*args, **kwargs)

    @abstractmethod
    def call_impl(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        """Do the loader's work (its arguments are the loader's own)."""


@dataclass
class BuiltEngine:
    """An artifact in a staging folder, not yet in the cache."""

    staging: Path
    output: BuildOutput
    seconds: float


def _fault_point(name: str) -> None:
    """Fault injection for the crash-safety tests: ``SANA_DEPLOY_FAULT=<name>:<seconds>`` sleeps here."""
    spec = os.environ.get("SANA_DEPLOY_FAULT", "")
    if spec.split(":")[0] == name:
        print(f"fault point {name}: sleeping", flush=True)
        time.sleep(float(spec.split(":")[1]))


class EngineFromOnnx(BaseLoader):
    """Build the artifact for ``job`` with ``backend`` into ``job.out_dir``."""

    def __init__(self, backend: Backend, job: BuildJob) -> None:
        self.backend, self.job = backend, job

    def call_impl(self) -> BuiltEngine:
        start = time.perf_counter()
        output = self.backend.build(self.job)
        _fault_point("after-artifact")
        return BuiltEngine(self.job.out_dir, output, time.perf_counter() - start)


class SaveEngine(BaseLoader):
    """Commit a built engine (value or loader) to ``cache`` with ``meta``; returns the :class:`EngineEntry`."""

    def __init__(self, engine, cache: EngineCache, meta: dict) -> None:  # noqa: ANN001
        self.engine, self.cache, self.meta = engine, cache, meta

    def call_impl(self) -> EngineEntry:
        built: BuiltEngine = _value(self.engine)
        meta = {
            **self.meta,
            "artifact": built.output.artifact,
            "info": built.output.info,
            "build_seconds": round(built.seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return self.cache.commit(built.staging, meta)


class EngineFromPath(BaseLoader):
    """Verify an entry (checksum, versions, device) and load a runner for it. Accepts an entry or its folder."""

    def __init__(self, entry: EngineEntry | str | Path, cache: EngineCache | None = None) -> None:
        self.entry, self.cache = entry, cache

    def call_impl(self) -> Runner:
        entry = _value(self.entry)
        folder = entry.path if isinstance(entry, EngineEntry) else Path(entry)
        if self.cache is None and len(folder.parents) < 3:
            fail(f"{folder} is not an engine cache entry (<cache>/<model>/<component>/<key>).", CacheError)
        cache = self.cache or EngineCache(folder.parents[2])  # the cache root the entry's checks are relative to
        if not isinstance(entry, EngineEntry):
            entry = cache.entry_at(folder)
        cache.require_loadable(entry)
        cache.touch(entry)
        return runner_for(entry)


def engine_from_onnx(backend: Backend, job: BuildJob) -> BuiltEngine:
    return EngineFromOnnx(backend, job)()


def save_engine(engine, cache: EngineCache, meta: dict) -> EngineEntry:  # noqa: ANN001
    return SaveEngine(engine, cache, meta)()


def engine_from_path(entry: EngineEntry | str | Path, cache: EngineCache | None = None) -> Runner:
    return EngineFromPath(entry, cache)()


def load_runner(entry: EngineEntry | str | Path) -> Runner:
    """The :class:`~sana_deploy.runners.Runner` for a verified cache entry."""
    return engine_from_path(entry)


def _ort_providers(entry: EngineEntry) -> list:
    """The providers the entry was built for that this ONNX Runtime has; the TensorRT EP gets the profile's
    shapes (min/opt/max) and keeps its engines next to the entry."""
    import onnxruntime as ort

    shapes = entry.meta["input_shapes"]
    names = [p for p in entry.meta["info"].get("providers", []) if p in ort.get_available_providers()]

    def fmt(i: int) -> str:
        return ",".join(f"{n}:{'x'.join(map(str, s[i]))}" for n, s in shapes.items())

    out: list = []
    for p in names or choose_providers():
        if p == "TensorrtExecutionProvider":
            trt_options = {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(entry.path / "ort_trt_cache"),
                "trt_profile_min_shapes": fmt(0),
                "trt_profile_opt_shapes": fmt(1),
                "trt_profile_max_shapes": fmt(2),
            }
            out.append((p, trt_options))
        else:
            out.append(p)
    return out


def _refit_onnx(entry: EngineEntry) -> Path:
    """The ONNX a weight-stripped plan is refitted from: the copy kept in the entry's ``refit/`` folder (checked
    against the key's onnx_sha256 by the cache's load checks). The ``onnx_path`` in meta.json is never read."""
    names = [n for n in entry.meta.get("refit_files", []) if is_plain_name(n) and n.endswith(".onnx")]
    if not names:
        fail(f"Engine {entry.path} is weight-stripped but keeps no refit ONNX; rebuild it with `sana-deploy build`.")
    return entry.path / "refit" / names[0]


def _lora_base(entry: EngineEntry) -> Path | None:
    """The export copy in the entry's ``refit/`` that LoRA swaps read base weights from (None: none kept)."""
    names = [n for n in entry.meta.get("refit_files", []) if is_plain_name(n) and n.endswith(".onnx")]
    return entry.path / "refit" / names[0] if names else None


QDP_PLUGINS = "sana_deploy.plugins (QDP)"  # the key's entry for the Python plugins (not a library)


def _plugin_libraries(entry: EngineEntry) -> tuple[str, ...]:
    """The C++ plugin libraries a TensorRT entry was built with, from this process's configuration
    (``SANA_DEPLOY_PLUGIN_LIBS``) and checked against the sha256 in its key; the paths recorded in meta.json are
    never loaded."""
    from sana_deploy.engines.backends import BuildOptions
    from sana_deploy.engines.backends.tensorrt import plugin_libraries

    needed = {name: h for name, h in entry.meta.get("plugins", {}).items() if name != QDP_PLUGINS}
    if not needed:
        return ()
    configured = {p.name: p for p in plugin_libraries(BuildOptions())}
    out = []
    for name, recorded in sorted(needed.items()):
        path = configured.get(name)
        if path is None or not path.is_file() or sha256_file(path) != recorded:
            fail(
                f"Engine {entry.path} was built with the TensorRT plugin library {name!r}; list that library (the "
                f"same file) in SANA_DEPLOY_PLUGIN_LIBS (paths separated by {os.pathsep!r}) to load it. Library paths "
                f"recorded in meta.json are never loaded.",
                CacheError,
            )
        out.append(str(path.resolve()))
    return tuple(out)


def runner_for(entry: EngineEntry) -> Runner:
    """The runner of a (verified) entry's backend, checking inputs against the entry's profile."""
    meta, info = entry.meta, entry.meta.get("info", {})
    names = ([t["name"] for t in meta["inputs"]], [t["name"] for t in meta["outputs"]])
    shapes = shapes_from_meta(meta)
    if entry.backend == "onnxruntime":  # optimised at build time: no re-optimisation at start
        opts = OrtOptions(opt="disable")
        return OrtRunner(entry.artifact, entry.component, entry.precision, opts, shapes, _ort_providers(entry))
    if entry.backend == "openvino":  # the IR, compiled for the CPU with the entry's precision hint
        return OpenVinoRunner(entry.artifact, entry.component, entry.precision, shapes, names[1])
    if entry.backend == "aoti":
        device = info.get("device", "cpu")
        base = _lora_base(entry)
        return AotiRunner(entry.artifact, entry.component, *names, entry.precision, device, shapes, base)
    if entry.backend in ("tensorrt", "tensorrt-rtx"):
        import importlib

        trt = importlib.import_module("tensorrt" if entry.backend == "tensorrt" else "tensorrt_rtx")
        refit = None
        if meta["flags"].get("strip_weights"):  # refit from the same (inlined) ONNX the plan was built from
            onnx_path = _refit_onnx(entry)
            data = trt_common.onnx_for_parser(onnx_path, bool(info.get("plugin_nodes", False)))
            refit = (data, str(onnx_path))
        return TrtRunner(
            entry.artifact,
            trt,
            entry.component,
            *names,
            entry.precision,
            shapes,
            entry.backend,
            _plugin_libraries(entry),
            bool(info.get("qdp_plugins")),
            refit,
            info.get("refittable_weights") or {},
            _lora_base(entry),
        )
    fail(f"No runner for backend {entry.backend!r}.")
