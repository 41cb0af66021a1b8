"""Which stage runs a request: fixed stages (torch / our ONNX Runtime sessions) or engines from the cache.

On every request the pipeline asks its provider for a stage covering (component, height, width, batch).
:class:`EngineStages` asks the engine cache (``EngineCache.resolve``) and applies the miss policy:

* ``build``: build the smallest covering profile now, then run on it;
* ``background`` (the default for services): a build starts in a separate process and this request runs on
  the fallback stages; a later request finds the finished engine and switches to it;
* ``error``: a :class:`~sana_deploy.errors.ShapeError` naming the profile to build.

A build that fails never leaves a partial engine (the cache commits finished builds only) and never fails the
request under ``background``: the fallback serves it. Loaded runners are kept per cache entry.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sana_deploy.errors import SanaDeployError, fail
from sana_deploy.runtime.stages import Stage

RUNTIME_BACKENDS = ("auto", "torch", "onnxruntime", "aoti", "tensorrt", "tensorrt-rtx")
MISS_POLICIES = ("build", "background", "error")
_CUDA_ONLY = ("tensorrt", "tensorrt-rtx")


def require_runnable(backend: str) -> None:
    """TensorRT engines only run on an NVIDIA GPU: say so instead of failing inside the runner."""
    if backend in _CUDA_ONLY and not torch.cuda.is_available():
        fail(
            f"Backend {backend!r} runs TensorRT engines, which need an NVIDIA GPU with CUDA; this machine has none "
            f"(torch.cuda.is_available() is False). Use --backend onnxruntime, aoti or torch here, or run on a "
            f"machine with an NVIDIA GPU."
        )


class StageProvider(ABC):
    """``stage(component, height, width, batch) -> Stage``; ``events`` records what each request ran on."""

    @abstractmethod
    def stage(self, component: str, height: int, width: int, batch: int) -> Stage:
        """The stage that serves ``component`` for a request of this size and batch."""

    def torch_vae(self) -> torch.nn.Module | None:
        """The torch DC-AE module when this provider has one loaded (enables the exact tiled decode)."""
        return None


@dataclass
class FixedStages(StageProvider):
    """The same stage for every shape: eager torch modules or ONNX Runtime sessions over dynamic exports."""

    stages: dict[str, Stage]
    vae_module: torch.nn.Module | None = None

    def stage(self, component: str, height: int, width: int, batch: int) -> Stage:
        return self.stages[component]

    def torch_vae(self) -> torch.nn.Module | None:
        return self.vae_module


@dataclass
class EngineStages(StageProvider):
    """Engines from an :class:`~sana_deploy.engines.EngineCache`, a miss policy and a lazily made fallback."""

    cache: object  # EngineCache
    model_id: str
    policy: str = "background"
    backend: str = "auto"
    precision: str | None = None
    fallback: Callable[[], StageProvider] | None = None
    build_kwargs: dict = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)  # (component, shape, engine key or "fallback"), newest last
    _runners: dict[str, Stage] = field(default_factory=dict, repr=False)
    _fallback: StageProvider | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.policy not in MISS_POLICIES:
            fail(f"Unknown miss policy {self.policy!r}; choose one of {', '.join(MISS_POLICIES)}.")
        if self.backend != "auto":
            require_runnable(self.backend)

    def build_backend(self) -> str:
        """What a miss builds: ``auto`` lets the engines pick on a CUDA machine; without CUDA only an engine that
        runs here helps this process (``auto`` would pick tensorrt-rtx, which builds on a CPU but runs on a GPU)."""
        if self.backend == "auto" and not torch.cuda.is_available():
            return "onnxruntime"
        return self.backend

    def stage(self, component: str, height: int, width: int, batch: int) -> Stage:
        kwargs = {**self.build_kwargs, "backend": self.build_backend()}
        if self.precision:
            kwargs["precision"] = self.precision
        entry = self.cache.resolve(self.model_id, component, height, width, batch, self.policy, **kwargs)
        shape = {"height": height, "width": width, "batch": batch}
        if entry is None:  # background build started (or running): serve from the fallback
            self._record(component, shape, "fallback")
            return self._fallback_provider().stage(component, height, width, batch)
        self._record(component, shape, entry.key)
        return self._runner(entry)

    def _runner(self, entry) -> Stage:  # noqa: ANN001 (EngineEntry)
        with self._lock:
            if entry.key not in self._runners:
                from sana_deploy.engines import load_runner

                require_runnable(entry.backend)
                runner = load_runner(entry)
                pad = None
                if entry.component == "text_encoder":
                    shapes = entry.meta.get("input_shapes", {}).get("input_ids")
                    pad = int(shapes[0][1]) if shapes else None  # the profile's minimum sequence length
                self._runners[entry.key] = Stage(
                    entry.component,
                    runner,
                    entry.backend,
                    entry.precision,
                    reentrant=False,
                    detail=str(entry.artifact),
                    pad_seq_to=pad,
                )
            return self._runners[entry.key]

    def _fallback_provider(self) -> StageProvider:
        with self._lock:
            if self._fallback is None:
                if self.fallback is None:
                    fail("No engine covers this request yet and the pipeline has no fallback backend.")
                self._fallback = self.fallback()
            return self._fallback

    def _record(self, component: str, shape: dict, used: str) -> None:
        with self._lock:
            self.events.append({"component": component, **shape, "engine": used})
            del self.events[:-256]

    def torch_vae(self) -> torch.nn.Module | None:
        return self._fallback.torch_vae() if self._fallback is not None else None


def engine_cache_has(engine_dir: Path, model_id: str) -> bool:
    """Whether ``engine_dir`` holds any engine of ``model_id`` (what ``--backend auto`` looks for)."""
    try:
        from sana_deploy.engines import EngineCache

        cache = EngineCache(engine_dir)
        return Path(engine_dir).exists() and any(e.model == model_id for e in cache.entries())
    except SanaDeployError:
        return False
