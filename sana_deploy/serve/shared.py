"""The one thing serving needs from the runtime: a callable with diffusers' text-to-image signature.

:class:`ImagePipeline` is that protocol (``SanaDeployPipeline`` implements it). Serving code never touches
engines directly, so a test can drive every limit, queue and error path with any object of this shape.

A pipeline that also takes ``callback(step, timestep, latents)`` (``SanaDeployPipeline`` does; it is called after
every denoising step) can be stopped between steps: the serving worker passes one that raises once every client of
the call has gone (:func:`takes_step_callback`).

Thread safety: a pipeline owns engines with one execution context each, so **one call at a time per pipeline**.
:class:`SharedPipeline` makes that explicit for embedders: load once, call from any number of threads (or from an
asyncio server through :meth:`SharedPipeline.agenerate`); calls are serialised by a lock, and results do not
depend on which thread made them.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from sana_deploy.runtime.generate import GenerateRequest, build_pipeline
from sana_deploy.runtime.resolution import plan_size, resize_and_crop
from sana_deploy.serve.requests import ImageRequest
from sana_deploy.serve.settings import adapter_files


@runtime_checkable
class ImagePipeline(Protocol):
    def __call__(
        self,
        prompt: str | list[str],
        *,
        negative_prompt: str | list[str] = "",
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_images_per_prompt: int = 1,
    ) -> Any:  # list[PIL.Image] or an object with ``.images`` (diffusers' output)
        ...


def images_of(result: Any) -> list[Image.Image]:
    images = getattr(result, "images", result)
    if not isinstance(images, list | tuple) or not all(isinstance(i, Image.Image) for i in images):
        raise TypeError(f"the pipeline returned {type(result).__name__}; expected a list of PIL images")
    return list(images)


def takes_step_callback(pipe: ImagePipeline) -> bool:
    """Whether ``pipe(...)`` takes a ``callback(step, timestep, latents)`` keyword (as ``SanaDeployPipeline``)."""
    target = pipe.pipe if isinstance(pipe, SharedPipeline) else pipe
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    param = params.get("callback")
    return param is not None and param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD)


SizeBucket = Callable[[int, int], tuple[int, int]]  # requested (width, height) -> generated (width, height)


def size_bucket(pipe: ImagePipeline) -> SizeBucket:
    """The size the pipeline generates a request at: its model's aspect-ratio bucket (the runtime's resolution
    binning, as ``sana-deploy generate`` does), or the requested size for a pipeline without a ``preset``."""
    preset = getattr(pipe, "preset", None)
    if preset is None:
        return lambda width, height: (width, height)

    def bucket(width: int, height: int) -> tuple[int, int]:
        plan = plan_size(height, width, preset, True)
        return plan.width, plan.height

    return bucket


def batch_key(request: ImageRequest, bucket: SizeBucket) -> tuple:
    """Requests with the same key share one pipeline call: bucketed size, steps, guidance, negative prompt, LoRA
    set, input images (by digest) and the img2img / ControlNet / PAG options."""
    return (bucket(request.width, request.height), *request.bucket[2:])


def generate_batch(
    pipe: ImagePipeline,
    requests: Sequence[ImageRequest],
    bucket: SizeBucket | None = None,
    callback: Callable[[int, float, torch.Tensor], None] | None = None,
) -> list[list[Image.Image]]:
    """One pipeline call for requests of one batch key (:func:`batch_key`); returns each request's images in order.

    Requests of one requested size run at that size (the pipeline bins it and resizes back, exactly as
    ``generate``). Requests of several sizes that share a bucket run at the bucket size, and each request's images
    are resized and centre-cropped back to its own size (the runtime's ``resize_and_crop``, on the 8-bit images).
    Each image gets its own seeded generator (request seed + index). ``callback`` goes to the pipeline (called
    after every denoising step; only for a pipeline that :func:`takes_step_callback`).
    """
    bucket = bucket or size_bucket(pipe)
    first = requests[0]
    if any(batch_key(r, bucket) != batch_key(first, bucket) for r in requests):
        raise ValueError("generate_batch needs requests of one bucket (size, steps, guidance, negative prompt)")
    prompts, generators = [], []
    for r in requests:
        seed = r.seed if r.seed is not None else int(torch.randint(0, 2**62, ()).item())
        for i in range(r.n):
            prompts.append(r.prompt)
            generators.append(torch.Generator().manual_seed(seed + i))
    one_size = all((r.width, r.height) == (first.width, first.height) for r in requests)
    width, height = (first.width, first.height) if one_size else bucket(first.width, first.height)
    extra = {} if callback is None else {"callback": callback}
    extra.update(first.pipeline_options())  # img2img, ControlNet, PAG: equal within a batch (its key holds them)
    _use_adapters(pipe, first.adapters)
    result = pipe(
        prompts,
        negative_prompt=first.negative_prompt,
        height=height,
        width=width,
        num_inference_steps=first.num_inference_steps,
        guidance_scale=first.guidance_scale,
        generator=generators,
        num_images_per_prompt=1,
        **extra,
    )
    images = images_of(result)
    if len(images) != len(prompts):
        raise RuntimeError(f"the pipeline returned {len(images)} images for {len(prompts)} prompts")
    out, at = [], 0
    for r in requests:
        out.append([_resized(im, r.width, r.height) for im in images[at : at + r.n]])
        at += r.n
    return out


def _use_adapters(pipe: ImagePipeline, adapters: tuple[tuple[str, float], ...]) -> None:
    """Every batch states its LoRA set (``()``: the base model); the pipeline swaps only when it changes."""
    target = pipe.pipe if isinstance(pipe, SharedPipeline) else pipe
    use = getattr(target, "use_adapters", None)
    if use is not None:
        use(adapters)
    elif adapters:
        raise RuntimeError("this pipeline cannot apply LoRA adapters")


def _resized(image: Image.Image, width: int, height: int) -> Image.Image:
    if image.size == (width, height):
        return image
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    x = resize_and_crop(x, height, width)[0].clamp(0, 1)
    return Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class SharedPipeline:
    """A pipeline loaded once and shared by threads: calls are serialised (engines run one call at a time)."""

    def __init__(self, pipe: ImagePipeline) -> None:
        self.pipe = pipe
        self._lock = threading.Lock()

    def __call__(self, prompt: str | list[str], **kwargs) -> Any:
        with self._lock:
            return self.pipe(prompt, **kwargs)

    def generate(self, requests: Sequence[ImageRequest]) -> list[list[Image.Image]]:
        with self._lock:
            return generate_batch(self.pipe, requests)

    async def agenerate(self, request: ImageRequest) -> list[Image.Image]:
        """For asyncio servers: runs in a worker thread so the event loop keeps serving."""
        return (await asyncio.to_thread(self.generate, [request]))[0]


def load_pipeline(
    model: str = "sana-tiny",
    engine_dir: str | Path | None = "engines",
    miss_policy: str | None = None,
    random_weights: bool = False,
    backend: str = "auto",
    precision: str = "fp32",
    kv_cache: bool = True,
    lora_dir: str | Path | None = None,
    lora_cache_size: int = 4,
    controlnet: str | Path | None = None,
) -> ImagePipeline:
    """The pipeline ``sana-deploy generate`` would build for the same options (``build_pipeline``): by default
    the model's engines in ``engines/`` when it has any (``backend="auto"``), else the PyTorch model; a size no
    engine covers follows ``miss_policy`` (default: generate's). ``lora_dir``: LoRA adapters requests may name
    (each read and checked now), with ``lora_cache_size`` fused weight sets kept for switching back. ``controlnet``:
    a Sana ControlNet folder (diffusers layout) for requests with a ``control_image``."""
    req = GenerateRequest(
        prompts=[],
        model=model,
        random_weights=random_weights,
        backend=backend,
        precision=precision,
        engine_dir=Path(engine_dir or "engines"),
        progress=False,
        kv_cache=kv_cache,
        controlnet=None if controlnet is None else Path(controlnet),
    )
    if miss_policy is not None:
        req.on_miss = miss_policy
    pipe = build_pipeline(req)
    pipe.set_progress_bar(False)
    pipe.lora_cache_size = lora_cache_size
    if lora_dir is not None:
        pipe.register_adapters(adapter_files(lora_dir))
    return pipe
