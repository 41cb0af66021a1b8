"""``sana-deploy build`` and ``sana-deploy engines list|inspect|verify|prune``: the click layer only maps options."""

from __future__ import annotations

import time
from pathlib import Path

import click

from sana_deploy.cli.options import PRECISIONS, model_option, preset_option, random_weights_option
from sana_deploy.engines.backends import BACKEND_CHOICES, BACKENDS, not_runnable_note
from sana_deploy.export.quantized import QUANT_MODES

DEFAULT_ENGINE_DIR = Path("engines")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    click.echo("  ".join("-" * w for w in widths))
    for r in rows:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


def _csv(values: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in values.split(",") if v.strip()) if values else None


@click.command()
@model_option
@preset_option
@random_weights_option
@click.option("--profiles", default="1024", show_default=True, help="Base resolutions: 512, 1024, 2048, 4096.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES, case_sensitive=False), default="auto", show_default=True)
@click.option(
    "--precision",
    type=click.Choice((*PRECISIONS, *QUANT_MODES)),
    default="fp32",
    show_default=True,
    help="int8/fp8: the same as --quantize int8/fp8.",
)
@click.option(
    "--quantize",
    type=click.Choice(QUANT_MODES),
    default=None,
    help="Quantized transformer graphs (sana-deploy quantize; calibrates on the built-in prompts when none exist): "
    "int8 for onnxruntime/openvino (and tensorrt with a modelopt recipe), fp8 for tensorrt/tensorrt-rtx, and for "
    "aoti (FP8 linear layers, no calibration; a GPU of compute capability 8.9+).",
)
@click.option("--recipe", default=None, help="Quantization recipe name or digest prefix [the newest that runs].")
@click.option("--max-batch", type=int, default=1, show_default=True, help="Images per request (engines take 2x: CFG).")
@click.option(
    "--static", is_flag=True, help="One exact image size per profile (base x base; batch still 1 .. 2 x max-batch)."
)
@click.option(
    "--components",
    default=None,
    help="Comma-separated [what the pipeline runs: text-encoder, transformer-text, transformer-cached, vae; with "
    "--no-kv-cache the one-graph transformer instead of the split pair]; also vae-encoder (img2img, control images), "
    "transformer-pag, transformer-control and controlnet (with --controlnet).",
)
@click.option(
    "--no-kv-cache",
    is_flag=True,
    help="Build the one-graph transformer instead of the caption K/V split (when --components is not given).",
)
@click.option("--engine-dir", type=click.Path(path_type=Path), default=DEFAULT_ENGINE_DIR, show_default=True)
@click.option("--export-dir", type=click.Path(path_type=Path), default=None, help="ONNX exports [export/<model>].")
@click.option("--opt-level", type=click.IntRange(0, 5), default=None, help="TensorRT builder optimisation level.")
@click.option("--workspace-mb", type=click.IntRange(1), default=None, help="TensorRT workspace limit.")
@click.option("--strip-weights", is_flag=True, help="TensorRT: weight-stripped plan, refit from the ONNX at load.")
@click.option("--targets", default=None, help="tensorrt-rtx compute capabilities, e.g. sm86,sm89,sm120 [sm89].")
@click.option("--plugin", "plugins", multiple=True, type=click.Path(path_type=Path), help="TensorRT plugin library.")
@click.option(
    "--controlnet",
    type=click.Path(path_type=Path),
    default=None,
    help="A Sana ControlNet folder: also build its graph, the step graph that takes its residuals and the encoder.",
)
def build(
    model: str,
    preset: str | None,
    random_weights: bool,
    profiles: str,
    backend: str,
    precision: str,
    max_batch: int,
    static: bool,
    components: str,
    engine_dir: Path,
    export_dir: Path | None,
    opt_level: int | None,
    workspace_mb: int | None,
    strip_weights: bool,
    targets: str | None,
    plugins: tuple[Path, ...],
    no_kv_cache: bool,
    quantize: str | None = None,
    recipe: str | None = None,
    controlnet: Path | None = None,
) -> None:
    """Build engines for resolution profiles (exports first if needed); cached engines are reused."""
    from sana_deploy.engines.backends import BuildOptions
    from sana_deploy.engines.builder import build_engines

    mode = quantize or (precision if precision in QUANT_MODES else None)
    if mode and recipe is None:  # no Q/DQ graph of this mode yet: calibrate on the built-in prompts first
        from sana_deploy.contract import parse_components, pipeline_components
        from sana_deploy.engines.backends import get_backend
        from sana_deploy.quantize import ensure_quantized

        names = pipeline_components(not no_kv_cache) if components is None else parse_components(components)
        chosen = get_backend(backend.lower())[0].name
        recipe = ensure_quantized(model, mode, chosen, names, export_dir, preset, random_weights)

    options = BuildOptions(
        opt_level=opt_level,
        workspace_mb=workspace_mb,
        strip_weights=strip_weights,
        targets=_csv(targets),
        plugin_libraries=tuple(str(p) for p in plugins) or None,
    )
    entries = build_engines(
        model=model,
        profiles=profiles,
        backend=backend.lower(),
        precision=precision,
        max_batch=max_batch,
        static=static,
        engine_dir=engine_dir,
        components=components,
        export_root=export_dir,
        options=options,
        preset=preset,
        random_weights=random_weights,
        kv_cache=not no_kv_cache,
        quantize=quantize,
        recipe=recipe,
        controlnet=controlnet,
    )
    rows = [
        [
            e.component,
            e.profile.name,
            e.profile.describe(e.component),
            f"{e.backend} ({e.device})",
            _size(e.size),
            "cached" if e.hit else f"{e.build_seconds:.1f} s",
            str(e.path),
        ]
        for e in entries
    ]
    click.echo()
    _table(rows, ["component", "profile", "shapes", "backend", "size", "build", "cache path"])
    for note in dict.fromkeys(filter(None, (not_runnable_note(BACKENDS[e.backend], e.device) for e in entries))):
        click.echo(note)


@click.group()
def engines() -> None:
    """List, inspect, verify and prune cached engines."""


def _engine_dir_option(f):  # noqa: ANN001, ANN202
    return click.option("--engine-dir", type=click.Path(path_type=Path), default=DEFAULT_ENGINE_DIR, show_default=True)(
        f
    )


def _ago(t: float | None) -> str:
    if t is None:
        return "never"
    s = time.time() - t
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"


@engines.command("list")
@_engine_dir_option
def list_engines(engine_dir: Path) -> None:
    """What is cached: key fields, size, last use."""
    from sana_deploy.engines.cache import EngineCache

    entries = EngineCache(engine_dir).entries()
    if not entries:
        click.echo(f"No engines in {engine_dir}. Build some with `sana-deploy build`.")
        return
    rows = [
        [
            e.key[:12],
            e.meta.get("model", "?"),
            e.meta.get("component", "?"),
            e.meta.get("profile", {}).get("name", "?"),
            e.meta.get("backend", "?"),
            e.meta.get("backend_version", "?"),
            e.meta.get("device", "?"),
            e.meta.get("precision", "?"),
            _size(int(e.meta.get("artifact_bytes", 0))),
            _ago(e.last_used),
        ]
        for e in sorted(entries, key=lambda e: (e.meta.get("component", ""), e.meta.get("backend", "")))
    ]
    _table(rows, ["key", "model", "component", "profile", "backend", "version", "device", "precision", "size", "used"])


def _select(engine_dir: Path, key: str) -> list:
    from sana_deploy.engines.cache import EngineCache
    from sana_deploy.errors import fail

    entries = [e for e in EngineCache(engine_dir).entries() if e.key.startswith(key)]
    if not entries:
        fail(f"No cached engine key starts with {key!r}; see `sana-deploy engines list --engine-dir {engine_dir}`.")
    return entries


@engines.command("inspect")
@click.argument("key", required=False, default="")
@_engine_dir_option
def inspect_engines(key: str, engine_dir: Path) -> None:
    """Bindings, profile shapes and what the artifact itself says (KEY prefix; default all)."""
    from sana_deploy.engines.inspection import inspect_entry

    for e in _select(engine_dir, key):
        click.echo(inspect_entry(e))
        click.echo()


@engines.command("verify")
@_engine_dir_option
def verify_engines(engine_dir: Path) -> None:
    """Check every entry's checksum, format and library version; exit 1 if any is bad."""
    from sana_deploy.engines.cache import EngineCache

    results = EngineCache(engine_dir).verify(deep=True)
    bad = 0
    for e, issues in results:
        status = "ok" if not issues else "BAD: " + "; ".join(issues)
        bad += bool(issues)
        click.echo(f"{e.key[:12]}  {e.meta.get('component', '?'):<13} {e.meta.get('backend', '?'):<13} {status}")
    click.echo(
        f"{len(results) - bad} ok, {bad} bad" + ("; remove them with `sana-deploy engines prune`." if bad else "")
    )
    if bad:
        raise SystemExit(1)


@engines.command("prune")
@_engine_dir_option
@click.option("--older-than", type=float, default=None, help="Also remove entries unused for this many days.")
@click.option("--all", "all_entries", is_flag=True, help="Remove every entry.")
@click.option("--dry-run", is_flag=True)
def prune_engines(engine_dir: Path, older_than: float | None, all_entries: bool, dry_run: bool) -> None:
    """Remove stale entries (corrupt, truncated, other library version) and leftovers of killed builds."""
    from sana_deploy.engines.cache import EngineCache

    removed = EngineCache(engine_dir).prune(all_entries=all_entries, older_than_days=older_than, dry_run=dry_run)
    for path, reason in removed:
        click.echo(f"{'would remove' if dry_run else 'removed'} {path}: {reason}")
    click.echo(f"{len(removed)} {'to remove' if dry_run else 'removed'}.")
