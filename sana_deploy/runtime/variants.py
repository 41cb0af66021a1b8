"""What the ControlNet and PAG change in the one denoising loop: the step batch, the guidance that combines it, and
the extra inputs of the step graph. docs/VARIANTS.md#controlnet and #pag-perturbed-attention-guidance.

* Guidance: CFG runs ``[uncond; cond]``; PAG adds a perturbed copy of the conditional rows, ``[uncond; cond;
  perturbed]`` (``[cond; perturbed]`` without CFG), in one transformer call, and combines them as diffusers'
  ``SanaPAGPipeline``: ``u + g·(c - u) + p·(c - ptb)`` (``c + p·(c - ptb)`` without CFG), with ``p`` optionally
  decaying with the timestep (``pag_adaptive_scale``).
* PAG's perturbed rows run the ``transformer_pag`` step graph with ``pag_identity`` (rows, num_layers): 1 on the
  chosen blocks of the perturbed rows, whose self-attention becomes the identity (its values).
* A ControlNet's residuals come from its own graph each step (:class:`~sana_deploy.runtime.denoiser.
  ControlNetDenoiser`); here only the checks of its options.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sana_deploy.errors import SanaDeployError, fail

# Blocks NVlabs' configs apply PAG to (docs/VARIANTS.md#pag-perturbed-attention-guidance): 28 blocks (0.6B) -> 14,
# 20 blocks (1.6B) -> 8; other depths default to diffusers' "transformer_blocks.0".
PAG_DEFAULT_LAYER = {28: 14, 20: 8}
_LAYER = re.compile(r"^(?:(?:transformer_)?blocks\.)?(\d+)(?:\.attn1)?$")


class VariantError(SanaDeployError):
    """A ControlNet or PAG option that cannot be used with this model or request."""


def _finite(value: object, what: str, minimum: float | None = None) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok or (minimum is not None and float(value) < minimum):
        bound = f" >= {minimum:g}" if minimum is not None else ""
        fail(f"{what} must be a finite number{bound}, got {value!r}.", VariantError)
    return float(value)


def parse_pag_layers(layers: object, num_layers: int) -> tuple[int, ...]:
    """Block indices from ``pag_applied_layers``: ints, ``"8"``, ``"transformer_blocks.8"`` (diffusers' names, also
    ``.attn1``), ``"blocks.8"``, a comma-separated string or a list of these; None: the model's default block."""
    if layers is None:
        return (PAG_DEFAULT_LAYER.get(num_layers, 0),)
    items = layers.split(",") if isinstance(layers, str) else [layers] if isinstance(layers, int) else layers
    if isinstance(items, Sequence) and not isinstance(items, str):
        items = list(items)
    if not isinstance(items, list) or not items:
        fail(f"PAG layers must be block indices (e.g. 8 or '8,14'), got {layers!r}.", VariantError)
    out = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            index = item
        else:
            m = _LAYER.match(str(item).strip()) if isinstance(item, str) else None
            if m is None:
                fail(
                    f"PAG layer {item!r} is not a block: pass block indices (8), or diffusers' names "
                    f"('transformer_blocks.8'); this model's blocks are 0-{num_layers - 1}.",
                    VariantError,
                )
            index = int(m.group(1))
        if not 0 <= index < num_layers:
            fail(
                f"PAG layer {index} is out of range: this model has {num_layers} transformer blocks "
                f"(0-{num_layers - 1}).",
                VariantError,
            )
        out.append(index)
    return tuple(sorted(set(out)))


@dataclass(frozen=True)
class Guidance:
    """How one request's step batch is laid out and combined (CFG and/or PAG)."""

    cfg: bool
    guidance_scale: float
    pag_scale: float = 0.0
    pag_adaptive_scale: float = 0.0
    pag_layers: tuple[int, ...] = ()

    @property
    def pag(self) -> bool:
        return self.pag_scale > 0

    @property
    def chunks(self) -> int:
        """Copies of the latents in one transformer call: uncond (CFG), cond, perturbed (PAG)."""
        return (2 if self.cfg else 1) + (1 if self.pag else 0)

    def text(self, emb: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[uncond; cond]`` (or ``[cond]``) embeddings -> the step batch's: the conditional rows once more for PAG."""
        if not self.pag:
            return emb, mask
        rows = emb.shape[0] // (2 if self.cfg else 1)
        return torch.cat([emb, emb[-rows:]]), torch.cat([mask, mask[-rows:]])

    def pag_identity(self, rows: int, num_layers: int, device: torch.device) -> torch.Tensor:
        """(chunks·rows, num_layers) fp32: 1 on the chosen blocks of the perturbed (last) rows."""
        identity = torch.zeros(self.chunks * rows, num_layers, dtype=torch.float32, device=device)
        identity[-rows:, list(self.pag_layers)] = 1.0
        return identity

    def scale_at(self, t: torch.Tensor | float) -> float:
        """PAG's scale at scheduler timestep ``t`` (diffusers' ``_get_pag_scale``)."""
        if self.pag_adaptive_scale > 0:
            return max(0.0, self.pag_scale - self.pag_adaptive_scale * (1000 - float(t)))
        return self.pag_scale

    def combine(self, v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        if self.pag:
            p = self.scale_at(t)
            if self.cfg:
                u, c, ptb = v.chunk(3)
                return u + self.guidance_scale * (c - u) + p * (c - ptb)
            c, ptb = v.chunk(2)
            return c + p * (c - ptb)
        if self.cfg:
            u, c = v.chunk(2)
            return u + self.guidance_scale * (c - u)
        return v


def check_variants(
    *,
    sprint: bool,
    controlnet_layers: int,
    control_image: object,
    conditioning_scale: object,
    pag_scale: object,
    pag_adaptive_scale: object,
    pag_layers: object,
    num_layers: int,
) -> tuple[float, float, float, tuple[int, ...]]:
    """The ControlNet and PAG options checked together, before any stage runs: (conditioning scale, PAG scale, PAG
    adaptive scale, PAG blocks)."""
    pag = _finite(pag_scale, "pag_scale (--pag-scale)", 0.0)
    adaptive = _finite(pag_adaptive_scale, "pag_adaptive_scale", 0.0)
    scale = _finite(conditioning_scale, "controlnet_conditioning_scale (--control-scale)")
    layers = parse_pag_layers(pag_layers, num_layers) if pag > 0 or pag_layers is not None else ()
    if control_image is not None and not controlnet_layers:
        fail(
            "A control image was given but this pipeline has no ControlNet: load one with --controlnet FOLDER "
            "(from_model(..., controlnet=FOLDER) / from_engines(..., controlnet=FOLDER)), or leave the control image "
            "out.",
            VariantError,
        )
    if sprint and (control_image is not None or pag > 0):
        fail(
            "ControlNet and PAG run with base Sana and Sana-1.5 (diffusers' SanaControlNetPipeline and "
            "SanaPAGPipeline); this is a Sana-Sprint model. Leave --control-image / --pag-scale out.",
            VariantError,
        )
    if control_image is not None and pag > 0:
        fail(
            "ControlNet and PAG together are not supported (diffusers has no pipeline for the pair); use one.",
            VariantError,
        )
    return scale, pag, adaptive, layers


__all__ = ["Guidance", "PAG_DEFAULT_LAYER", "VariantError", "check_variants", "parse_pag_layers"]
