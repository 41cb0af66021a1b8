"""``sana-deploy quantize``: calibrate on the pipeline and write Q/DQ transformer graphs (the click layer only)."""

from __future__ import annotations

from pathlib import Path

import click

from sana_deploy.cli.options import model_option, preset_option, random_weights_option
from sana_deploy.export.quantized import DEFAULT_EXCLUDE, QUANT_MODES, QUANTIZABLE

TOOL_CHOICES = ("auto", "nncf", "modelopt", "onnxruntime")


@click.command()
@model_option
@preset_option
@random_weights_option
@click.option("--mode", type=click.Choice(QUANT_MODES), required=True, help="int8 (CPU, TensorRT) or fp8 (TensorRT).")
@click.option(
    "--tool",
    type=click.Choice(TOOL_CHOICES),
    default="auto",
    show_default=True,
    help="Who places the Q/DQ nodes [auto: nncf for int8 (CPU engines), modelopt for fp8, and for int8 with "
    "--for-backend tensorrt/tensorrt-rtx; onnxruntime where those are not installed].",
)
@click.option(
    "--for-backend",
    default=None,
    help="The engine backend the graphs are for (picks the tool: TensorRT takes symmetric int8 only).",
)
@click.option(
    "--calib-prompts",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Text file, one prompt a line [a built-in set of 8].",
)
@click.option(
    "--calib-steps", type=click.IntRange(1), default=20, show_default=True, help="Solver steps per calibration prompt."
)
@click.option("--calib-size", type=int, default=512, show_default=True, help="Calibration image size (square, px).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--components",
    default=None,
    help=f"Transformer graphs to quantize [transformer-cached; the caption K/V graph transformer-text stays fp32 "
    f"unless listed]; any of {', '.join(QUANTIZABLE)}.",
)
@click.option(
    "--exclude",
    default=None,
    help="Comma-separated module-path patterns kept in fp32, replacing the defaults "
    f"[{','.join(DEFAULT_EXCLUDE)}]. Attention products and the linear attention are never quantized.",
)
@click.option(
    "--weight-bits",
    type=click.Choice(["auto", "7", "8"]),
    default="auto",
    show_default=True,
    help="int8 weight range for CPU graphs [auto: 7 when this CPU has no VNNI, whose int8 kernels saturate with "
    "8-bit weights; 8 otherwise]. Pass 7 for graphs made on a VNNI machine that will run on CPUs without it.",
)
@click.option("--export-dir", type=click.Path(path_type=Path), default=None, help="Export root [export/<model>].")
def quantize(
    model: str,
    preset: str | None,
    random_weights: bool,
    mode: str,
    tool: str,
    for_backend: str | None,
    calib_prompts: Path | None,
    calib_steps: int,
    calib_size: int,
    seed: int,
    components: str | None,
    exclude: str | None,
    weight_bits: str,
    export_dir: Path | None,
) -> None:
    """Calibrate on the pipeline and write Q/DQ transformer graphs (one folder per recipe) for `build --quantize`."""
    from sana_deploy.quantize import quantize_model
    from sana_deploy.quantize.prompts import read_calibration_prompts

    patterns = tuple(p.strip() for p in exclude.split(",") if p.strip()) if exclude is not None else DEFAULT_EXCLUDE
    result = quantize_model(
        model,
        mode,
        None if tool == "auto" else tool,
        read_calibration_prompts(calib_prompts),
        calib_steps,
        calib_size,
        seed,
        components=components,
        exclude=patterns,
        export_root=export_dir,
        preset=preset,
        random_weights=random_weights,
        backend=for_backend,
        weight_bits=None if weight_bits == "auto" else int(weight_bits),
    )
    bits = f", {result.recipe.weight_bits}-bit weights" if result.recipe.mode == "int8" else ""
    click.echo(
        f"\nrecipe {result.recipe.name} ({result.recipe.tool}{bits}){' (already written)' if result.reused else ''}"
    )
    header = ["component", "quantized", "kept fp32", "Q/DQ types", "max rel L2 (calib)", "bound", "graph"]
    rows = []
    for component, (path, manifest) in result.exports.items():
        q, quality = manifest["quantization"], manifest["quality"]
        rows.append([
            component, str(len(q["layers"]["quantized"])), str(len(q["layers"]["excluded"])),
            ",".join(q["qdq_types"]), f"{quality['max_rel_l2']:.2e}", f"{quality['bound']:.0e}", str(path),
        ])  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    click.echo(f"build with: sana-deploy build --model {model} --quantize {mode} --recipe {result.recipe.name}")
