"""Tiled DC-AE decode: overlapping latent tiles, blended in pixel space, so peak memory follows the tile.

A plain 4096² DC-AE decode keeps several 128-channel 4096² activations alive (≈4 GB each in bf16; docs/SANA.md#dc-ae),
far beyond 16 GB. Here the decoder only ever sees ``tile``×``tile`` latents; the output image and one weight
plane are the only full-size buffers. Every tile has the same shape (the last row/column is snapped to the
image edge), so a static VAE engine covers all of them.

Blending: between two neighbouring tiles the overlap is cross-faded with complementary linear ramps (they
sum to one), so each pixel is a convex combination of tiles and the tile borders, where the decoder's zero
padding and per-tile linear attention differ most from a full decode, get the smallest weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sana_deploy.errors import ShapeError, fail
from sana_deploy.models.config import VAE_SCALE

Decode = Callable[[torch.Tensor], torch.Tensor]  # latent (B,32,h,w) -> image (B,3,32h,32w)


@dataclass(frozen=True)
class TilingConfig:
    """When and how to tile. Sizes are image pixels (multiples of 32).

    ``enabled``: True/False, or None for automatic: tile when the image has more than ``threshold`` pixels
    (default 2048², so 4K-tier images are tiled and 2K ones are not).
    ``method``: ``exact`` (global low-resolution part once, local part in halo tiles; needs the torch DC-AE,
    see :mod:`sana_deploy.runtime.exact_tiling`), ``latent`` (latent tiles through any VAE stage, blended), or
    ``auto``: exact when the torch DC-AE is loaded, latent tiles otherwise.
    """

    enabled: bool | None = None
    tile: int = 1024
    overlap: int = 256
    threshold: int = 2048 * 2048
    method: str = "auto"

    def __post_init__(self) -> None:
        for name in ("tile", "overlap"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0 or v % VAE_SCALE:
                fail(f"VAE {name} must be a non-negative multiple of {VAE_SCALE} pixels, got {v!r}.", ShapeError)
        if self.tile < 8 * VAE_SCALE:
            fail(f"VAE tile must be at least {8 * VAE_SCALE} pixels, got {self.tile}.", ShapeError)
        if self.method not in ("auto", "exact", "latent"):
            fail(f"VAE tiling method must be auto, exact or latent, got {self.method!r}.", ShapeError)
        if self.overlap >= self.tile // 2:
            fail(f"VAE tile overlap {self.overlap} must be less than half the tile ({self.tile}).", ShapeError)

    def use_tiling(self, height: int, width: int) -> bool:
        if self.enabled is not None:
            return self.enabled and (height > self.tile or width > self.tile)
        return height * width > self.threshold and (height > self.tile or width > self.tile)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering ``size`` with ``tile``-long windows at stride ``tile - overlap``, last one snapped."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def _axis_weights(starts: list[int], tile: int, scale: int) -> list[torch.Tensor]:
    """Per-tile 1-D blending weights in pixels: complementary ramps across each overlap, ones elsewhere."""
    n = tile * scale
    weights = []
    for i, s in enumerate(starts):
        w = torch.ones(n)
        if i > 0:  # overlap with the previous tile
            ov = (starts[i - 1] + tile - s) * scale
            w[:ov] = (torch.arange(ov) + 0.5) / ov
        if i + 1 < len(starts):  # overlap with the next tile
            ov = (s + tile - starts[i + 1]) * scale
            w[n - ov :] = torch.minimum(w[n - ov :], 1 - (torch.arange(ov) + 0.5) / ov)
        weights.append(w)
    return weights


def tiled_decode(decode: Decode, latent: torch.Tensor, tile: int = 1024, overlap: int = 256) -> torch.Tensor:
    """Decode ``latent`` (B,32,h,w) tile by tile (``tile``/``overlap`` in pixels); returns (B,3,32h,32w) fp32."""
    b, _, h, w = latent.shape
    t, o = tile // VAE_SCALE, overlap // VAE_SCALE
    th, tw = min(t, h), min(t, w)
    rows, cols = tile_starts(h, th, o), tile_starts(w, tw, o)
    wy, wx = _axis_weights(rows, th, VAE_SCALE), _axis_weights(cols, tw, VAE_SCALE)
    out = torch.zeros(b, 3, h * VAE_SCALE, w * VAE_SCALE, dtype=torch.float32, device=latent.device)
    total = torch.zeros(h * VAE_SCALE, w * VAE_SCALE, dtype=torch.float32, device=latent.device)
    for i, y in enumerate(rows):
        for j, x in enumerate(cols):
            image = decode(latent[:, :, y : y + th, x : x + tw].contiguous()).float()
            weight = (wy[i][:, None] * wx[j][None, :]).to(latent.device)
            py, px = y * VAE_SCALE, x * VAE_SCALE
            region = (slice(py, py + th * VAE_SCALE), slice(px, px + tw * VAE_SCALE))
            out[:, :, region[0], region[1]] += image * weight
            total[region] += weight
            del image
    return out / total
