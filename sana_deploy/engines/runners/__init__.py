"""Runners for cache entries: ``runner(**inputs) -> {output: tensor}``, one per backend."""

from __future__ import annotations

from sana_deploy.engines.entry import EngineEntry
from sana_deploy.engines.runners.base import Runner
from sana_deploy.errors import fail


def runner_for(entry: EngineEntry) -> Runner:
    """The runner for a (verified) entry's backend."""
    backend = entry.backend
    if backend == "onnxruntime":
        from sana_deploy.engines.runners.ort import OrtRunner

        return OrtRunner(entry)
    if backend == "aoti":
        from sana_deploy.engines.runners.aoti import AotiRunner

        return AotiRunner(entry)
    if backend in ("tensorrt", "tensorrt-rtx"):
        import importlib

        from sana_deploy.engines.runners.trt import TrtRunner

        return TrtRunner(entry, importlib.import_module("tensorrt" if backend == "tensorrt" else "tensorrt_rtx"))
    fail(f"No runner for backend {backend!r}.")


__all__ = ["Runner", "runner_for"]
