"""The library function behind ``sana-deploy generate``: build a pipeline, run the prompts, write PNGs."""

from __future__ import annotations

import errno
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from sana_deploy.contract import model_dirname
from sana_deploy.engines import EngineCache
from sana_deploy.errors import fail
from sana_deploy.models.config import PRESETS, SanaPreset
from sana_deploy.models.controlnet import check_fits, folder_config
from sana_deploy.models.lora import LoraError, check_scale
from sana_deploy.runtime.call_options import resolve_sampler
from sana_deploy.runtime.images import save_png
from sana_deploy.runtime.img2img import check_strength, load_image
from sana_deploy.runtime.pipeline import SanaDeployPipeline
from sana_deploy.runtime.providers import engine_cache_has
from sana_deploy.runtime.resolution import check_size, plan_size
from sana_deploy.runtime.solvers import DEFAULT_STEPS
from sana_deploy.runtime.tiling import TilingConfig
from sana_deploy.runtime.variants import check_variants

MAX_STEPS = 50  # the most denoising steps generate and bench run; the server's default cap (ServeSettings)
MAX_PROMPTS_FILE_BYTES = 16 * 1024 * 1024
_SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


@dataclass
class GenerateRequest:
    prompts: list[str]
    output: Path = Path("sana.png")
    model: str = "sana-tiny"
    preset: str | None = None
    random_weights: bool = False
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    cfg_scale: float | None = None  # classifier-free guidance [4.5]; base Sana only
    seed: int = 0
    sampler: str | None = None  # the model's own: scm for Sana-Sprint, else flow-dpm-solver
    backend: str = "auto"
    precision: str = "fp32"
    engine_dir: Path = Path("engines")
    on_miss: str = "build"
    negative_prompt: str = ""
    batch: int = 1
    resolution_binning: bool = True
    vae_tiling: bool | None = None
    vae_tile: int = 1024
    progress: bool = True
    kv_cache: bool = True  # the caption K/V split (False: the one-graph transformer)
    loras: tuple[tuple[Path, float], ...] = ()  # LoRA adapters (file, weight), all active together
    guidance_scale: float | None = None  # Sana-Sprint's embedded guidance [4.5] (a transformer input, not CFG)
    image: Path | None = None  # img2img: the start image (the size defaults to its own)
    strength: float | None = None  # img2img: share of the schedule that runs from the noised image [0.6]
    controlnet: Path | None = None  # a Sana ControlNet folder (diffusers layout)
    control_image: Path | None = None  # the ControlNet's control image (encoded by the DC-AE encoder)
    control_scale: float = 1.0  # the ControlNet's residuals are scaled by this
    pag_scale: float = 0.0  # perturbed-attention guidance (0: off)
    pag_layers: str | None = None  # PAG's blocks, e.g. "8" or "8,14" [the model's default]
    vae_backend: str | None = None  # "torch": the DC-AE stages on eager PyTorch (Winograd convolutions on a CPU)


def build_pipeline(req: GenerateRequest) -> SanaDeployPipeline:
    """torch / our ONNX Runtime sessions, or engines; ``auto`` takes engines when the folder has the model's;
    with the request's LoRA adapters active."""
    pipe = _pipeline(req)
    if req.loras:
        names = [f"lora{i}-{Path(path).stem}" for i, (path, _) in enumerate(req.loras)]
        for name, (path, weight) in zip(names, req.loras, strict=True):
            pipe.load_lora_weights(path, adapter_name=name, scale=weight)
        pipe.set_adapters(names, [w for _, w in req.loras])
    return pipe


def parse_lora(spec: str) -> tuple[Path, float]:
    """``--lora FILE[:WEIGHT]`` -> (file, weight); weight 1 when not given."""
    path, sep, weight = spec.rpartition(":")
    if sep and path:
        try:
            value = float(weight)
        except ValueError:  # not a weight: a ':' inside the file name
            return Path(spec), 1.0
        return Path(path), check_scale(value, f"--lora {spec}: the weight")
    return Path(spec), 1.0


def _pipeline(req: GenerateRequest) -> SanaDeployPipeline:
    tiling = TilingConfig(enabled=req.vae_tiling, tile=req.vae_tile, overlap=min(256, req.vae_tile // 4))
    backend = req.backend
    if backend == "auto":
        backend = "engines" if engine_cache_has(EngineCache(req.engine_dir), model_dirname(str(req.model))) else "torch"
    if backend == "torch":
        return SanaDeployPipeline.from_model(
            req.model,
            "torch",
            req.precision,
            random_weights=req.random_weights,
            preset=req.preset,
            tiling=tiling,
            kv_cache=req.kv_cache,
            controlnet=req.controlnet,
        )
    return SanaDeployPipeline.from_engines(
        req.engine_dir,
        req.model,
        "auto" if backend == "engines" else backend,
        req.precision,
        on_miss=req.on_miss,
        random_weights=req.random_weights,
        tiling=tiling,
        kv_cache=req.kv_cache,
        controlnet=req.controlnet,
        vae_backend=req.vae_backend,
    )


def output_paths(output: Path, count: int) -> list[Path]:
    """The PNG paths of ``count`` images, each checked to be writable (before any generation runs)."""
    output = Path(output)
    if output.is_dir():
        fail(f"--output {output} is a folder; give a file name in it, e.g. -o {output / 'sana.png'}.")
    if output.suffix.lower() != ".png":
        fail(f"--output {output} must end in .png (the images are written as PNG).")
    paths = [output] if count == 1 else [output.with_name(f"{output.stem}_{i}{output.suffix}") for i in range(count)]
    for path in paths:
        check_writable(path, "--output")
    return paths


def check_writable(path: str | Path, option: str, example: str = "sana.png") -> Path:
    """Fail now, before any work is done, when ``path`` cannot be written as a file: it is a folder, a file
    stands where a folder of its path should be, or its folder cannot be written (permissions, a read-only
    filesystem). Probes with a temporary file in the nearest existing folder; creates nothing that stays."""
    path = Path(path)
    folder = path.parent
    try:
        if path.is_dir():
            fail(f"{option} {path} is a folder; give a file path, e.g. {option} {path / example}.")
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            fail(f"{option} {path}: {folder} is a file, not a folder; choose a path in a folder.")
        fd, probe = tempfile.mkstemp(prefix=".tmp-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = "the filesystem is read-only" if exc.errno == errno.EROFS else (exc.strerror or str(exc)).lower()
        fail(f"Cannot write {option} {path}: {why} ({folder}). Choose a path in a folder you can write.")
    return path


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a text file: one per line, UTF-8, blank lines skipped."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PROMPTS_FILE_BYTES + 1)
    except OSError as exc:
        fail(f"Cannot read --prompts {path}: {(exc.strerror or str(exc)).lower()}. Pass a text file.")
    if len(data) > MAX_PROMPTS_FILE_BYTES:
        fail(f"--prompts {path} is larger than {MAX_PROMPTS_FILE_BYTES // 2**20} MiB; pass a text file of prompts.")
    if b"\0" in data:
        fail(f"--prompts {path} is not a text file (it contains NUL bytes); pass a UTF-8 file, one prompt a line.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        fail(
            f"--prompts {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); pass a UTF-8 "
            f"file, one prompt a line."
        )
    return [line.strip() for line in text.splitlines() if line.strip()]


def guidance_for(req: GenerateRequest, preset: SanaPreset) -> float:
    """The pipeline's ``guidance_scale`` for this request: ``--cfg-scale`` (classifier-free guidance) for base
    Sana, ``--guidance-scale`` (the embedded guidance input) for Sana-Sprint; the other option is an error."""
    if preset.sprint:
        if req.cfg_scale is not None:
            fail(
                f"--cfg-scale is classifier-free guidance, which {preset.name} (Sana-Sprint) does not run: its "
                f"guidance is a transformer input, one call per step. Use --guidance-scale (default 4.5)."
            )
        if req.negative_prompt:
            fail(f"{preset.name} is a Sana-Sprint model: it has no classifier-free guidance, so no --negative-prompt.")
        return 4.5 if req.guidance_scale is None else req.guidance_scale
    if req.guidance_scale is not None:
        fail(
            f"--guidance-scale is Sana-Sprint's embedded guidance; {preset.name} runs classifier-free guidance: use "
            f"--cfg-scale (default 4.5; 1 turns it off)."
        )
    return 4.5 if req.cfg_scale is None else req.cfg_scale


def check_request(req: GenerateRequest) -> int | None:
    """Check the values no later stage checks before the work starts; returns the step count (None: the solver's
    default, for a model that is not a preset)."""
    if not req.prompts:
        fail("Give a PROMPT argument or --prompts FILE with one prompt per line.")
    if not isinstance(req.batch, int) or req.batch < 1:
        fail(f"--batch must be a positive integer, got {req.batch!r}.")
    preset = PRESETS.get(str(req.model).lower())
    sampler = req.sampler
    if sampler is None and preset is not None:
        sampler = preset.default_sampler
    steps = req.steps if req.steps is not None else DEFAULT_STEPS.get(sampler) if sampler else None
    if steps is not None and (not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS):
        fail(f"--steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}.")
    for option, value in (("--cfg-scale", req.cfg_scale), ("--guidance-scale", req.guidance_scale)):
        if value is not None and (not isinstance(value, int | float) or not math.isfinite(value)):
            fail(f"{option} must be a finite number (e.g. 4.5), got {value!r}.")
    if preset is not None:  # Sprint vs CFG options, and the solver, before the model loads
        guidance_for(req, preset)
        resolve_sampler(preset, req.sampler)
    for name, value in (("height", req.height), ("width", req.width)):
        if value is not None:
            check_size(f"--{name}", value)
    if str(req.model).lower() in PRESETS:  # a size the model cannot generate fails before the model loads
        plan_size(req.height, req.width, PRESETS[str(req.model).lower()], req.resolution_binning)
    for path, weight in req.loras:  # read and checked against the model when it loads; here: before any work
        check_scale(weight, f"--lora {path}: the weight")
        if not Path(path).is_file():
            fail(f"--lora {path}: no such file; pass a LoRA .safetensors file (optionally FILE:WEIGHT).", LoraError)
    check_variant_options(
        preset, image=req.image, strength=req.strength, controlnet=req.controlnet, control_image=req.control_image,
        control_scale=req.control_scale, pag_scale=req.pag_scale, pag_layers=req.pag_layers,
    )  # fmt: skip
    low, high = _SEED_RANGE
    if not isinstance(req.seed, int) or not low <= req.seed <= high - (len(req.prompts) - 1):
        fail(f"--seed must be an integer from 0 to {high - (len(req.prompts) - 1)}, got {req.seed!r}.")
    return steps


def check_variant_options(
    preset: SanaPreset | None,
    *,
    image: Path | None = None,
    strength: float | None = None,
    controlnet: Path | None = None,
    control_image: Path | None = None,
    control_scale: float = 1.0,
    pag_scale: float = 0.0,
    pag_layers: str | None = None,
) -> None:
    """The img2img, ControlNet and PAG options of ``generate`` and ``bench`` (named as their CLI options), before
    the model loads: the images are read, the ControlNet's config is checked against a preset model, PAG blocks
    against its depth (other models: when they load)."""
    if strength is not None:
        if image is None:
            fail("--strength sets how far img2img departs from --image; pass --image too (or leave --strength out).")
        check_strength(strength)
    if image is not None:  # read now: a missing or non-image file fails before the model loads
        load_image(image, "--image")
    if controlnet is not None:
        cfg = folder_config(controlnet)
        if preset is not None:
            check_fits(cfg, preset, str(controlnet))
    if control_image is not None:
        load_image(control_image, "--control-image")
    check_variants(
        sprint=preset is not None and preset.sprint,
        controlnet_layers=1 if controlnet is not None else 0,
        control_image=control_image,
        conditioning_scale=control_scale,
        pag_scale=pag_scale,
        pag_adaptive_scale=0.0,
        pag_layers=pag_layers if preset is not None else None,
        num_layers=preset.transformer.num_layers if preset is not None else 1,
    )


def generate_images(req: GenerateRequest) -> Iterator[str]:
    """Run every prompt (``batch`` images each, one pipeline call per prompt) and yield one line per image.

    Every value and the output paths are checked before the model loads, so a bad option or an unwritable
    ``--output`` fails at once, not after the generation."""
    steps = check_request(req)
    paths = output_paths(Path(req.output), len(req.prompts) * req.batch)
    image = load_image(req.image, "--image") if req.image is not None else None
    img2img = {} if image is None else {"image": image, "strength": 0.6 if req.strength is None else req.strength}
    if req.control_image is not None:
        img2img["control_image"] = load_image(req.control_image, "--control-image")
        img2img["controlnet_conditioning_scale"] = req.control_scale
    if req.pag_scale or req.pag_layers is not None:
        img2img.update(pag_scale=req.pag_scale, pag_applied_layers=req.pag_layers)
    pipe = build_pipeline(req)
    guidance = guidance_for(req, pipe.preset)
    pipe.set_progress_bar(req.progress)
    k = 0
    for i, prompt in enumerate(req.prompts):
        out = pipe(
            prompt,
            negative_prompt=req.negative_prompt,
            height=req.height,
            width=req.width,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(req.seed + i),
            num_images_per_prompt=req.batch,
            sampler=req.sampler,
            resolution_binning=req.resolution_binning,
            **img2img,
        )
        timing = ", ".join(f"{k_}: {v:.2f}s" for k_, v in out.seconds.items())
        stages = ", ".join(f"{k_}={v}" for k_, v in out.backends.items())
        for image in out.images:
            path = save_png(image, paths[k])
            k += 1
            yield f"{path} {image.width}x{image.height}  [{stages}; {timing}]"
