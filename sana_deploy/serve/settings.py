"""Serving limits and defaults: one frozen value object shared by the HTTP app, Ray Serve and the examples."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from sana_deploy.contract import bucket_sizes as contract_bucket_sizes
from sana_deploy.contract import parse_profiles
from sana_deploy.errors import ShapeError, fail
from sana_deploy.runtime.resolution import MAX_SIDE

API_KEY_ENV = "SANA_DEPLOY_API_KEY"


@dataclass(frozen=True)
class ServeSettings:
    """What a server accepts and how hard it works before it says no.

    ``sizes``: the OpenAI-style sizes a request may ask for, ``(width, height)`` in pixels, or ``None`` (the
    default) for every size ``sana-deploy generate`` accepts: positive sides up to ``max_side``. The pipeline bins
    each request to the model's nearest aspect-ratio bucket and resizes the image back to the requested size.
    """

    sizes: tuple[tuple[int, int], ...] | None
    default_size: tuple[int, int]
    max_n: int = 4  # images per request
    max_prompt_chars: int = 2000
    max_body_bytes: int = 64 * 1024
    num_inference_steps: int = 20
    max_inference_steps: int = 50
    guidance_scale: float = 4.5
    request_timeout_s: float = 300.0
    max_queue: int = 32  # requests waiting or running per replica; more -> 429
    max_batch_images: int = 4  # images merged into one pipeline call (same bucket, steps, guidance, negative)
    batch_wait_s: float = 0.01  # how long the worker waits for same-bucket requests to join a batch
    api_key: str | None = field(default=None, repr=False)
    model_name: str = "sana-tiny"
    max_side: int = MAX_SIDE  # largest width or height when ``sizes`` is None

    def with_(self, **changes) -> ServeSettings:
        return replace(self, **changes)

    def size_names(self) -> list[str] | None:
        """The allow-list as ``WxH`` strings, or None when every size up to ``max_side`` is served."""
        return None if self.sizes is None else [f"{w}x{h}" for w, h in self.sizes]

    def allows(self, width: int, height: int) -> bool:
        if self.sizes is not None:
            return (width, height) in self.sizes
        return 0 < width <= self.max_side and 0 < height <= self.max_side


def parse_sizes(spec: str) -> tuple[tuple[int, int], ...]:
    """``"1024x1024,768x1344"`` (OpenAI's width x height) -> ``((1024, 1024), (768, 1344))``.

    Any positive size up to the largest side is valid (the pipeline bins it to an aspect-ratio bucket and
    resizes the image back), as in ``sana-deploy generate``.
    """
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        try:
            w, h = (int(v) for v in item.lower().split("x"))
        except ValueError:
            fail(f"Size {item!r} is not WIDTHxHEIGHT (e.g. 1024x1024).", ShapeError)
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            fail(f"Size {item} must have positive sides of at most {MAX_SIDE} pixels.", ShapeError)
        out.append((w, h))
    if not out:
        fail("No sizes given; pass e.g. --sizes 1024x1024,768x1344.", ShapeError)
    return tuple(dict.fromkeys(out))


def bucket_sizes(bases: list[int]) -> tuple[tuple[int, int], ...]:
    """Every aspect-ratio bucket of the given base resolutions as (width, height)."""
    sizes = [(w, h) for base in parse_profiles(bases) for h, w in contract_bucket_sizes(base)]
    return tuple(dict.fromkeys(sizes))


def default_settings(
    model_name: str = "sana-tiny",
    bases: list[int] | None = None,
    sizes: str | None = None,
    api_key: str | None = None,
    **overrides,
) -> ServeSettings:
    """Settings for a model. ``sizes`` (an allow-list) wins over ``bases`` (allow those bases' aspect buckets);
    with neither, every size ``generate`` accepts is served. The default size is the model's resolution.

    The API key is ``api_key`` or, when that is None, the ``SANA_DEPLOY_API_KEY`` environment variable.
    """
    from sana_deploy.models.config import PRESETS

    base = PRESETS[model_name].resolution if model_name in PRESETS else 1024
    allowed: tuple[tuple[int, int], ...] | None = None
    default = (base, base)
    if sizes:
        allowed = parse_sizes(sizes)
        default = allowed[0]
    elif bases:
        allowed = bucket_sizes(bases)
        squares = [s for s in [default] + [(b, b) for b in parse_profiles(bases)] if s in allowed]
        default = squares[0] if squares else allowed[0]
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    return ServeSettings(sizes=allowed, default_size=default, api_key=key, model_name=model_name, **overrides)
