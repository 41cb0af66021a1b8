"""Serving limits and defaults: one frozen value object shared by the HTTP app, Ray Serve and the examples."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from sana_deploy.errors import ShapeError, fail

API_KEY_ENV = "SANA_DEPLOY_API_KEY"


@dataclass(frozen=True)
class ServeSettings:
    """What a server accepts and how hard it works before it says no.

    ``sizes`` are the OpenAI-style sizes a request may ask for, ``(width, height)`` in pixels; by default the
    aspect-ratio buckets of the model's base resolution (what the engines' profiles cover).
    """

    sizes: tuple[tuple[int, int], ...]
    default_size: tuple[int, int]
    max_n: int = 4  # images per request
    max_prompt_chars: int = 2000
    max_body_bytes: int = 64 * 1024
    num_inference_steps: int = 20
    max_inference_steps: int = 50
    guidance_scale: float = 4.5
    request_timeout_s: float = 300.0
    max_queue: int = 32  # requests waiting or running per replica; more -> 429
    max_batch_images: int = 4  # images merged into one pipeline call (same size, steps and guidance)
    batch_wait_s: float = 0.01  # how long the worker waits for same-bucket requests to join a batch
    api_key: str | None = field(default=None, repr=False)
    model_name: str = "sana-tiny"

    def with_(self, **changes) -> ServeSettings:
        return replace(self, **changes)

    def size_names(self) -> list[str]:
        return [f"{w}x{h}" for w, h in self.sizes]


def parse_sizes(spec: str) -> tuple[tuple[int, int], ...]:
    """``"1024x1024,768x1344"`` (OpenAI's width x height) -> ``((1024, 1024), (768, 1344))``."""
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        try:
            w, h = (int(v) for v in item.lower().split("x"))
        except ValueError:
            fail(f"Size {item!r} is not WIDTHxHEIGHT (e.g. 1024x1024).", ShapeError)
        if w <= 0 or h <= 0 or w % 32 or h % 32:
            fail(f"Size {item} must have positive multiples of 32 (the DC-AE downsampling).", ShapeError)
        out.append((w, h))
    if not out:
        fail("No sizes given; pass e.g. --sizes 1024x1024,768x1344.", ShapeError)
    return tuple(dict.fromkeys(out))


def bucket_sizes(bases: list[int]) -> tuple[tuple[int, int], ...]:
    """Every aspect-ratio bucket of the given base resolutions as (width, height)."""
    from sana_deploy.engines.profiles import aspect_ratio_buckets

    sizes = [(w, h) for base in bases for h, w in aspect_ratio_buckets(base)]
    return tuple(dict.fromkeys(sizes))


def default_settings(
    model_name: str = "sana-tiny",
    bases: list[int] | None = None,
    sizes: str | None = None,
    api_key: str | None = None,
    **overrides,
) -> ServeSettings:
    """Settings for a model: ``sizes`` wins over ``bases`` (default: the preset's base resolution's buckets).

    The API key is ``api_key`` or, when that is None, the ``SANA_DEPLOY_API_KEY`` environment variable.
    """
    from sana_deploy.models.config import PRESETS

    if sizes:
        allowed = parse_sizes(sizes)
        default = allowed[0]
    else:
        base = PRESETS[model_name].resolution if model_name in PRESETS else 1024
        allowed = bucket_sizes(bases or [base])
        default = (base, base) if (base, base) in allowed else allowed[0]
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    return ServeSettings(sizes=allowed, default_size=default, api_key=key, model_name=model_name, **overrides)
