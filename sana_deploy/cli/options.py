"""Options shared by several commands. Imports only the package's bottom layer (values), never a command module."""

from __future__ import annotations

from collections.abc import Callable

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


__all__ = ["PRECISIONS", "kv_cache_option", "model_option", "preset_option", "random_weights_option"]
