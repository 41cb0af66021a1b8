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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from sana_deploy.contract import SPLIT_TRANSFORMER, MissPolicy
from sana_deploy.engines import EngineCache, load_runner
from sana_deploy.engines.resolve import resolve
from sana_deploy.errors import fail
from sana_deploy.runners import Runner
from sana_deploy.runners.weights import WeightSwapError
from sana_deploy.runtime.denoiser import Denoiser, OneGraphDenoiser, SplitDenoiser

TEXT_GRAPH = SPLIT_TRANSFORMER[0]

RUNTIME_BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "aoti", "tensorrt", "tensorrt-rtx")
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
    controlnet_layers: int = 0  # blocks of the ControlNet this provider serves (0: none loaded)

    @abstractmethod
    def runner(self, component: str, height: int, width: int, batch: int) -> Runner:
        """The runner that serves ``component`` for a request of this size and batch."""

    @abstractmethod
    def has_split(self) -> bool:
        """Whether this provider can serve the caption K/V split (``transformer_text`` + ``transformer_cached``)."""

    def denoiser(self, height: int, width: int, batch: int) -> Denoiser:
        """The split when ``kv_cache`` is on and the provider has it, else the one-graph transformer.

        Its runners carry the transformer weights last set with :meth:`set_weight_deltas` (a runner loaded
        later, e.g. the engine of another profile, is brought up to date here).
        """
        if self.kv_cache and self.has_split():
            text, cached = (self.runner(c, height, width, batch) for c in SPLIT_TRANSFORMER)
            self.sync_weights([text, cached])
            return SplitDenoiser(text, cached)
        runner = self.runner("transformer", height, width, batch)
        self.sync_weights([runner])
        return OneGraphDenoiser(runner)

    def step_denoiser(self, step: str, height: int, width: int, batch: int) -> SplitDenoiser:
        """The caption K/V split with another per-step graph (``transformer_control`` for a ControlNet,
        ``transformer_pag`` for PAG): the variants run on the split whatever ``kv_cache`` says."""
        text, cached = self.runner(TEXT_GRAPH, height, width, batch), self.runner(step, height, width, batch)
        self.sync_weights([text, cached])
        return SplitDenoiser(text, cached)

    # --- transformer weight swaps (LoRA) ------------------------------------------------------------------------
    def set_weight_deltas(self, deltas: Mapping[str, torch.Tensor]) -> None:
        """The transformer runs ``base + delta`` per named weight from now on (``{}``: the base weights).

        Runners already loaded swap now, so an adapter their artifacts cannot take is refused here and the
        previous weights stay; runners loaded later (another profile's engine) swap when first used.
        """
        with self._weights_lock():
            previous = getattr(self, "_weights", (None, {}))
            self._weights = (object(), dict(deltas))
            try:
                loaded = self.loaded_transformer_runners()
                if loaded:
                    self.sync_weights(loaded)
            except BaseException:
                self._weights = previous
                raise

    def loaded_transformer_runners(self) -> list[Runner]:
        """The transformer runners this provider holds now (what a weight swap must reach at once)."""
        return []

    def sync_weights(self, runners: list[Runner]) -> None:
        """Swap the current weight set into ``runners`` that do not carry it yet; none of them changes when one
        of the weights is not swappable in these artifacts."""
        with self._weights_lock():
            token, deltas = getattr(self, "_weights", (None, {}))
            if token is None or all(r.weights_token is token for r in runners):
                return
            held: dict[str, tuple[int, ...]] = {}
            for r in runners:
                held.update(r.swappable_weights())
            missing = sorted(set(deltas) - set(held))
            if missing:
                fail(
                    f"The {'/'.join(r.backend for r in runners)} transformer graph(s) cannot swap {len(missing)} "
                    f"weight(s) an adapter changes, e.g. {', '.join(missing[:3])}: the export holds them folded "
                    f"into other constants, or has no weight map. Export the model again with this version, or use "
                    f"an adapter that leaves these layers alone.",
                    WeightSwapError,
                )
            for r in runners:
                if r.weights_token is not token:
                    own = r.swappable_weights()
                    r.set_weight_deltas({k: v for k, v in deltas.items() if k in own})
                    r.weights_token = token

    def _weights_lock(self) -> threading.RLock:
        lock = self.__dict__.get("_weights_rlock")
        if lock is None:
            lock = self.__dict__.setdefault("_weights_rlock", threading.RLock())
        return lock

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

    def loaded_transformer_runners(self) -> list[Runner]:
        """The denoiser's runners (made now if they are factories), and any other transformer graph already made."""
        wanted = SPLIT_TRANSFORMER if self.kv_cache and self.has_split() else ("transformer",)
        out = [self.runner(c, 0, 0, 0) for c in wanted]
        with self._lock:
            made = [r for c, r in self.runners.items() if c not in wanted and isinstance(r, Runner)]
        out += [r for r in made if r.component.startswith("transformer")]
        return out

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
    component_models: dict[str, str] = field(default_factory=dict)  # cache model of other weights' graphs (ControlNet)
    events: list[dict] = field(default_factory=list)  # (component, shape, engine key or "fallback"), newest last
    # components served by these runners (or factories, made on first use) instead of engines: vae_backend="torch"
    overrides: dict[str, Runner | Callable[[], Runner]] = field(default_factory=dict)
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
        if component in self.overrides:
            with self._lock:
                r = self.overrides[component]
                if not isinstance(r, Runner):
                    r = self.overrides[component] = r()
            self._record(component, {"height": height, "width": width, "batch": batch}, f"override:{r.label}")
            return r
        kwargs = {**self.build_kwargs, "backend": self.build_backend, "kv_cache": self.kv_cache}
        if self.precision:
            kwargs["precision"] = self.precision
        find = None if self.backend == "auto" else self.backend  # auto: any engine that runs here
        model = self.component_models.get(component, self.model_id)  # a ControlNet's engines: under its own name
        entry = resolve(
            self.cache, model, component, height, width, batch, self.policy, find, build_model=self.model_id, **kwargs
        )
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

    def loaded_transformer_runners(self) -> list[Runner]:
        with self._lock:
            out = [r for r in self._runners.values() if r.component.startswith("transformer")]
            fallback = self._fallback
        if fallback is not None:
            fallback.set_weight_deltas(getattr(self, "_weights", (None, {}))[1])
        return out

    def _fallback_provider(self) -> StageProvider:
        with self._lock:
            if self._fallback is None:
                if self.fallback is None:
                    fail("No engine covers this request yet and the pipeline has no fallback backend.")
                self._fallback = self.fallback()
                token, deltas = getattr(self, "_weights", (None, {}))
                if token is not None:
                    self._fallback.set_weight_deltas(deltas)
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
