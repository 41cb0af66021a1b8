"""Which runner serves a request: fixed runners (torch modules, ONNX Runtime over plain exports) or engines from
the cache.

On every request the pipeline asks its provider for the runner of (component, height, width, batch), and for the
denoiser (:meth:`StageProvider.denoiser`: the caption K/V split when the provider has it and ``kv_cache`` is on,
else the one-graph transformer). :class:`EngineStages` asks the engine cache and applies the miss policy
(:class:`~sana_deploy.contract.MissPolicy`):

* ``build``: build the smallest covering profile now, then run on it;
* ``background`` (the default for services): a build starts in a separate process and this request runs on
  the fallback runners; a later request finds the finished engine and switches to it;
* ``error``: a :class:`~sana_deploy.errors.ShapeError` naming the profile to build.

A build that fails never leaves a partial engine (the cache commits finished builds only) and never fails the
request under ``background``: the fallback serves it. Loaded runners are kept per cache entry.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from sana_deploy.contract import SPLIT_TRANSFORMER, MissPolicy
from sana_deploy.engines import EngineCache, load_runner
from sana_deploy.engines.resolve import resolve
from sana_deploy.errors import fail
from sana_deploy.runners import Runner
from sana_deploy.runtime.denoiser import Denoiser, OneGraphDenoiser, SplitDenoiser

RUNTIME_BACKENDS = ("auto", "torch", "onnxruntime", "aoti", "tensorrt", "tensorrt-rtx")
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
    """``runner(component, height, width, batch) -> Runner``, and the denoiser built from those runners."""

    kv_cache: bool = True

    @abstractmethod
    def runner(self, component: str, height: int, width: int, batch: int) -> Runner:
        """The runner that serves ``component`` for a request of this size and batch."""

    @abstractmethod
    def has_split(self) -> bool:
        """Whether this provider can serve the caption K/V split (``transformer_text`` + ``transformer_cached``)."""

    def denoiser(self, height: int, width: int, batch: int) -> Denoiser:
        """The split when ``kv_cache`` is on and the provider has it, else the one-graph transformer."""
        if self.kv_cache and self.has_split():
            text, cached = (self.runner(c, height, width, batch) for c in SPLIT_TRANSFORMER)
            return SplitDenoiser(text, cached)
        return OneGraphDenoiser(self.runner("transformer", height, width, batch))

    def torch_vae(self) -> torch.nn.Module | None:
        """The torch DC-AE module when this provider has one loaded (enables the exact tiled decode)."""
        return None


@dataclass
class FixedStages(StageProvider):
    """The same runner for every shape: eager torch modules or ONNX Runtime sessions over dynamic exports.

    ``runners`` may hold factories (called once, on first use), so a split that is never asked for is never
    loaded or exported.
    """

    runners: dict[str, Runner | Callable[[], Runner]]
    vae_module: torch.nn.Module | None = None
    kv_cache: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def runner(self, component: str, height: int, width: int, batch: int) -> Runner:
        with self._lock:
            if component not in self.runners:
                fail(f"This pipeline has no {component} stage (it has {', '.join(self.runners)}).")
            r = self.runners[component]
            if not isinstance(r, Runner):
                r = self.runners[component] = r()
            return r

    def has_split(self) -> bool:
        return all(c in self.runners for c in SPLIT_TRANSFORMER)

    def torch_vae(self) -> torch.nn.Module | None:
        return self.vae_module


@dataclass
class EngineStages(StageProvider):
    """Engines from an :class:`~sana_deploy.engines.EngineCache`, a miss policy and a lazily made fallback."""

    cache: EngineCache
    model_id: str
    policy: str = "background"
    backend: str = "auto"
    precision: str | None = None
    fallback: Callable[[], StageProvider] | None = None
    build_kwargs: dict = field(default_factory=dict)
    kv_cache: bool = True
    build_backend: str = ""  # what a miss builds ("auto" resolved to a backend whose engines run here)
    events: list[dict] = field(default_factory=list)  # (component, shape, engine key or "fallback"), newest last
    _runners: dict[str, Runner] = field(default_factory=dict, repr=False)
    _fallback: StageProvider | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.policy = MissPolicy.parse(self.policy).value
        if self.backend != "auto":
            require_runnable(self.backend)
        self.build_backend = self.build_backend or self.backend

    def has_split(self) -> bool:
        """The split unless the cache holds one-graph transformer engines of this model and no split ones (an
        older build): a miss then builds the split. Asked once per request: reads the manifest only."""
        kinds = self.cache.components(self.model_id)
        return set(SPLIT_TRANSFORMER) <= kinds or "transformer" not in kinds

    def runner(self, component: str, height: int, width: int, batch: int) -> Runner:
        kwargs = {**self.build_kwargs, "backend": self.build_backend, "kv_cache": self.kv_cache}
        if self.precision:
            kwargs["precision"] = self.precision
        find = None if self.backend == "auto" else self.backend  # auto: any engine that runs here
        entry = resolve(self.cache, self.model_id, component, height, width, batch, self.policy, find, **kwargs)
        shape = {"height": height, "width": width, "batch": batch}
        if entry is None:  # background build started (or running): serve from the fallback
            self._record(component, shape, "fallback")
            return self._fallback_provider().runner(component, height, width, batch)
        self._record(component, shape, entry.key)
        with self._lock:
            if entry.key not in self._runners:
                require_runnable(entry.backend)
                self._runners[entry.key] = load_runner(entry)
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


def engine_cache_has(cache: EngineCache, model_id: str) -> bool:
    """Whether the cache holds any engine of ``model_id`` (what ``--backend auto`` looks for)."""
    return bool(cache.components(model_id))
