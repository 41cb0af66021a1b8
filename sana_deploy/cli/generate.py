"""``sana-deploy generate``: the click layer over :class:`~sana_deploy.runtime.pipeline.SanaDeployPipeline`."""

from __future__ import annotations

from pathlib import Path

import click

from sana_deploy.cli.options import (
    PRECISIONS,
    kv_cache_option,
    model_option,
    preset_option,
    random_weights_option,
    variant_options,
)
from sana_deploy.contract import MISS_POLICIES
from sana_deploy.runtime.generate import MAX_STEPS, GenerateRequest, generate_images, parse_lora, read_prompts
from sana_deploy.runtime.providers import RUNTIME_BACKENDS
from sana_deploy.runtime.solvers import SAMPLERS


@click.command()
@click.argument("prompt", required=False)
@click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A text file with one prompt per line (blank lines skipped); one image per prompt and --batch.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=Path("sana.png"),
    show_default=True,
    help="PNG path; several images get _<n> before the suffix.",
)
@model_option
@preset_option
@random_weights_option
@click.option("--height", type=int, default=None, help="Image height in pixels [model's resolution].")
@click.option("--width", type=int, default=None, help="Image width in pixels [model's resolution].")
@click.option(
    "--steps",
    type=int,
    default=None,
    help=f"Denoising steps, 1 to {MAX_STEPS} [20 flow-dpm-solver, 28 flow-euler, 2 scm (Sana-Sprint)].",
)
@click.option(
    "--cfg-scale",
    type=float,
    default=None,
    help="Classifier-free guidance scale of base Sana [4.5] (finite; 1 or less: no guidance).",
)
@click.option(
    "--guidance-scale",
    type=float,
    default=None,
    help="Sana-Sprint's embedded guidance [4.5]: a transformer input, one call per step (Sprint has no CFG).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--sampler",
    type=click.Choice(SAMPLERS),
    default=None,
    help="Solver [the model's: scm for Sana-Sprint, else flow-dpm-solver].",
)
@click.option(
    "--backend",
    type=click.Choice(RUNTIME_BACKENDS),
    default="auto",
    show_default=True,
    help="auto: engines from --engine-dir when it has any for the model, else torch.",
)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--engine-dir", type=click.Path(path_type=Path), default=Path("engines"), show_default=True)
@click.option(
    "--on-miss",
    type=click.Choice(MISS_POLICIES),
    default="build",
    show_default=True,
    help="No engine covers the size: build it now, build it in the background (this run uses the "
    "torch fallback), or error.",
)
@click.option("--negative-prompt", default="", help="Negative prompt (default: Sana's empty prompt).")
@click.option("--batch", type=int, default=1, show_default=True, help="Images per prompt.")
@click.option(
    "--no-resolution-binning",
    is_flag=True,
    help="Generate at exactly --height x --width (multiples of 32) instead of the nearest aspect bucket.",
)
@click.option("--vae-tiling", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True)
@click.option("--vae-tile", type=int, default=1024, show_default=True, help="VAE tile size in pixels.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--lora",
    "loras",
    multiple=True,
    metavar="FILE[:WEIGHT]",
    help="LoRA adapter (.safetensors) and its weight [1]; repeat for several, all active together.",
)
@variant_options
@kv_cache_option
@click.option(
    "--vae-backend",
    type=click.Choice(["torch"]),
    default=None,
    help="Run the DC-AE stages on eager PyTorch whatever --backend runs the rest. On a CPU in fp32 it uses Winograd "
    "convolutions; whether that is faster than ONNX Runtime's decode depends on the CPU (docs/RUNTIME.md).",
)
def generate(
    prompt: str | None,
    prompts_file: Path | None,
    output: Path,
    model: str,
    preset: str | None,
    random_weights: bool,
    height: int | None,
    width: int | None,
    steps: int | None,
    cfg_scale: float | None,
    guidance_scale: float | None,
    seed: int,
    sampler: str | None,
    backend: str,
    precision: str,
    engine_dir: Path,
    on_miss: str,
    negative_prompt: str,
    batch: int,
    no_resolution_binning: bool,
    vae_tiling: str,
    vae_tile: int,
    no_progress: bool,
    loras: tuple[str, ...],
    image: Path | None,
    strength: float | None,
    controlnet: Path | None,
    control_image: Path | None,
    control_scale: float,
    pag_scale: float,
    pag_layers: str | None,
    no_kv_cache: bool,
    vae_backend: str | None,
) -> None:
    """Generate images from PROMPT (or --prompts FILE) and write PNGs."""
    prompts = [prompt] if prompt else []
    if prompts_file is not None:
        prompts += read_prompts(prompts_file)
    request = GenerateRequest(
        prompts=prompts,
        output=output,
        model=model,
        preset=preset,
        random_weights=random_weights,
        height=height,
        width=width,
        steps=steps,
        cfg_scale=cfg_scale,
        guidance_scale=guidance_scale,
        seed=seed,
        sampler=sampler,
        backend=backend,
        precision=precision,
        engine_dir=engine_dir,
        on_miss=on_miss,
        negative_prompt=negative_prompt,
        batch=batch,
        resolution_binning=not no_resolution_binning,
        vae_tiling={"auto": None, "on": True, "off": False}[vae_tiling],
        vae_tile=vae_tile,
        progress=not no_progress,
        kv_cache=not no_kv_cache,
        loras=tuple(parse_lora(spec) for spec in loras),
        image=image,
        strength=strength,
        controlnet=controlnet,
        control_image=control_image,
        control_scale=control_scale,
        pag_scale=pag_scale,
        pag_layers=pag_layers,
        vae_backend=vae_backend,
    )
    for line in generate_images(request):
        click.echo(line)
