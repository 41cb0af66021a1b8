"""``sana-deploy quantize``: calibrate on the real pipeline and write Q/DQ transformer graphs, one folder per recipe.

The layer between the runtime (calibration runs ``SanaDeployPipeline``) and the bench; the engine builder only
reads the graphs written here (``sana_deploy.export.quantized.find_quantized``). See docs/QUANTIZATION.md.

:func:`quantize_model` records the transformer inputs at every solver timestep of every calibration prompt
(:mod:`.calibrate`), prepares each graph (``sana`` functions inlined, weight reshapes folded), plans its layers
(Sana-aware exclusions), runs the tool (:mod:`.tools`), measures the quantized graph against the fp32 export in
ONNX Runtime on the first prompt's inputs (the relative L2 error of the output at each timestep), and writes
``<export root>/<mode>-<digest>/<component>/{model.onnx, model.onnx.data, manifest.json}`` through a temporary
folder renamed into place, plus ``recipe.json`` beside the components. A recipe whose graphs exist for these
weights is reused without running anything.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from sana_deploy.contract import COMPONENTS, default_export_root
from sana_deploy.errors import fail
from sana_deploy.export import ensure_export, load_manifest
from sana_deploy.export.exporter import MANIFEST_FORMAT, _sha256_files
from sana_deploy.export.int8_overflow import check_weight_bits, default_weight_bits, required_weight_bits
from sana_deploy.export.quantized import (
    DEFAULT_COMPONENTS,
    DEFAULT_EXCLUDE,
    QUALITY_BOUNDS,
    QUANTIZABLE,
    QuantizeError,
    QuantRecipe,
    calibration_hash,
    check_backend,
    check_mode,
    check_tool,
    default_tool,
    dq_consumers,
    find_quantized,
    plan_layers,
    prepare_graph,
    qdq_layers,
    qdq_types,
    recipe_dir,
)
from sana_deploy.fileio import write_atomic
from sana_deploy.models.components import SanaComponents
from sana_deploy.quantize.calibrate import CalibrationSet, calibration_definition, record_calibration
from sana_deploy.quantize.prompts import DEFAULT_PROMPTS, check_prompts
from sana_deploy.quantize.tools import run_tool, tool_version

DEFAULT_STEPS = 20  # the pipeline's default: calibration visits the timesteps generation visits
DEFAULT_SIZE = 512  # calibration resolution (per-channel statistics barely depend on the token count)


@dataclass
class QuantizeResult:
    recipe: QuantRecipe
    folder: Path
    exports: dict[str, tuple[Path, dict]] = field(default_factory=dict)  # component -> (model.onnx, manifest)
    reused: bool = False
    seconds: float = 0.0


def _components(names: Iterable[str] | str | None) -> tuple[str, ...]:
    if names is None:
        return DEFAULT_COMPONENTS
    items = [n.strip().replace("-", "_") for n in (names.split(",") if isinstance(names, str) else names)]
    bad = [n for n in items if n not in QUANTIZABLE]
    if bad or not items:
        fail(f"Cannot quantize {bad or names!r}; choose from {', '.join(QUANTIZABLE)}.", QuantizeError)
    return tuple(c for c in QUANTIZABLE if c in items)


def quantize_model(
    model: str = "sana-tiny",
    mode: str = "int8",
    tool: str | None = None,
    prompts: list[str] | None = None,
    steps: int = DEFAULT_STEPS,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    guidance_scale: float = 4.5,
    sampler: str = "flow-dpm-solver",
    components: Iterable[str] | str | None = None,
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
    export_root: str | Path | None = None,
    preset: str | None = None,
    random_weights: bool = False,
    loaded: SanaComponents | None = None,
    backend: str | None = None,
    say: Callable[[str], None] | None = None,
    weight_bits: int | None = None,
) -> QuantizeResult:
    """Calibrate and write the Q/DQ graphs of one recipe (or find them already written). ``backend``: the engine
    backend the graphs are for, which picks the default tool (TensorRT takes symmetric int8 only).
    ``weight_bits``: 7 or 8; None: 7 for a CPU int8 recipe on a CPU whose int8 kernels saturate, else 8
    (:mod:`sana_deploy.export.int8_overflow`)."""
    say = say or (lambda m: print(f"[sana-deploy quantize] {m}", file=sys.stderr, flush=True))
    start = time.perf_counter()
    check_mode(mode)
    tool = check_tool(mode, tool or default_tool(mode, backend))
    bits = check_weight_bits(weight_bits, mode, tool) if weight_bits is not None else default_weight_bits(mode, tool)
    prompts = check_prompts(list(prompts) if prompts is not None else list(DEFAULT_PROMPTS))
    if int(steps) < 1:
        fail(f"--calib-steps must be at least 1, got {steps}.", QuantizeError)
    if int(size) % 32 or int(size) < 256:
        fail(f"--calib-size must be a multiple of 32 of at least 256 pixels, got {size}.", QuantizeError)
    names = _components(components)
    if loaded is None:
        from sana_deploy.models.loaders import load_components

        loaded = load_components(model, COMPONENTS, preset=preset, random_weights=random_weights)
    root = Path(export_root) if export_root is not None else default_export_root(loaded.model_id)
    definition = calibration_definition(loaded, prompts, steps, size, seed, guidance_scale, sampler)
    recipe = QuantRecipe(mode, tool, calibration_hash(definition), tuple(exclude), bits)
    folder = recipe_dir(root, recipe)
    weights = loaded.content_hash("transformer")
    found = {c: find_quantized(root, c, mode, recipe.name, weights) for c in names}
    if all(found.values()):
        say(f"{recipe.name}: already written in {folder} (same recipe and weights)")
        return QuantizeResult(recipe, folder, found, True, time.perf_counter() - start)  # type: ignore[arg-type]
    say(f"recipe {recipe.name}: {mode} with {tool} {tool_version(tool)}, {len(prompts)} prompts x {steps} steps")
    bases = {c: ensure_export(loaded, c, "fp32", root)[0] for c in names}
    calib = record_calibration(loaded, prompts, steps, size, seed, guidance_scale, sampler, progress=say)
    result = QuantizeResult(recipe, folder)
    for component in names:
        result.exports[component] = _quantize_component(component, bases[component], recipe, calib, folder, say)
    write_atomic(
        folder / "recipe.json",
        json.dumps({**recipe.fields(), "recipe": recipe.name, "calibration": definition,
                    "tool_version": tool_version(tool), "components": list(names)}, indent=2),
    )  # fmt: skip
    result.seconds = time.perf_counter() - start
    return result


def _quantize_component(
    component: str, base: Path, recipe: QuantRecipe, calib: CalibrationSet, folder: Path, say: Callable[[str], None]
) -> tuple[Path, dict]:
    base_manifest = load_manifest(base)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / component
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{component}-", dir=folder))
    try:
        prep_dir = tmp / "prepared"
        prep_dir.mkdir()
        model = prepare_graph(base)
        plan = plan_layers(model, recipe.exclude)
        prepared = prep_dir / "model.onnx"
        onnx.save_model(model, str(prepared), save_as_external_data=True, location="model.onnx.data")
        del model
        out_dir = tmp / "out"
        out_dir.mkdir()
        feeds = list(calib.feeds(component))
        out = run_tool(recipe.tool, recipe.mode, prepared, out_dir, plan, feeds, say, recipe.weight_bits)
        shutil.rmtree(prep_dir, ignore_errors=True)
        graph = onnx.load(str(out), load_external_data=False)
        placed = qdq_layers(graph)
        wrong = sorted(n for n, q in placed.items() if q != (n in plan.quantize))
        wrong += sorted(dq_consumers(graph) - set(plan.quantize))  # a quantized value read by a float node
        if wrong:
            fail(
                f"The {recipe.tool} {recipe.mode} graph of {component} has Q/DQ where the recipe does not say (or "
                f"none where it does): {', '.join(plan.layers.get(n, n) for n in wrong[:5])}.",
                QuantizeError,
            )
        quality = measure_quality(base, out, calib, component, recipe.mode)
        bound = QUALITY_BOUNDS[recipe.mode]
        say(
            f"{component}: {len(plan.quantize)} layers quantized ({', '.join(sorted(qdq_types(graph)))}), "
            f"{len(plan.exclude)} kept in fp32; rel L2 vs fp32 max {quality['max_rel_l2']:.2e} over "
            f"{len(quality['rel_l2'])} calibration inputs (bound {bound:.0e})"
        )
        if quality["max_rel_l2"] > bound:
            say(f"warning: {component} exceeds the {recipe.mode} bound {bound:.0e} on its calibration inputs")
        files = sorted(f.name for f in out_dir.iterdir() if f.name.startswith("model.onnx"))
        manifest = {
            "format": MANIFEST_FORMAT,
            **{k: base_manifest[k] for k in ("model_id", "preset", "weights_sha256", "component", "opset")},
            "precision": recipe.mode,
            "base_precision": "fp32",
            "dtype": f"float32 + {recipe.mode} Q/DQ",
            "onnx_sha256": _sha256_files(out_dir, files),
            "files": files,
            **{k: base_manifest[k] for k in ("inputs", "outputs", "axes")},
            "sana_functions": [],
            "base_onnx_sha256": base_manifest["onnx_sha256"],
            "quantization": {
                **recipe.fields(),
                "recipe": recipe.name,
                "tool_version": tool_version(recipe.tool),
                "qdq_types": sorted(qdq_types(graph)),
                "layers": plan.to_json(),
            },
            "quality": {**quality, "bound": bound, "within_bound": quality["max_rel_l2"] <= bound},
            "parity_status": "passed" if quality["max_rel_l2"] <= bound else "failed",
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if final.exists():
            old = final.with_name(f".tmp-old-{component}-{os.getpid()}")
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "model.onnx", manifest


def measure_quality(base: Path, quantized: Path, calib: CalibrationSet, component: str, mode: str) -> dict:
    """The quantized graph against the fp32 export, both in ONNX Runtime's CPU provider, on the first calibration
    prompt's inputs (every solver step of it; every prompt for the caption K/V graph): relative L2 error of the
    output per input. Non-finite outputs are an error."""
    from sana_deploy.runners.onnxruntime import OrtOptions, ort_session

    options = OrtOptions(spin=False)
    ref = ort_session(base, options, ["CPUExecutionProvider"])
    quant = ort_session(quantized, options, ["CPUExecutionProvider"])
    prompt = None if component == "transformer_text" else 0
    errors, timesteps = [], []
    for feed in calib.feeds(component, prompt):
        a = ref.run(None, feed)[0]
        b = quant.run(None, feed)[0]
        if not np.isfinite(b).all():
            fail(f"The {mode} graph of {component} returns NaN/inf on its calibration inputs; not written.")
        errors.append(float(np.linalg.norm((b - a).ravel()) / max(np.linalg.norm(a.ravel()), 1e-30)))
        if "timestep" in feed:
            timesteps.append(float(feed["timestep"].ravel()[0]))
    out = {"rel_l2": errors, "max_rel_l2": max(errors), "mean_rel_l2": float(np.mean(errors))}
    if timesteps:
        out["timesteps"] = timesteps
    return out


def _versions() -> dict:
    from sana_deploy.versions import package_versions

    return package_versions()


def ensure_quantized(
    model: str,
    mode: str,
    backend: str,
    components: Iterable[str],
    export_root: str | Path | None = None,
    preset: str | None = None,
    random_weights: bool = False,
    say: Callable[[str], None] | None = None,
    loaded: SanaComponents | None = None,
) -> str | None:
    """What ``sana-deploy build --quantize MODE`` runs first: nothing when every transformer graph of the build has
    a ``mode`` export the backend runs (the builder picks the newest and checks its weights), else a calibration
    with the defaults (built-in prompts, 20 steps at 512²); returns the recipe name it wrote, or None.
    ``loaded``: the model's components already in memory, calibrated instead of loading a second copy."""
    from sana_deploy.export.quantized import FP32_UNLESS_COVERED, SELF_QUANTIZING, tools_for

    check_backend(mode, backend)  # before a calibration that could not be used
    names = tuple(c for c in components if c in QUANTIZABLE and c not in FP32_UNLESS_COVERED)
    if not names or backend in SELF_QUANTIZING[mode]:  # it quantizes the PyTorch model itself: no Q/DQ graph
        return None
    root = Path(export_root) if export_root is not None else default_export_root(model)
    tools = tools_for(mode, backend)
    # on a CPU whose int8 kernels saturate, only 7-bit-weight graphs are usable (sana_deploy.export.int8_overflow)
    bits = required_weight_bits(mode, backend)
    if all(find_quantized(root, c, mode, tools=tools, weight_bits=bits) for c in names):
        return None
    say = say or (lambda m: print(f"[sana-deploy quantize] {m}", file=sys.stderr, flush=True))
    why = " with 7-bit weights (this CPU's int8 kernels saturate with 8)" if bits else ""
    say(f"no {mode} graph{why} of {', '.join(names)} for {backend} in {root}: calibrating on the built-in prompts")
    result = quantize_model(
        model, mode, components=names, export_root=root, preset=preset, random_weights=random_weights,
        backend=backend, say=say, loaded=loaded,
    )  # fmt: skip
    return result.recipe.name


__all__ = ["DEFAULT_STEPS", "QuantizeResult", "ensure_quantized", "measure_quality", "quantize_model"]
