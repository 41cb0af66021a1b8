"""The values every stage agrees on, written once: components, the precision policy, resolution buckets and
profile bases, where exports live, and the miss policies.

Imported by export, engines, runtime, bench and serve alike; it imports nothing from them (only model constants
and the error path), so it sits at the bottom of the package's layers (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import os
from enum import Enum
from functools import cache
from pathlib import Path

import torch

from sana_deploy.errors import ShapeError, fail
from sana_deploy.models.config import VAE_SCALE

# --- components ---------------------------------------------------------------------------------------------
COMPONENTS = ("transformer", "vae", "text_encoder")
# The transformer split: caption K/V once per request (transformer_text) + the per-step graph that takes them.
SPLIT_TRANSFORMER = ("transformer_text", "transformer_cached")
# The DC-AE encoder (image -> latent; img2img and the ControlNet's control image), exported from the loaded vae.
VAE_ENCODER = "vae_encoder"
# The graphs of one base model (what a model's export folder can hold without other weights).
BASE_GRAPHS = COMPONENTS + SPLIT_TRANSFORMER + (VAE_ENCODER,)
# Variants' graphs (docs/VARIANTS.md): a ControlNet (its own weights, loaded next to the model), the per-step
# transformer graph that takes its block residuals, and the per-step graph with PAG's per-layer identity input.
CONTROLNET = "controlnet"
TRANSFORMER_CONTROL = "transformer_control"
TRANSFORMER_PAG = "transformer_pag"
VARIANT_STEP_GRAPHS = (TRANSFORMER_CONTROL, TRANSFORMER_PAG)
ALL_COMPONENTS = BASE_GRAPHS + VARIANT_STEP_GRAPHS + (CONTROLNET,)
# What the product path runs (and `build` builds) by default: the split, not the one-graph transformer.
PIPELINE_COMPONENTS = ("text_encoder", "transformer_text", "transformer_cached", "vae")
ONE_GRAPH_COMPONENTS = ("text_encoder", "transformer", "vae")
# Components whose inputs do not depend on the image size (only the batch and text length count).
SIZE_FREE_COMPONENTS = ("text_encoder", "transformer_text")
_ALIASES = {
    "text-encoder": "text_encoder",
    "text_encoder": "text_encoder",
    "te": "text_encoder",
    "vae": "vae",
    "vae-decoder": "vae",
    "transformer": "transformer",
    "dit": "transformer",
    "transformer-text": "transformer_text",
    "transformer_text": "transformer_text",
    "transformer-cached": "transformer_cached",
    "transformer_cached": "transformer_cached",
    "vae-encoder": VAE_ENCODER,
    "vae_encoder": VAE_ENCODER,
    "controlnet": CONTROLNET,
    "transformer-control": TRANSFORMER_CONTROL,
    "transformer_control": TRANSFORMER_CONTROL,
    "transformer-pag": TRANSFORMER_PAG,
    "transformer_pag": TRANSFORMER_PAG,
}


def parse_components(spec: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """``"transformer,vae,text-encoder"`` -> canonical component names, in pipeline order."""
    if spec is None:
        return COMPONENTS
    items = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [s for s in items if s not in _ALIASES]
    if bad or not items:
        fail(
            f"Unknown component(s) {bad or spec!r}; choose from transformer, vae, text-encoder "
            f"(or transformer-text and transformer-cached, the transformer split for caching the caption K/V; "
            f"vae-encoder, the DC-AE encoder for img2img; controlnet, transformer-control and transformer-pag, the "
            f"ControlNet and PAG graphs)."
        )
    chosen = {_ALIASES[s] for s in items}
    return tuple(c for c in ALL_COMPONENTS if c in chosen)


def module_of(component: str) -> str:
    """The loaded module a component is exported from (the split transformer graphs use the transformer, the DC-AE
    encoder the vae)."""
    if component == VAE_ENCODER:
        return "vae"
    return "transformer" if component in SPLIT_TRANSFORMER + VARIANT_STEP_GRAPHS else component


def pipeline_components(kv_cache: bool = True) -> tuple[str, ...]:
    """The components a pipeline runs: with the caption K/V split (default) or the one-graph transformer."""
    return PIPELINE_COMPONENTS if kv_cache else ONE_GRAPH_COMPONENTS


# --- precision policy ---------------------------------------------------------------------------------------
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = tuple(DTYPES)


def torch_dtype(precision: str) -> torch.dtype:
    if precision not in DTYPES:
        fail(f"Unknown precision {precision!r}; choose one of {', '.join(DTYPES)}.")
    return DTYPES[precision]


def component_precision(component: str, precision: str) -> str:
    """The precision a component runs at for a requested ``precision``: the transformer graphs take it; the DC-AE
    and Gemma-2 are never run in fp16 (they must stay in bf16 or fp32, docs/SANA.md), so fp16 keeps them fp32. A
    ControlNet (transformer blocks) runs at the transformer's precision."""
    torch_dtype(precision)
    if module_of(component) not in ("transformer", CONTROLNET) and precision == "fp16":
        return "fp32"
    return precision


def component_dtype(component: str, precision: str) -> torch.dtype:
    """:func:`component_precision` as a torch dtype."""
    return DTYPES[component_precision(component, precision)]


# --- resolution buckets and profiles ------------------------------------------------------------------------
PROFILE_BASES = (512, 1024, 2048, 4096)


@cache
def aspect_buckets(base: int) -> dict[str, tuple[int, int]]:
    """Sana's aspect-ratio bucket table at a base resolution: aspect ratio -> (height, width) pixels.

    The same tables diffusers' ``SanaPipeline`` bins to (``ASPECT_RATIO_{512,1024,2048,4096}_BIN``).
    """
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import ASPECT_RATIO_512_BIN, ASPECT_RATIO_1024_BIN
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN
    from diffusers.pipelines.sana.pipeline_sana import ASPECT_RATIO_4096_BIN

    tables = {512: ASPECT_RATIO_512_BIN, 1024: ASPECT_RATIO_1024_BIN, 2048: ASPECT_RATIO_2048_BIN}
    tables[4096] = ASPECT_RATIO_4096_BIN
    if base not in tables:
        fail(f"No aspect-ratio buckets for base {base}; the bases are {', '.join(map(str, PROFILE_BASES))}.")
    return {k: (int(h), int(w)) for k, (h, w) in tables[base].items()}


def bucket_sizes(base: int) -> tuple[tuple[int, int], ...]:
    """Every distinct (height, width) bucket at ``base``, sorted."""
    return tuple(sorted(set(aspect_buckets(check_base(base)).values())))


def check_base(base: object) -> int:
    """``base`` as an int if it names a profile; a clear error listing the valid ones otherwise."""
    valid = ", ".join(map(str, PROFILE_BASES))
    try:
        value = int(str(base).strip())
    except ValueError:
        fail(f"Profile {base!r} is not a number; valid profiles are {valid} (base resolution in pixels).", ShapeError)
    if value not in PROFILE_BASES:
        fail(
            f"No profile {value}; valid profiles are {valid} (Sana's base resolutions, each covering its "
            f"aspect-ratio buckets). For one exact shape use --static with the closest base.",
            ShapeError,
        )
    return value


def parse_profiles(spec: str | int | list | tuple) -> list[int]:
    """``--profiles`` in every command: ``"1024,2048,4096"`` -> ``[1024, 2048, 4096]`` (bucket bases, order kept,
    duplicates dropped). A base covers every aspect-ratio bucket of that resolution."""
    items = spec.split(",") if isinstance(spec, str) else [spec] if isinstance(spec, int) else list(spec)
    items = [i for i in items if str(i).strip()]
    if not items:
        fail(f"No profiles given; pass e.g. --profiles 1024,2048 (valid: {PROFILE_BASES}).", ShapeError)
    return list(dict.fromkeys(check_base(i) for i in items))


def latent_size(height: int, width: int) -> tuple[int, int]:
    return height // VAE_SCALE, width // VAE_SCALE


# --- export locations ---------------------------------------------------------------------------------------
def model_dirname(model: str) -> str:
    """Folder name for a model id (a preset name, or the last part of a path)."""
    model = str(model)
    return Path(model).name if (os.sep in model or "/" in model) else model


def default_export_root(model_id: str) -> Path:
    """Where a model's exports go unless told otherwise: ``export/<model>``."""
    return Path("export") / model_dirname(model_id)


def export_dir(root: str | Path, component: str, precision: str) -> Path:
    """``<root>/<precision>/<component>``: one export (``model.onnx`` + ``manifest.json``)."""
    return Path(root) / precision / component


# --- miss policies ------------------------------------------------------------------------------------------
class MissPolicy(str, Enum):
    """What a request does when no engine covers it: build now, build in the background (serve from a fallback
    meanwhile), or fail with the command that builds it."""

    BUILD = "build"
    BACKGROUND = "background"
    ERROR = "error"

    @classmethod
    def parse(cls, value: str | MissPolicy) -> MissPolicy:
        try:
            return cls(value)
        except ValueError:
            fail(f"Unknown miss policy {value!r}; choose one of {', '.join(MISS_POLICIES)}.")


MISS_POLICIES = tuple(p.value for p in MissPolicy)
