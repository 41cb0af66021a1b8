"""``sana-deploy models`` and ``sana-deploy export``."""

from __future__ import annotations

from pathlib import Path

import click

from sana_deploy.cli.options import PRECISIONS, model_option, preset_option, random_weights_option
from sana_deploy.contract import CONTROLNET, TRANSFORMER_CONTROL, module_of, parse_components
from sana_deploy.errors import fail
from sana_deploy.export import export_model
from sana_deploy.models.config import PRESETS
from sana_deploy.models.controlnet import check_fits, folder_config, load_controlnet
from sana_deploy.models.loaders import load_components


@click.command()
def models() -> None:
    """List the model presets with their dimensions."""
    cols = f"{'depth':>6}{'hidden':>8}{'heads':>7}{'cross':>9}{'ffn':>7}{'res':>6}{'PE':>8}{'shift':>6}"
    click.echo(f"{'preset':<22}{cols}  dtype")
    for p in PRESETS.values():
        t = p.transformer
        pe = f"x{t.interpolation_scale:g}" if t.use_pe else "none"
        cross = f"{t.num_cross_attention_heads}x{t.cross_attention_head_dim}"
        click.echo(
            f"{p.name:<22}{t.num_layers:>6}{t.hidden_size:>8}{t.num_attention_heads:>7}{cross:>9}{t.ffn_hidden:>7}"
            f"{p.resolution:>6}{pe:>8}{p.flow_shift:>6g}  {p.dtype}"
            + ("  qk-norm" if t.qk_norm else "")
            + ("  sprint (guidance embedding, scm solver, no CFG)" if p.sprint else "")
        )


@click.command()
@model_option
@preset_option
@random_weights_option
@click.option(
    "--components",
    default="transformer,vae,text-encoder",
    show_default=True,
    help="Comma-separated: transformer, vae, text-encoder (also transformer-text, transformer-cached, vae-encoder, "
    "transformer-pag; transformer-control and controlnet with --controlnet).",
)
@click.option(
    "--controlnet",
    type=click.Path(path_type=Path),
    default=None,
    help="A Sana ControlNet folder (diffusers layout): also export its graph (controlnet) and the step graph that "
    "takes its residuals (transformer-control), parity-checked like the others.",
)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder [export/<model>].")
@click.option(
    "--no-parity",
    is_flag=True,
    help="Unsafe: skip the ONNX Runtime vs PyTorch parity check. The export is marked unchecked, and generate, "
    "serve and build never use it (they export again, checked).",
)
def export(
    model: str,
    preset: str | None,
    random_weights: bool,
    components: str,
    precision: str,
    out: Path | None,
    no_parity: bool,
    controlnet: Path | None = None,
) -> None:
    """Export Sana components to ONNX (dynamic batch/resolution/text length) and check parity."""

    names = parse_components(components)
    if controlnet is not None:  # read now: a folder that is not a ControlNet fails before the model loads
        cfg = folder_config(controlnet)
        if str(model).lower() in PRESETS:  # a ControlNet for another model size, too (others: when they load)
            check_fits(cfg, PRESETS[str(model).lower()], str(controlnet))
        names = parse_components((*names, TRANSFORMER_CONTROL, CONTROLNET))
    elif CONTROLNET in names:
        fail("Exporting the controlnet graph needs the ControlNet: pass --controlnet FOLDER (diffusers' Sana layout).")
    modules = tuple(dict.fromkeys(module_of(c) for c in names if c != CONTROLNET))  # what the graphs are traced from
    loaded = load_components(model, modules, preset=preset, random_weights=random_weights)
    if controlnet is not None:  # checked to fit the model, as build --controlnet and generate --controlnet load it
        loaded.controlnet = load_controlnet(controlnet, loaded.preset)
    click.echo(f"model: {loaded.model_id} ({loaded.source})")
    results = export_model(loaded, names, precision, out, unsafe_skip_parity=no_parity)
    click.echo("\nParity report (ONNX Runtime vs PyTorch):")
    for r in results:
        click.echo(f"{r.component} [{r.precision}] -> {r.path}  ({r.seconds:.1f}s)")
        for p in r.parity:
            click.echo(f"  {p}")
