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

from sana_deploy.engines.backends.base import Backend, BuildJob, BuildOutput
from sana_deploy.engines.cache import EngineCache
from sana_deploy.engines.entry import EngineEntry, read_meta


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

    def call_impl(self):  # noqa: ANN201 (a Runner)
        from sana_deploy.engines.runners import runner_for

        entry = _value(self.entry)
        if not isinstance(entry, EngineEntry):
            folder = Path(entry)
            entry = EngineEntry(folder, read_meta(folder) or {"key": folder.name})
        cache = self.cache or EngineCache(entry.path.parents[2])
        cache.require_loadable(entry)
        cache.touch(entry)
        return runner_for(entry)


def engine_from_onnx(backend: Backend, job: BuildJob) -> BuiltEngine:
    return EngineFromOnnx(backend, job)()


def save_engine(engine, cache: EngineCache, meta: dict) -> EngineEntry:  # noqa: ANN001
    return SaveEngine(engine, cache, meta)()


def engine_from_path(entry: EngineEntry | str | Path, cache: EngineCache | None = None):  # noqa: ANN201
    return EngineFromPath(entry, cache)()


def load_runner(entry: EngineEntry | str | Path):  # noqa: ANN201
    """A callable ``runner(**inputs) -> {output: tensor}`` for a verified cache entry (contract with runtime)."""
    return engine_from_path(entry)
