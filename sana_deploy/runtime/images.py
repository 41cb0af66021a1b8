"""DC-AE output (B, 3, H, W) in about [-1, 1] to what the caller asked for, as diffusers' image processor does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sana_deploy.fileio import atomic_path


def postprocess(image: torch.Tensor, output_type: str = "pil"):
    """``pt``: (B,3,H,W) in [0,1]; ``np``: (B,H,W,3) float32 in [0,1]; ``pil``: list of RGB images."""
    image = (image.float() / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return image
    array = image.permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return array
    from PIL import Image

    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]


def save_png(image, path: str | Path) -> Path:
    """Write a PIL image as PNG atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
