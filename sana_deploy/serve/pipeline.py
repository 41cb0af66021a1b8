"""The one thing serving needs from the runtime: a callable with diffusers' text-to-image signature.

:class:`ImagePipeline` is that protocol (``SanaDeployPipeline`` implements it). Serving code never touches
engines directly, so a test can drive every limit, queue and error path with any object of this shape.

Thread safety: a pipeline owns engines with one execution context each, so **one call at a time per pipeline**.
:class:`SharedPipeline` makes that explicit for embedders: load once, call from any number of threads (or from an
asyncio server through :meth:`SharedPipeline.agenerate`); calls are serialised by a lock, and results do not
depend on which thread made them.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

from sana_deploy.serve.requests import ImageRequest


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


def generate_batch(pipe: ImagePipeline, requests: Sequence[ImageRequest]) -> list[list[Image.Image]]:
    """One pipeline call for requests of the same bucket; returns each request's images in order.

    Each image gets its own seeded generator (request seed + index), so an image does not depend on which other
    requests shared its batch.
    """
    first = requests[0]
    if any(r.bucket != first.bucket for r in requests):
        raise ValueError("generate_batch needs requests of one bucket (size, steps, guidance, negative prompt)")
    prompts, generators = [], []
    for r in requests:
        seed = r.seed if r.seed is not None else int(torch.randint(0, 2**62, ()).item())
        for i in range(r.n):
            prompts.append(r.prompt)
            generators.append(torch.Generator().manual_seed(seed + i))
    result = pipe(
        prompts,
        negative_prompt=first.negative_prompt,
        height=first.height,
        width=first.width,
        num_inference_steps=first.num_inference_steps,
        guidance_scale=first.guidance_scale,
        generator=generators,
        num_images_per_prompt=1,
    )
    images = images_of(result)
    if len(images) != len(prompts):
        raise RuntimeError(f"the pipeline returned {len(images)} images for {len(prompts)} prompts")
    out, at = [], 0
    for r in requests:
        out.append(images[at : at + r.n])
        at += r.n
    return out


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
    engine_dir: str | None = None,
    miss_policy: str = "error",
    random_weights: bool = False,
) -> ImagePipeline:
    """``SanaDeployPipeline`` from built engines (``engine_dir``) or, without one, from the PyTorch model."""
    from sana_deploy.runtime import SanaDeployPipeline

    if engine_dir:
        return SanaDeployPipeline.from_engines(engine_dir, model=model, on_miss=miss_policy)
    kwargs = {"random_weights": True} if random_weights else {}
    return SanaDeployPipeline.from_model(model, **kwargs)
