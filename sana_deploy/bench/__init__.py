"""Latency benchmarks of the product path: every stage of ``SanaDeployPipeline`` on every backend, against
diffusers' ``SanaPipeline`` in the same run.

``bench(model, profiles, backends, ...)`` is the library entry point; ``sana-deploy bench`` maps options onto it.
One timed run is one request through the pipeline that ``generate`` and ``serve`` run; the stage times are the
pipeline's own (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from pathlib import Path

from sana_deploy.bench.case import STAGES, BenchCase, parse_profiles, parse_stages
from sana_deploy.bench.contenders import BASELINE, CONTENDERS, parse_backends
from sana_deploy.bench.harness import RESULT_FORMAT, BenchSettings, run_bench
from sana_deploy.bench.report import collate, markdown, text_table, write_atomic, write_json
from sana_deploy.bench.stats import STATISTICS, percentile, summarize
from sana_deploy.contract import torch_dtype
from sana_deploy.errors import fail


def bench(
    model: str = "sana-tiny",
    profiles: str | int | list = "1024",
    backends: str = "torch,onnxruntime,aoti",
    steps: int | None = None,
    stages: str | None = None,
    warmup: int = 3,
    runs: int = 10,
    precision: str = "fp32",
    device: str = "auto",
    guidance_scale: float = 4.5,
    text_encoder_layers: int | None = None,
    interleave: bool = False,
    work_dir: Path | str | None = None,
    seed: int = 0,
    baseline: bool = True,
    image: Path | str | None = None,
    strength: float | None = None,
    controlnet: Path | str | None = None,
    control_image: Path | str | None = None,
    control_scale: float = 1.0,
    pag_scale: float = 0.0,
    pag_layers: str | None = None,
) -> dict:
    """Run the benchmark and return the result dict (see ``docs/BENCHMARKS.md`` for its fields).

    ``profiles``: bucket bases (512, 1024, 2048, 4096); each case is one ``base``×``base`` image. The variant
    options are ``generate``'s (img2img ``image``/``strength``, ControlNet ``controlnet``/``control_image``/
    ``control_scale``, PAG ``pag_scale``/``pag_layers``; docs/VARIANTS.md): every request of every backend runs
    them, and the diffusers baseline is the variant's diffusers pipeline.
    """
    import torch

    torch_dtype(precision)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen_stages = parse_stages(stages)
    bases = parse_profiles(profiles)
    chosen = parse_backends(backends, add_baseline=baseline)
    settings = BenchSettings(warmup=warmup, runs=runs, interleave=interleave)
    if work_dir is not None:
        settings.work_dir = Path(work_dir)
        if settings.work_dir.exists() and not settings.work_dir.is_dir():
            fail(f"--work-dir {work_dir} is a file; pass a folder (a missing one is created).")
    cases = [
        BenchCase(
            model,
            base,
            steps,
            guidance_scale,
            precision,
            device,
            seed=seed,
            text_encoder_layers=text_encoder_layers,
            stages=chosen_stages,
            image=None if image is None else Path(image),
            strength=strength,
            controlnet=None if controlnet is None else Path(controlnet),
            control_image=None if control_image is None else Path(control_image),
            control_scale=control_scale,
            pag_scale=pag_scale,
            pag_layers=pag_layers,
        )
        for base in bases
    ]
    return run_bench(cases, chosen, settings)


__all__ = [
    "CONTENDERS",
    "BASELINE",
    "RESULT_FORMAT",
    "STAGES",
    "STATISTICS",
    "BenchCase",
    "BenchSettings",
    "bench",
    "collate",
    "markdown",
    "parse_backends",
    "percentile",
    "run_bench",
    "summarize",
    "text_table",
    "write_atomic",
    "write_json",
]
