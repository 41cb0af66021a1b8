"""Request sizes: validation, Sana's aspect-ratio binning, and resizing back to the requested size.

Height and width must be positive multiples of 32 (DC-AE downsamples 32×, patch size 1). With binning on
(the default, like diffusers' ``SanaPipeline``) any positive size is accepted: it is mapped to the aspect
bucket of the model's tier closest in aspect ratio, generated there, and resized + center-cropped back.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sana_deploy.contract import aspect_buckets
from sana_deploy.errors import ShapeError, fail
from sana_deploy.models.config import VAE_SCALE, SanaPreset

MAX_SIDE = 16384  # 512 latents: the exported graphs' axis limit


def model_tier(preset: SanaPreset) -> int:
    """The bucket table a model bins to, from its transformer's sample size (as ``SanaPipeline`` chooses)."""
    return preset.transformer.sample_size * VAE_SCALE


def check_size(name: str, value: object) -> int:
    """A positive integer pixel size, or a clear error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        fail(f"{name} must be a positive integer number of pixels, got {value!r}.", ShapeError)
    if isinstance(value, float) and not value.is_integer():
        fail(f"{name} must be a whole number of pixels, got {value!r}.", ShapeError)
    value = int(value)
    if value <= 0:
        fail(f"{name} must be positive, got {value}.", ShapeError)
    if value > MAX_SIDE:
        fail(f"{name} {value} is larger than the largest supported side ({MAX_SIDE} px).", ShapeError)
    return value


def nearest_valid(value: int) -> list[int]:
    """The multiples of 32 on either side of ``value`` (one entry when it is one)."""
    low = max(VAE_SCALE, value // VAE_SCALE * VAE_SCALE)
    high = -(-value // VAE_SCALE) * VAE_SCALE
    return sorted({low, high})


def bin_size(height: int, width: int, tier: int) -> tuple[int, int]:
    """The bucket closest in aspect ratio (diffusers' ``classify_height_width_bin``)."""
    buckets = aspect_buckets(tier)
    ratio = height / width
    key = min(buckets, key=lambda r: abs(float(r) - ratio))
    return buckets[key]


@dataclass(frozen=True)
class SizePlan:
    """What is generated (``height``×``width``) and what is returned (``out_height``×``out_width``)."""

    height: int
    width: int
    out_height: int
    out_width: int

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.height // VAE_SCALE, self.width // VAE_SCALE

    @property
    def resized(self) -> bool:
        return (self.height, self.width) != (self.out_height, self.out_width)


def plan_size(height: object, width: object, preset: SanaPreset, binning: bool = True) -> SizePlan:
    """Validate a request size and decide what to generate.

    ``None`` means the model's native resolution. Binning on: nearest aspect bucket of the model's tier.
    Binning off: the size itself, which must be a multiple of 32 (the error names the nearest valid sizes).
    """
    native = preset.resolution
    h = native if height is None else check_size("height", height)
    w = native if width is None else check_size("width", width)
    if binning:
        bh, bw = bin_size(h, w, model_tier(preset))
        return SizePlan(bh, bw, h, w)
    if h % VAE_SCALE or w % VAE_SCALE:
        options = [f"{a}x{b}" for a in nearest_valid(h) for b in nearest_valid(w)]
        bh, bw = bin_size(h, w, model_tier(preset))
        fail(
            f"{h}x{w} (height x width) is not a valid size: both sides must be multiples of {VAE_SCALE} "
            f"(DC-AE downsamples {VAE_SCALE}x). Nearest valid sizes: {', '.join(options)}; nearest aspect bucket "
            f"{bh}x{bw}. Or turn resolution binning on to generate at the bucket and resize back.",
            ShapeError,
        )
    return SizePlan(h, w, h, w)


def resize_and_crop(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale (B, C, H, W) images to cover ``height``×``width`` (bilinear), then center-crop to it."""
    h0, w0 = images.shape[-2:]
    if (h0, w0) == (height, width):
        return images
    ratio = max(height / h0, width / w0)
    rh, rw = int(h0 * ratio), int(w0 * ratio)
    images = F.interpolate(images, size=(rh, rw), mode="bilinear", align_corners=False)
    top, left = (rh - height) // 2, (rw - width) // 2
    return images[..., top : top + height, left : left + width]
