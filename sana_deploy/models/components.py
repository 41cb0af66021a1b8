"""The loaded PyTorch modules of one Sana model and what identifies them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import nn

from sana_deploy.errors import fail
from sana_deploy.models.config import SanaPreset

COMPONENTS = ("transformer", "vae", "text_encoder")
# Opt-in split of the transformer: caption K/V once per request + a step graph that takes them.
SPLIT_TRANSFORMER = ("transformer_text", "transformer_cached")
ALL_COMPONENTS = COMPONENTS + SPLIT_TRANSFORMER
_ALIASES = {
    "text-encoder": "text_encoder",
    "text_encoder": "text_encoder",
    "te": "text_encoder",
    "vae": "vae",
    "vae-decoder": "vae",
    "transformer": "transformer",
    "dit": "transformer",
    "transformer-text": "transformer_text",
    "transformer_text": "transformer_text",
    "transformer-cached": "transformer_cached",
    "transformer_cached": "transformer_cached",
}

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_components(spec: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """``"transformer,vae,text-encoder"`` -> canonical component names, in pipeline order."""
    if spec is None:
        return COMPONENTS
    items = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [s for s in items if s not in _ALIASES]
    if bad or not items:
        fail(
            f"Unknown component(s) {bad or spec!r}; choose from transformer, vae, text-encoder "
            f"(or transformer-text and transformer-cached, the transformer split for caching the caption K/V)."
        )
    chosen = {_ALIASES[s] for s in items}
    return tuple(c for c in ALL_COMPONENTS if c in chosen)


def module_of(component: str) -> str:
    """The loaded module a component is exported from (the split transformer graphs use the transformer)."""
    return "transformer" if component in SPLIT_TRANSFORMER else component


def torch_dtype(precision: str) -> torch.dtype:
    if precision not in DTYPES:
        fail(f"Unknown precision {precision!r}; choose one of {', '.join(DTYPES)}.")
    return DTYPES[precision]


def module_hash(module: nn.Module) -> str:
    """sha256 over parameter/buffer names, shapes, dtypes and bytes: identifies the weights exactly."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class SanaComponents:
    """Transformer, DC-AE, Gemma-2 text encoder and tokenizer of one model (any may be None)."""

    preset: SanaPreset
    model_id: str  # preset name or the path it was loaded from
    transformer: nn.Module | None = None
    vae: nn.Module | None = None
    text_encoder: nn.Module | None = None
    tokenizer: object | None = None
    source: str = ""  # how it was loaded, for messages and manifests
    _hashes: dict[str, str] = field(default_factory=dict, repr=False)

    def get(self, component: str) -> nn.Module:
        module = getattr(self, component)
        if module is None:
            fail(f"Component {component!r} was not loaded for {self.model_id}; load it with components=... .")
        return module

    def content_hash(self, component: str) -> str:
        component = module_of(component)
        if component not in self._hashes:
            self._hashes[component] = module_hash(self.get(component))
        return self._hashes[component]
