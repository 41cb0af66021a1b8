"""Input images for the denoising loop: img2img's start image and the ControlNet's control image.

* :func:`load_image` / :func:`prepare_images`: a path, PIL image, numpy array or tensor -> (N, 3, H, W) fp32 in
  [-1, 1] at the size the request generates. Any mode PIL reads is converted to RGB (grayscale, palette, RGBA: the
  alpha channel is dropped), and the image is resized to cover the size (Lanczos, as diffusers' image processor)
  and center-cropped, so any input size works; an input of the generated aspect ratio is resized exactly as
  diffusers' ``VaeImageProcessor.preprocess(image, height, width)`` does.
* :func:`check_strength` / :func:`start_step`: img2img as diffusers' img2img pipelines do it: ``strength`` in
  (0, 1] skips the first ``steps - int(steps * strength)`` entries of the solver's schedule, and the encoded image
  is noised to the first entry that runs by the solver itself (``Solver.noised``: the rectified-flow
  ``(1 - σ)·x0 + σ·ε`` for the flow solvers, TrigFlow's ``cos s·x0·σd + sin s·σd·ε`` for sCM), so one img2img path
  serves every solver.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sana_deploy.errors import SanaDeployError, fail

MAX_IMAGE_PIXELS = 16384 * 16384  # the largest image a request generates; larger files are refused before decoding


class ImageInputError(SanaDeployError):
    """An input image (``--image``, ``--control-image``) that cannot be read or used."""


ImageLike = str | Path | np.ndarray | torch.Tensor | object  # object: a PIL image


def check_strength(strength: object) -> float:
    """``strength`` as a float in (0, 1], else a clear error."""
    ok = isinstance(strength, numbers.Real) and not isinstance(strength, bool) and math.isfinite(float(strength))
    if not ok or not 0 < float(strength) <= 1:
        fail(
            f"strength must be a number in (0, 1] (the share of the denoising schedule that runs from the noised "
            f"image: 1 ignores the image, small values keep it), got {strength!r}."
        )
    return float(strength)


def start_step(steps: int, strength: float) -> int:
    """The first schedule entry img2img runs (diffusers' ``get_timesteps``): ``int(steps - min(steps·strength,
    steps))``; at least one step always runs for strength > 0."""
    init = min(steps * strength, steps)
    return int(max(steps - init, 0))


def load_image(source: ImageLike, what: str = "image") -> object:
    """A PIL RGB image from a path or a PIL image (numpy arrays and tensors are returned as they are)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, np.ndarray | torch.Tensor):
        return source
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            fail(f"{what} {path}: no such file; pass an image file (PNG, JPEG, WebP, ...).", ImageInputError)
        try:
            with Image.open(path) as im:
                _check_pixels(im.size, what, path)
                im.load()
                source = im.copy()
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
            reason = str(exc).split("\n")[0] or type(exc).__name__
            fail(
                f"{what} {path} is not an image PIL can read ({reason}); pass a PNG, JPEG, WebP or other image file.",
                ImageInputError,
            )
    if not isinstance(source, Image.Image):
        fail(
            f"{what} must be an image file path, a PIL image, a numpy array (H, W[, C]) or a tensor (C, H, W) / "
            f"(B, C, H, W), got {type(source).__name__}.",
            ImageInputError,
        )
    _check_pixels(source.size, what, None)
    return source if source.mode == "RGB" else source.convert("RGB")


def _check_pixels(size: tuple[int, int], what: str, path: Path | None) -> None:
    w, h = size
    if w < 1 or h < 1 or w * h > MAX_IMAGE_PIXELS:
        where = f" {path}" if path else ""
        fail(f"{what}{where} is {w}x{h} pixels; pass an image of at most {MAX_IMAGE_PIXELS} pixels.", ImageInputError)


def image_size(source: object) -> tuple[int, int]:
    """(height, width) of a loaded image (PIL, array (H, W[, C]) or tensor (..., H, W))."""
    if isinstance(source, np.ndarray):
        return int(source.shape[0]), int(source.shape[1])
    if isinstance(source, torch.Tensor):
        return int(source.shape[-2]), int(source.shape[-1])
    w, h = source.size  # type: ignore[attr-defined]
    return h, w


def _cover(h0: int, w0: int, height: int, width: int) -> tuple[int, int]:
    ratio = max(height / h0, width / w0)
    return max(height, round(h0 * ratio)), max(width, round(w0 * ratio))


def _to_tensor(image: object, height: int, width: int, what: str) -> torch.Tensor:
    """(1, 3, height, width) fp32 in [-1, 1]."""
    from PIL import Image

    if isinstance(image, Image.Image):
        rh, rw = _cover(image.height, image.width, height, width)
        if (rh, rw) != (image.height, image.width):
            image = image.resize((rw, rh), resample=Image.Resampling.LANCZOS)
        top, left = (rh - height) // 2, (rw - width) // 2
        image = image.crop((left, top, left + width, top + height))
        array = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)[None] * 2 - 1
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
            fail(
                f"{what}: a numpy image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}.",
                ImageInputError,
            )
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / 255.0
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().float().cpu()
        tensor = tensor[0] if tensor.ndim == 4 and tensor.shape[0] == 1 else tensor
        if tensor.ndim == 2:
            tensor = tensor[None]
        if tensor.ndim != 3 or tensor.shape[0] not in (1, 3, 4):
            fail(
                f"{what}: a tensor image must be (C, H, W) or (1, C, H, W) with C 1, 3 or 4, got {tuple(image.shape)}.",
                ImageInputError,
            )
    else:  # pragma: no cover - load_image refuses everything else
        fail(f"{what}: unsupported image type {type(image).__name__}.", ImageInputError)
    if not bool(torch.isfinite(tensor).all()) or float(tensor.min()) < 0 or float(tensor.max()) > 1:
        fail(f"{what}: array and tensor images must hold finite values in [0, 1] (or uint8).", ImageInputError)
    tensor = tensor[:3] if tensor.shape[0] >= 3 else tensor.expand(3, *tensor.shape[1:])  # RGBA -> RGB, gray -> RGB
    h0, w0 = tensor.shape[-2:]
    rh, rw = _cover(h0, w0, height, width)
    if (rh, rw) != (h0, w0):
        tensor = F.interpolate(tensor[None], size=(rh, rw), mode="bilinear", align_corners=False)[0]
    top, left = (rh - height) // 2, (rw - width) // 2
    return tensor[None, :, top : top + height, left : left + width] * 2 - 1


def prepare_images(
    images: ImageLike | Sequence[ImageLike], height: int, width: int, what: str = "image"
) -> torch.Tensor:
    """(N, 3, height, width) fp32 in [-1, 1]: each image loaded, made RGB, resized to cover and center-cropped."""
    items = list(images) if isinstance(images, list | tuple) else [images]
    if not items:
        fail(f"{what}: got an empty list; pass one image, or one per prompt.", ImageInputError)
    return torch.cat([_to_tensor(load_image(item, what), height, width, what) for item in items])


__all__ = [
    "ImageInputError",
    "check_strength",
    "image_size",
    "load_image",
    "prepare_images",
    "start_step",
]
