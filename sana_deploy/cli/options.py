"""Options shared by several commands. Imports only the package's bottom layer (values), never a command module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from sana_deploy.contract import PRECISIONS
from sana_deploy.models.config import DEFAULT_MODEL


def model_option(f: Callable) -> Callable:
    return click.option(
        "--model",
        "-m",
        default=DEFAULT_MODEL,
        show_default=True,
        help="Preset name (see `sana-deploy models`), diffusers folder, or .pth/.safetensors checkpoint.",
    )(f)


def preset_option(f: Callable) -> Callable:
    return click.option("--preset", default=None, help="Variant of a single-file checkpoint (default: inferred).")(f)


def random_weights_option(f: Callable) -> Callable:
    return click.option(
        "--random-weights",
        is_flag=True,
        help="Seeded random weights for a released preset (benchmarking; no download needed).",
    )(f)


def kv_cache_option(f: Callable) -> Callable:
    """``--no-kv-cache``: the one-graph transformer instead of the caption K/V split (the command gets
    ``no_kv_cache``)."""
    return click.option(
        "--no-kv-cache",
        is_flag=True,
        help="Run the one-graph transformer (caption K/V recomputed every step) instead of the default split.",
    )(f)


_VARIANT_OPTIONS = (
    click.option(
        "--image",
        type=click.Path(path_type=Path),
        default=None,
        help="img2img: start from this image (any size and mode; the output size defaults to its own).",
    ),
    click.option(
        "--strength",
        type=float,
        default=None,
        help="img2img: how much of the schedule runs from the noised --image, in (0, 1] [0.6]; 1 ignores the image.",
    ),
    click.option(
        "--controlnet",
        type=click.Path(path_type=Path),
        default=None,
        help="A Sana ControlNet folder (diffusers layout: config.json + weights) for --control-image.",
    ),
    click.option(
        "--control-image",
        type=click.Path(path_type=Path),
        default=None,
        help="ControlNet: the control image (edges, depth, ...), encoded by the DC-AE encoder; needs --controlnet.",
    ),
    click.option(
        "--control-scale", type=float, default=1.0, show_default=True, help="ControlNet: scale of its residuals."
    ),
    click.option(
        "--pag-scale",
        type=float,
        default=0.0,
        show_default=True,
        help="Perturbed-attention guidance scale (0: off; NVlabs uses 2-3): one more branch per step.",
    ),
    click.option(
        "--pag-layers",
        default=None,
        help="PAG: the blocks whose self-attention the perturbed branch replaces with the identity, e.g. 8 or 8,14 "
        "[NVlabs' block for 0.6B/1.6B, else 0].",
    ),
)


def variant_options(f: Callable) -> Callable:
    """img2img (``--image``, ``--strength``), ControlNet (``--controlnet``, ``--control-image``, ``--control-scale``)
    and PAG (``--pag-scale``, ``--pag-layers``): the same options, with the same meaning, on generate and bench (the
    command gets ``image``, ``strength``, ``controlnet``, ``control_image``, ``control_scale``, ``pag_scale``,
    ``pag_layers``; checked by ``sana_deploy.runtime.generate.check_variant_options``)."""
    for option in reversed(_VARIANT_OPTIONS):
        f = option(f)
    return f


__all__ = ["PRECISIONS", "kv_cache_option", "model_option", "preset_option", "random_weights_option", "variant_options"]
