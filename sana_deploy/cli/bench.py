"""``sana-deploy bench``: options mapped onto :func:`sana_deploy.bench.bench`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sana_deploy.bench.case import STAGES
from sana_deploy.bench.contenders import CONTENDERS
from sana_deploy.cli.options import PRECISIONS, model_option, variant_options
from sana_deploy.runtime.generate import MAX_STEPS, check_writable


@click.command()
@model_option
@click.option(
    "--profiles",
    default="1024",
    show_default=True,
    help="Bucket bases (512, 1024, 2048, 4096), comma-separated; each case is one base x base image.",
)
@click.option(
    "--backends",
    default="torch,onnxruntime,aoti",
    show_default=True,
    help=f"Comma-separated, from {', '.join(CONTENDERS)}; options as name[key=value,...]. "
    "diffusers-eager (the baseline) is always added.",
)
@click.option(
    "--steps",
    default=None,
    type=int,
    help=f"Denoising steps of every request (1 to {MAX_STEPS}) [the model's: 20, or 2 for Sana-Sprint].",
)
@click.option(
    "--stages",
    default="all",
    show_default=True,
    help=f"Stage records to report, from {', '.join(STAGES)}; without vae_decode and e2e the requests stop at "
    "the latents.",
)
@click.option("--warmup", default=3, show_default=True, type=int, help="Untimed requests (incl. the first call).")
@click.option("--runs", default=10, show_default=True, type=int, help="Timed requests per backend.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--guidance-scale", default=4.5, show_default=True, type=float, help="CFG scale (> 1: batch of 2).")
@click.option(
    "--text-encoder-layers",
    type=int,
    default=None,
    help="Benchmark a Gemma-2 with this many layers (real width) instead of all 26 (a 10 GB fp32 model on CPU). "
    "Recorded in the results.",
)
@click.option("--interleave", is_flag=True, help="Time backends round-robin, run by run (for noisy shared machines).")
@click.option("--no-baseline", is_flag=True, help="Do not add the diffusers eager baseline (option sweeps).")
@click.option("--work-dir", type=click.Path(path_type=Path), default=None, help="Exports/packages cache folder.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the results JSON.")
@click.option("--markdown", "md_path", type=click.Path(path_type=Path), default=None, help="Write a markdown report.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None, help="Write a PNG bar chart.")
@variant_options
def bench(
    model: str,
    profiles: str,
    backends: str,
    steps: int | None,
    stages: str,
    warmup: int,
    runs: int,
    precision: str,
    device: str,
    guidance_scale: float,
    text_encoder_layers: int | None,
    interleave: bool,
    no_baseline: bool,
    work_dir: Path | None,
    json_path: Path | None,
    md_path: Path | None,
    plot_path: Path | None,
    image: Path | None,
    strength: float | None,
    controlnet: Path | None,
    control_image: Path | None,
    control_scale: float,
    pag_scale: float,
    pag_layers: str | None,
) -> None:
    """Latency per stage of the product pipeline (what generate and serve run) on each backend, with diffusers'
    SanaPipeline (eager) measured in the same run.

    One timed run is one request; its stage times are the pipeline's own. Presets run with seeded random weights
    (speed does not depend on weight values). img2img, ControlNet and PAG requests take generate's options; the
    baseline is then diffusers' pipeline of that variant (base-Sana img2img has none: no baseline).
    """
    from sana_deploy.bench import bench as run
    from sana_deploy.bench.report import markdown, text_table, write_atomic, write_json

    outputs = (
        ("--json", json_path, "results.json"),
        ("--markdown", md_path, "results.md"),
        ("--plot", plot_path, "results.png"),
    )
    for option, path, example in outputs:
        if path is not None:  # before the benchmark runs, not after
            check_writable(path, option, example)
    result = run(
        model=model,
        profiles=profiles,
        backends=backends,
        steps=steps,
        stages=stages,
        warmup=warmup,
        runs=runs,
        precision=precision,
        device=device,
        guidance_scale=guidance_scale,
        text_encoder_layers=text_encoder_layers,
        interleave=interleave,
        work_dir=work_dir,
        baseline=not no_baseline,
        image=image,
        strength=strength,
        controlnet=controlnet,
        control_image=control_image,
        control_scale=control_scale,
        pag_scale=pag_scale,
        pag_layers=pag_layers,
    )
    click.echo(text_table(result))
    if json_path:
        click.echo(f"wrote {write_json(result, json_path)}")
    if md_path:
        click.echo(f"wrote {write_atomic(md_path, markdown(result))}")
    if plot_path:
        from sana_deploy.bench.plot import plot

        click.echo(f"wrote {plot(result, plot_path)}")
    if any(r["status"] == "error" for r in result["results"]):
        click.secho(
            "error: some backends failed (see the table); their reasons are in the results.", fg="red", err=True
        )
        sys.exit(1)
