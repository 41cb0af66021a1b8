"""LoRA on :class:`~sana_deploy.runtime.pipeline.SanaDeployPipeline`, with diffusers' method names and meanings.

Every backend runs adapters fused: the transformer's weights become ``base + sum(scale_i * delta_i)`` inside the
compiled artifact (:meth:`~sana_deploy.runners.Runner.set_weight_deltas`), never re-exported or rebuilt. The state
follows diffusers' ``SanaPipeline`` (PEFT) exactly, so ported code gives the same images:

* ``load_lora_weights(path, adapter_name=None)`` loads an adapter and makes it the one active adapter;
* ``set_adapters(names, adapter_weights)`` chooses the active adapters and their weights;
* ``fuse_lora(lora_scale=...)`` bakes the active adapters in at ``weight * lora_scale``; ``unfuse_lora()`` takes
  that back out, and the adapters, still active, apply at ``weight * lora_scale`` (diffusers keeps the scale
  after fusing too), so the output does not change; ``unload_lora_weights()`` returns to the base model;
* ``disable_lora()`` / ``enable_lora()`` turn the active (unfused) adapters off and on;
* ``delete_adapters(names)`` and ``unload_lora_weights()`` forget adapters (the latter: all, and unfuse).

The weight change of a set of adapters is computed once and kept in a small LRU (``lora_cache_size``), so
switching back to a recent set only re-swaps weights. Changing the adapters while another thread runs a request
on the same pipeline is not supported: ``sana-deploy serve`` switches between batches.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from sana_deploy.errors import fail
from sana_deploy.models.lora import LoraAdapter, LoraError, check_scale, combined_deltas, load_adapter
from sana_deploy.models.transformer import SanaTransformer

DEFAULT_LORA_CACHE = 4


def transformer_weight_shapes(preset) -> dict[str, tuple[int, ...]]:  # noqa: ANN001 (SanaPreset)
    """``{parameter name: shape}`` of a preset's transformer, without allocating it (meta device)."""
    with torch.device("meta"):
        module = SanaTransformer(preset.transformer)
    return {n: tuple(p.shape) for n, p in module.named_parameters()}


class LoraMixin:
    """The LoRA methods of the pipeline; needs ``self.provider`` and ``self.preset``."""

    lora_cache_size: int = DEFAULT_LORA_CACHE

    # --- state (made on first use, so the pipeline's constructor stays as it is) -----------------------------------
    def _lora(self) -> dict:
        state = self.__dict__.get("_lora_state")
        if state is None:
            state = self.__dict__.setdefault(
                "_lora_state",
                {
                    "adapters": {},  # name -> LoraAdapter, in load order
                    "active": {},  # name -> weight
                    "fused": {},  # name -> coefficient baked in by fuse_lora
                    "enabled": True,
                    "shapes": None,
                    "cache": OrderedDict(),  # ((sha, coefficient), ...) -> deltas
                    "applied": None,  # the key of the set the provider runs
                    "lock": threading.RLock(),
                },
            )
        return state

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        state = self._lora()
        if state["shapes"] is None:
            state["shapes"] = transformer_weight_shapes(self.preset)
        return state["shapes"]

    # --- diffusers' API --------------------------------------------------------------------------------------------
    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | Path | Mapping[str, torch.Tensor],
        adapter_name: str | None = None,
        scale: float = 1.0,
        **kwargs: object,
    ) -> None:
        """Load a transformer LoRA (a local ``.safetensors`` file, its folder, or a state dict) and make it the
        active adapter at weight ``scale``. Hub names are not fetched: download the file and pass its path."""
        src = pretrained_model_name_or_path_or_dict
        weight_name = kwargs.pop("weight_name", None)
        if kwargs:
            fail(f"load_lora_weights got unsupported arguments {sorted(kwargs)}.", LoraError)
        if isinstance(src, (str, Path)) and weight_name:
            src = Path(src) / str(weight_name)
        scale = check_scale(scale)
        with self._lora()["lock"]:
            state = self._lora()
            name = adapter_name or f"default_{len(state['adapters'])}"
            if name in state["adapters"]:
                fail(
                    f"An adapter named {name!r} is already loaded; pass another adapter_name, or delete_adapters("
                    f"{name!r}) first.",
                    LoraError,
                )
            adapter = load_adapter(src, name)
            adapter.check(self._shapes())
            self._lora_apply(adapters={**state["adapters"], name: adapter}, active={name: scale})

    def set_adapters(
        self, adapter_names: str | Sequence[str], adapter_weights: float | Sequence[float] | None = None
    ) -> None:
        """Make these adapters the active ones, each at its weight (default 1.0)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if adapter_weights is None:
            weights = [1.0] * len(names)
        elif isinstance(adapter_weights, (int, float, str)):
            weights = [adapter_weights] * len(names)
        else:
            weights = list(adapter_weights)
        if len(weights) != len(names):
            fail(f"set_adapters got {len(names)} adapters and {len(weights)} weights; pass one weight each.", LoraError)
        with self._lora()["lock"]:
            self._require_known(names)
            active = {n: check_scale(w, f"weight of adapter {n!r}") for n, w in zip(names, weights, strict=True)}
            self._lora_apply(active=active)

    def get_active_adapters(self) -> list[str]:
        return list(self._lora()["active"])

    def get_list_adapters(self) -> dict[str, list[str]]:
        return {"transformer": list(self._lora()["adapters"])}

    def fuse_lora(
        self,
        components: Sequence[str] = ("transformer",),
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: Sequence[str] | None = None,
    ) -> None:
        """Bake the active adapters (or ``adapter_names``) in at ``weight * lora_scale``."""
        self._check_components(components)
        lora_scale = check_scale(lora_scale, "lora_scale")
        with self._lora()["lock"]:
            state = self._lora()
            names = list(adapter_names) if adapter_names is not None else list(state["active"])
            self._require_known(names)
            scaled = {n: state["active"].get(n, 1.0) * lora_scale for n in names}
            fused = {**state["fused"], **scaled}
            if safe_fusing:
                deltas = self._deltas(state["adapters"], fused)
                bad = [k for k, d in deltas.items() if not torch.isfinite(d).all()]
                if bad:
                    fail(f"fuse_lora(safe_fusing=True): the fused weights of {bad[0]} are not finite.", LoraError)
            # as in diffusers, the adapters keep weight * lora_scale after fusing (and after unfuse_lora)
            active = {n: scaled.get(n, w) for n, w in state["active"].items()}
            self._lora_apply(fused=fused, active=active)

    def unfuse_lora(self, components: Sequence[str] = ("transformer",)) -> None:
        """Take back what :meth:`fuse_lora` baked in; the still active adapters apply as before (diffusers' meaning)."""
        self._check_components(components)
        with self._lora()["lock"]:
            self._lora_apply(fused={})

    def disable_lora(self) -> None:
        with self._lora()["lock"]:
            self._lora_apply(enabled=False)

    def enable_lora(self) -> None:
        with self._lora()["lock"]:
            self._lora_apply(enabled=True)

    def delete_adapters(self, adapter_names: str | Sequence[str]) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        with self._lora()["lock"]:
            state = self._lora()
            self._require_known(names)
            keep = {k: v for k, v in state["adapters"].items() if k not in names}
            self._lora_apply(
                adapters=keep,
                active={k: v for k, v in state["active"].items() if k in keep},
                fused={k: v for k, v in state["fused"].items() if k in keep},
            )

    def unload_lora_weights(self) -> None:
        """Forget every adapter and run the base model again."""
        with self._lora()["lock"]:
            self._lora_apply(adapters={}, active={}, fused={}, enabled=True)

    # --- serving: named adapters chosen per request ----------------------------------------------------------------
    def register_adapters(self, sources: Mapping[str, str | Path]) -> list[str]:
        """Read and check adapters a server offers by name (all at once, so a bad file stops the start-up);
        :meth:`use_adapters` then activates them without reading files."""
        parsed = {}
        for name, path in sources.items():
            adapter = load_adapter(path, name)
            adapter.check(self._shapes())
            parsed[name] = adapter
        with self._lora()["lock"]:
            self._lora().setdefault("registry", {}).update(parsed)
        return sorted(self._lora()["registry"])

    def cached_adapter_sets(self) -> list[tuple]:
        """The LRU's keys, least recently used first (``((adapter sha256, coefficient), ...)`` each)."""
        return list(self._lora()["cache"])

    def registered_adapters(self) -> list[str]:
        return sorted(self._lora().get("registry", {}))

    def use_adapters(self, adapters: Sequence[tuple[str, float]]) -> None:
        """Run the next calls with exactly these ``(name, weight)`` adapters (``()``: the base model); names come
        from :meth:`register_adapters` or :meth:`load_lora_weights`. A recent set swaps from the LRU."""
        with self._lora()["lock"]:
            state = self._lora()
            registry = state.get("registry", {})
            loaded = dict(state["adapters"])
            for name, _ in adapters:
                if name not in loaded:
                    if name not in registry:
                        known = sorted({*registry, *loaded})
                        fail(f"No adapter named {name!r}; known: {', '.join(known) or 'none'}.", LoraError)
                    loaded[name] = registry[name]
            active = {n: check_scale(w, f"weight of adapter {n!r}") for n, w in adapters}
            self._lora_apply(adapters=loaded, active=active, fused={}, enabled=True)

    # --- one place the state turns into weights -------------------------------------------------------------------
    def active_lora_key(self) -> tuple:
        """What the transformer runs now: ``((adapter sha256, coefficient), ...)``; ``()`` is the base model."""
        state = self._lora()
        return self._key(state["adapters"], self._coefficients(state))

    @staticmethod
    def _coefficients(state: Mapping) -> dict[str, float]:
        coef = dict(state["fused"])
        if state["enabled"]:
            for n, w in state["active"].items():
                coef.setdefault(n, w)
        return coef

    @staticmethod
    def _key(adapters: Mapping[str, LoraAdapter], coef: Mapping[str, float]) -> tuple:
        return tuple(sorted((adapters[n].sha256, float(c)) for n, c in coef.items() if c != 0))

    def _deltas(self, adapters: Mapping[str, LoraAdapter], coef: Mapping[str, float]) -> dict[str, torch.Tensor]:
        key = self._key(adapters, coef)
        cache: OrderedDict = self._lora()["cache"]
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        deltas = combined_deltas([(adapters[n], c) for n, c in coef.items()], self._shapes())
        cache[key] = deltas
        while len(cache) > max(1, int(self.lora_cache_size)):
            cache.popitem(last=False)
        return deltas

    def _lora_apply(self, **changes: object) -> None:
        """Commit a state change: the provider swaps the weights in before the next step runs. On an error the
        state and the weights stay as they were."""
        state = self._lora()
        new = {**{k: state[k] for k in ("adapters", "active", "fused", "enabled")}, **changes}
        coef = self._coefficients(new)
        key = self._key(new["adapters"], coef)
        if key != state["applied"]:
            deltas = self._deltas(new["adapters"], coef) if key else {}
            self.provider.set_weight_deltas(deltas)
            state["applied"] = key
        state.update(new)

    def _require_known(self, names: Sequence[str]) -> None:
        known = self._lora()["adapters"]
        unknown = [n for n in names if n not in known]
        if unknown:
            fail(
                f"No adapter named {', '.join(map(repr, unknown))}; loaded: {', '.join(known) or 'none'} "
                f"(load_lora_weights first).",
                LoraError,
            )

    @staticmethod
    def _check_components(components: Sequence[str]) -> None:
        other = [c for c in components if c != "transformer"]
        if other:
            fail(f"LoRA applies to the transformer only; got components {other}.", LoraError)
