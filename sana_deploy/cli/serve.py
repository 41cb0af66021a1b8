"""``sana-deploy serve`` and ``sana-deploy export-triton`` (click layer over sana_deploy.serve)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import click

from sana_deploy.cli.options import PRECISIONS, kv_cache_option, model_option, random_weights_option
from sana_deploy.contract import MISS_POLICIES
from sana_deploy.runtime.generate import GenerateRequest
from sana_deploy.runtime.providers import RUNTIME_BACKENDS

_GENERATE_ON_MISS = next(f.default for f in dataclasses.fields(GenerateRequest) if f.name == "on_miss")


@click.command()
@model_option
@random_weights_option
@click.option(
    "--engines",
    "engine_dir",
    default="engines",
    show_default=True,
    help="Engine folder; with --backend auto its engines of the model are used, else the PyTorch model runs.",
)
@click.option(
    "--backend",
    type=click.Choice(RUNTIME_BACKENDS),
    default="auto",
    show_default=True,
    help="As in `sana-deploy generate` (auto: engines from --engines when it has the model's, else torch).",
)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option(
    "--miss-policy",
    type=click.Choice(MISS_POLICIES),
    default=_GENERATE_ON_MISS,
    show_default=True,
    help="What a request for a size with no engine does (the runtime's miss policy, as generate's --on-miss).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback unless told).")
@click.option("--port", default=8000, show_default=True, type=int, help="0 to 65535 (0: any free port).")
@click.option("--api-key", default=None, help="Bearer token required on requests [env SANA_DEPLOY_API_KEY].")
@click.option(
    "--sizes",
    default=None,
    help="Allow-list of WxH sizes, comma-separated [any size generate accepts, binned and resized back].",
)
@click.option("--profiles", default=None, help="Allow only these bases' aspect buckets, e.g. 1024,2048.")
@click.option("--max-n", default=4, show_default=True, type=int, help="Images per request.")
@click.option("--max-queue", default=32, show_default=True, type=int, help="Requests in flight per replica (429).")
@click.option("--timeout", "timeout_s", default=300.0, show_default=True, type=float, help="Per-request seconds.")
@click.option(
    "--body-timeout",
    "body_timeout_s",
    default=30.0,
    show_default=True,
    type=float,
    help="Seconds a request body may take to arrive (then 408 and the connection closes).",
)
@click.option("--steps", default=None, type=int, help="Default num_inference_steps [20; Sana-Sprint models: 2].")
@click.option("--ray", "use_ray", is_flag=True, help="Deploy on Ray Serve instead of a single uvicorn process.")
@click.option("--replicas", default=1, show_default=True, type=int, help="Ray Serve replicas (with --ray).")
@click.option("--gpus-per-replica", default=0.0, show_default=True, type=float)
@click.option(
    "--lora-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of LoRA .safetensors files; a request names them in 'adapters' or as model '<model>+<name>'.",
)
@click.option("--lora-cache", default=4, show_default=True, type=int, help="Fused adapter sets kept (LRU).")
@click.option(
    "--controlnet",
    type=click.Path(path_type=Path),
    default=None,
    help="A Sana ControlNet folder (diffusers layout); requests may then send 'control_image' and 'control_scale'.",
)
@kv_cache_option
def serve(
    model,
    random_weights,
    engine_dir,
    backend,
    precision,
    miss_policy,
    host,
    port,
    api_key,
    sizes,
    profiles,
    max_n,
    max_queue,
    timeout_s,
    body_timeout_s,
    steps,
    use_ray,
    replicas,
    gpus_per_replica,
    lora_dir,
    lora_cache,
    controlnet,
    no_kv_cache,
) -> None:
    """OpenAI-compatible POST /v1/images/generations (+ /health, /metrics) on uvicorn or Ray Serve.

    Every option is checked before the model loads; an invalid one is a one-line error (see docs/SERVING.md)."""
    from sana_deploy.serve.settings import adapter_files, check_server, default_settings
    from sana_deploy.serve.shared import load_pipeline

    adapters = tuple(adapter_files(lora_dir)) if lora_dir is not None else ()

    settings = default_settings(
        model,
        bases=profiles or None,
        sizes=sizes,
        api_key=api_key,
        max_n=max_n,
        max_queue=max_queue,
        request_timeout_s=timeout_s,
        body_timeout_s=body_timeout_s,
        num_inference_steps=steps,
        adapters=adapters,
        lora_cache_size=lora_cache,
        controlnet=controlnet is not None,
    )
    check_server(host, port, engine_dir, backend, miss_policy, use_ray, replicas, gpus_per_replica, controlnet, model)
    factory = functools.partial(
        load_pipeline,
        model,
        engine_dir=engine_dir,
        miss_policy=miss_policy,
        random_weights=random_weights,
        backend=backend,
        precision=precision,
        kv_cache=not no_kv_cache,
        lora_dir=lora_dir,
        lora_cache_size=lora_cache,
        controlnet=controlnet,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        click.secho(f"warning: serving on {host} without an API key", fg="yellow", err=True)
    served = "any size" if settings.sizes is None else f"{len(settings.sizes)} sizes"
    if port:
        click.echo(f"serving {model} on http://{host}:{port}/v1/images/generations ({served})")
    else:
        click.echo(f"serving {model} on {host}, port chosen by the system (the server's log names it) ({served})")
    if use_ray:
        from sana_deploy.serve.ray_app import serve_ray

        serve_ray(factory, settings, host, port, replicas, num_gpus=gpus_per_replica)
        return
    from sana_deploy.serve import http
    from sana_deploy.serve.service import ImageService

    http.serve_http(ImageService(factory(), settings), host, port)


@click.command("export-triton")
@click.argument("repo_dir", type=click.Path(path_type=Path))
@model_option
@random_weights_option
@click.option("--profiles", default="1024", show_default=True, help="Base resolutions, e.g. 1024,2048.")
@click.option(
    "--engine-backend",
    type=click.Choice(["tensorrt", "onnxruntime", "python"]),
    default="tensorrt",
    show_default=True,
    help="Per-engine models: TensorRT plans, Triton's ORT backend, or ORT in Python.",
)
@click.option(
    "--engine-mode",
    type=click.Choice(["bls", "onnxruntime"]),
    default="bls",
    show_default=True,
    help="sana_pipeline calls the engine models (bls) or runs the ONNX graphs itself.",
)
@click.option("--engines", "engine_dir", default="engines", show_default=True, help="Engine cache (tensorrt).")
@click.option(
    "--onnx-dir",
    default=None,
    help="Export folder: its fp32 exports of these weights are reused, missing ones exported [export/<model>].",
)
@click.option("--max-batch", default=1, show_default=True, type=int)
@click.option("--instance-kind", type=click.Choice(["KIND_GPU", "KIND_CPU"]), default="KIND_GPU", show_default=True)
@click.option("--overwrite", is_flag=True)
def export_triton(
    repo_dir,
    model,
    random_weights,
    profiles,
    engine_backend,
    engine_mode,
    engine_dir,
    onnx_dir,
    max_batch,
    instance_kind,
    overwrite,
) -> None:
    """Write a Triton Inference Server model repository (engine models + Python-backend sana_pipeline)."""
    from sana_deploy.serve.triton.repository import export_triton_repository

    models = export_triton_repository(
        repo_dir,
        model,
        profiles.split(","),
        engine_backend,
        engine_mode,
        engine_dir,
        onnx_dir,
        max_batch,
        instance_kind,
        random_weights,
        overwrite=overwrite,
    )
    for m in models:
        click.echo(f"{m.name:<20} {m.platform:<18} {m.path}")
    click.echo(f"\ntritonserver --model-repository={repo_dir}   (see docs/SERVING.md)")
