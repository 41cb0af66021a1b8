"""The library function behind ``sana-deploy generate``: build a pipeline, run the prompts, write PNGs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from sana_deploy.contract import model_dirname
from sana_deploy.engines import EngineCache
from sana_deploy.errors import fail
from sana_deploy.runtime.images import save_png
from sana_deploy.runtime.pipeline import SanaDeployPipeline
from sana_deploy.runtime.providers import engine_cache_has
from sana_deploy.runtime.solvers import DEFAULT_STEPS
from sana_deploy.runtime.tiling import TilingConfig


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
    cfg_scale: float = 4.5
    seed: int = 0
    sampler: str = "flow-dpm-solver"
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


def build_pipeline(req: GenerateRequest) -> SanaDeployPipeline:
    """torch / our ONNX Runtime sessions, or engines; ``auto`` takes engines when the folder has the model's."""
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
    )


def output_paths(output: Path, count: int) -> list[Path]:
    if output.suffix.lower() != ".png":
        fail(f"--output {output} must end in .png (the images are written as PNG).")
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}_{i}{output.suffix}") for i in range(count)]


def generate_images(req: GenerateRequest) -> Iterator[str]:
    """Run every prompt (``batch`` images each, one pipeline call per prompt) and yield one line per image."""
    if not isinstance(req.batch, int) or req.batch < 1:
        fail(f"--batch must be a positive integer, got {req.batch!r}.")
    steps = req.steps if req.steps is not None else DEFAULT_STEPS[req.sampler]
    paths = output_paths(Path(req.output), len(req.prompts) * req.batch)
    pipe = build_pipeline(req)
    pipe.set_progress_bar(req.progress)
    k = 0
    for i, prompt in enumerate(req.prompts):
        out = pipe(
            prompt,
            negative_prompt=req.negative_prompt,
            height=req.height,
            width=req.width,
            num_inference_steps=steps,
            guidance_scale=req.cfg_scale,
            generator=torch.Generator().manual_seed(req.seed + i),
            num_images_per_prompt=req.batch,
            sampler=req.sampler,
            resolution_binning=req.resolution_binning,
        )
        timing = ", ".join(f"{k_}: {v:.2f}s" for k_, v in out.seconds.items())
        stages = ", ".join(f"{k_}={v}" for k_, v in out.backends.items())
        for image in out.images:
            path = save_png(image, paths[k])
            k += 1
            yield f"{path} {image.width}x{image.height}  [{stages}; {timing}]"
