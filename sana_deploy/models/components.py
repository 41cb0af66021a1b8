"""The loaded PyTorch modules of one Sana model and what identifies them."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field

import torch
from torch import nn

from sana_deploy.contract import module_of
from sana_deploy.errors import fail
from sana_deploy.models.config import SanaPreset


def module_hash(module: nn.Module) -> str:
    """sha256 over parameter/buffer names, shapes, dtypes and bytes: identifies the weights exactly."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cast_copy(module: nn.Module, dtype: torch.dtype, device: str | torch.device | None = None) -> nn.Module:
    """``module`` in ``dtype`` (and on ``device``; None: where it is). A cast copy when any floating-point parameter
    is elsewhere, so the caller's modules (a pipeline's, the bench's) stay as loaded; ``module`` itself otherwise."""
    target = None if device is None else torch.device(device).type
    have = {(p.device.type, p.dtype) for p in module.parameters() if p.is_floating_point()}
    if len(have) <= 1 and all(dt == dtype and target in (None, dev) for dev, dt in have):
        return module
    return copy.deepcopy(module).to(device=device, dtype=dtype)


@dataclass
class SanaComponents:
    """Transformer, DC-AE, Gemma-2 text encoder and tokenizer of one model (any may be None), and a ControlNet."""

    preset: SanaPreset
    model_id: str  # preset name or the path it was loaded from
    transformer: nn.Module | None = None
    vae: nn.Module | None = None
    text_encoder: nn.Module | None = None
    tokenizer: object | None = None
    source: str = ""  # how it was loaded, for messages and manifests
    controlnet: nn.Module | None = None  # a Sana ControlNet loaded next to the model (models/controlnet.py)
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
