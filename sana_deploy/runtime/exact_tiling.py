"""Exact tiled DC-AE decode for the torch VAE: global low-resolution part once, local high-resolution part in tiles.

DC-AE's decoder (diffusers ``AutoencoderDC.decoder``) has EfficientViT blocks (global ReLU linear attention)
only at its three lowest resolutions (1/32, 1/16, 1/8 of the image) and purely local layers above them
(3×3 convs, nearest upsampling + pixel-shuffle shortcuts, per-pixel RMSNorm). Decoding *latent* tiles changes
the attention's global statistics per tile (visible on random-weight models, and the reason diffusers' 512
tiles show artifacts at 4K). Here the global part runs on the whole latent (its activations are 1/64 of the
image's pixel count), and only the local part is tiled, each tile with a halo at least as wide as its
receptive field and cropped back: the result equals the full decode up to float summation order.

Memory: the 1/8-resolution features of the whole image (512 channels for Sana's DC-AE: 0.5 GB fp32 at 4096²)
plus one tile's high-resolution activations, instead of the full-resolution ones (128×4096² = 8.6 GB fp32 each).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sana_deploy.models.config import VAE_SCALE


def _has_attention(block: nn.Module) -> bool:
    return any(type(m).__name__ == "EfficientViTBlock" for m in block.modules())


def _upsamples(block: nn.Module) -> bool:
    return any(type(m).__name__ == "DCUpBlock2d" for m in block.modules())


class SplitDecoder:
    """``low(latent)`` -> features at 1/``feature_scale`` resolution; ``high(features)`` -> image (local only)."""

    def __init__(self, vae: nn.Module) -> None:
        self.decoder = vae.decoder
        self.dtype = next(vae.parameters()).dtype
        blocks = list(reversed(self.decoder.up_blocks))  # execution order: lowest resolution first
        last_global = max((i for i, b in enumerate(blocks) if _has_attention(b)), default=-1)
        self.low_blocks, self.high_blocks = blocks[: last_global + 1], blocks[last_global + 1 :]
        ups = sum(_upsamples(b) for b in self.low_blocks)
        self.feature_scale = VAE_SCALE // 2**ups  # image pixels per feature pixel
        self.halo = self._receptive_halo()

    def _receptive_halo(self) -> int:
        """Feature pixels of context one output pixel of the local part needs, rounded up (+1 for safety)."""
        scale, reach = 1, 0.0
        for block in self.high_blocks:
            scale *= 2 if _upsamples(block) else 1
            reach += sum(m.kernel_size[0] // 2 for m in block.modules() if isinstance(m, nn.Conv2d)) / scale
        reach += self.decoder.conv_out.kernel_size[0] // 2 / (scale or 1)
        return math.ceil(reach) + 1

    def low(self, latent: torch.Tensor) -> torch.Tensor:
        d, x = self.decoder, latent.to(self.dtype)
        h = d.conv_in(x)
        if d.in_shortcut:
            h = h + x.repeat_interleave(d.in_shortcut_repeats, dim=1)
        for block in self.low_blocks:
            h = block(h)
        return h

    def high(self, h: torch.Tensor) -> torch.Tensor:
        d = self.decoder
        for block in self.high_blocks:
            h = block(h)
        h = d.norm_out(h.movedim(1, -1)).movedim(-1, 1)
        return d.conv_out(d.conv_act(h))


def split_tiled_decode(vae: nn.Module, latent: torch.Tensor, tile: int = 1024) -> torch.Tensor:
    """Decode ``latent`` (B,32,h,w; already divided by the scaling factor) in ``tile``-pixel tiles, exactly."""
    split = SplitDecoder(vae)
    with torch.inference_mode():
        feats = split.low(latent)
        b, _, fh, fw = feats.shape
        s, halo = split.feature_scale, split.halo
        t = max(1, tile // s)
        out = torch.empty(b, 3, fh * s, fw * s, dtype=torch.float32, device=latent.device)
        for y in range(0, fh, t):
            for x in range(0, fw, t):
                y0, x0 = max(0, y - halo), max(0, x - halo)
                y1, x1 = min(fh, y + t + halo), min(fw, x + t + halo)
                image = split.high(feats[:, :, y0:y1, x0:x1].contiguous()).float()
                ty, tx = (y - y0) * s, (x - x0) * s
                hh, ww = (min(y + t, fh) - y) * s, (min(x + t, fw) - x) * s
                out[:, :, y * s : y * s + hh, x * s : x * s + ww] = image[:, :, ty : ty + hh, tx : tx + ww]
                del image
    return out
