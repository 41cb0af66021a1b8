"""Export Sana components to ONNX with dynamic axes, ``sana`` local functions and a parity check.

Every export is written into a temporary folder next to its destination and renamed into place only
after ``onnx.checker`` and the parity check passed, so a failed or killed export never leaves a file that
looks finished. Layout: ``<out>/<precision>/<component>/{model.onnx[, model.onnx.data], manifest.json}``.

The parity check has two levels: ``full`` (every parity size of the spec; ``sana-deploy export`` and engine
builds) and ``quick`` (the spec's smallest parity size; what the runtime's :func:`ensure_export` runs before it
serves an export). Only ``sana-deploy export --no-parity`` skips it, through ``unsafe_skip_parity=True``; such an
export is marked ``"parity_status": "unchecked"`` and :func:`ensure_export` never serves it (it exports again,
checked).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from sana_deploy.contract import component_dtype, default_export_root, export_dir, parse_components, torch_dtype
from sana_deploy.errors import ExportError, ParityError, SanaDeployError, fail
from sana_deploy.export.exact_rules import exact_no_op_rules
from sana_deploy.export.onnx_functions import DOMAIN, FUNCTION_VERSION, PLUGIN_ATTRS, attach_functions, register_schemas
from sana_deploy.export.parity import ParityResult, check_parity
from sana_deploy.export.specs import SPECS, ExportSpec, axis_factor
from sana_deploy.models.components import SanaComponents, cast_copy
from sana_deploy.plugins.registry import use_kernels
from sana_deploy.runners.weights import match_weights, onnx_initializers, write_weight_map
from sana_deploy.versions import package_versions

OPSET = 18
MANIFEST_FORMAT = "sana-deploy/export/1"
EXTERNAL_DATA_THRESHOLD = 1 << 31  # protobuf's 2 GiB limit
MODEL_FILE = "model.onnx"
PARITY_LEVELS = ("full", "quick")
# manifest "parity_status": what ensure_export serves ("skipped": ONNX Runtime's CPU provider cannot run this
# graph, e.g. bf16; the reason is in "parity") and what it re-exports ("unchecked": exported with --no-parity)
SERVABLE_PARITY = ("passed", "skipped")


@dataclass
class ExportResult:
    component: str
    precision: str
    path: Path  # the model.onnx
    manifest: dict
    parity: list[ParityResult]
    seconds: float


_T0 = time.perf_counter()


def _progress(msg: str) -> None:
    """One line per export stage on stderr, with the seconds since the process started exporting."""
    print(f"[sana-deploy export {time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _translation_table() -> dict:
    from onnxscript.values import Opset

    register_schemas()
    sana = Opset(DOMAIN, FUNCTION_VERSION)

    def linear_attention(q, k, v, heads: int, eps: float):
        return sana.LinearAttention(q, k, v, heads=heads, eps=eps, **PLUGIN_ATTRS)

    def mix_ffn(x, w_inv, b_inv, w_dw, b_dw, w_pt):
        groups = int(w_dw.shape[0])
        return sana.MixFFN(x, w_inv, b_inv, w_dw, b_dw, w_pt, dw_channels=groups, **PLUGIN_ATTRS)

    return {torch.ops.sana.linear_attention.default: linear_attention, torch.ops.sana.mix_ffn.default: mix_ffn}


def _dynamic_shapes(spec: ExportSpec) -> tuple:
    """One ``Dim`` per named axis; a derived pattern (``"32*latent_h"``) is that multiple of its axis's ``Dim``."""
    dims = {name: torch.export.Dim(name, min=r.min, max=r.max) for name, r in spec.axes.items()}

    def dim(pattern: str):  # noqa: ANN202
        factor, axis = axis_factor(pattern)
        return dims[axis] if factor == 1 else factor * dims[axis]

    return tuple({i: dim(d) for i, d in enumerate(t.shape) if isinstance(d, str)} for t in spec.inputs)


def trace_to_onnx(
    module: torch.nn.Module, spec: ExportSpec, inputs: dict[str, torch.Tensor], path: Path
) -> tuple[onnx.ModelProto, list[str]]:
    """torch.export + the dynamo ONNX exporter, ``sana::`` ops as ``sana`` nodes with function bodies.

    Writes ``path`` (with ``path.data`` external weights for the transformer graphs, and for any graph that would
    pass protobuf's 2 GiB limit) and returns the graph (without weights) and the files written.
    """
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # torchvision notes
    with use_kernels("reference"), torch.no_grad(), warnings.catch_warnings(), exact_no_op_rules():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            tuple(inputs.values()),
            dynamo=True,
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_shapes=_dynamic_shapes(spec),
            custom_translation_table=_translation_table(),
            opset_version=OPSET,
            verbose=False,
        )
    # Transformer graphs always keep their weights in ``model.onnx.data``: ONNX Runtime replaces external
    # initializers before it optimises the graph, which is how a LoRA swap reaches weights that the optimiser
    # folds (e.g. the Mix-FFN kernels' reshape); it ignores replacements of inline ones there.
    external = spec.component.startswith("transformer") or _weight_bytes(module) > EXTERNAL_DATA_THRESHOLD * 0.9
    program.save(str(path), external_data=external)
    del program
    _release_weights(module)
    # Attach the function bodies to the weight-less graph, leaving external weights where they are.
    model = onnx.load(str(path), load_external_data=False)
    attach_functions(model)
    model.producer_name = "sana-deploy"
    onnx.save_model(model, str(path))
    files = sorted(f.name for f in path.parent.iterdir() if f.name.startswith(path.name))
    return model, files


def _release_weights(module: torch.nn.Module) -> None:
    """Let the exporter's IR go of ``module``'s tensors once they are saved.

    onnxscript's rewriter (the exporter's optimisation pass, which TensorRT needs: it folds shape subgraphs
    into constants) keeps the last graph it matched in module-level pattern matchers; stale values of that
    graph hold the tensor wrappers whose raw data *is* the module's parameters. Without this, the weights of
    the last export stay alive after the caller drops the module (10 GB for Gemma-2 at real size, on top of
    the ONNX Runtime session that loads them from disk). Only wrappers of this module's own tensors are
    emptied; the export that made them is finished. Tested by ``test_export_releases_the_weights``.
    """
    from torch.onnx._internal.exporter._core import TorchTensor

    mine = {id(t) for t in (*module.parameters(), *module.buffers())}
    with warnings.catch_warnings():  # isinstance() on some lazy modules' objects warns about deprecations
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if type(obj) is TorchTensor and id(getattr(obj, "_raw", None)) in mine:
                obj._raw = None


def _weight_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _sha256_files(folder: Path, files: list[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in files:
        with open(folder / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        fail(f"Cannot write to output folder {out}: {exc.strerror or exc}. Pass --out with a writable folder.")


def _clean_stale_temps(parent: Path) -> None:
    for stale in parent.glob(".tmp-*"):
        if stale.is_dir() and time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)


def check_parity_level(parity: object) -> str:
    """``parity`` as a level name (``True``, its older spelling, is ``full``); anything else, ``False`` included, is
    refused: the check has no off switch."""
    if parity is True:
        return "full"
    if isinstance(parity, str) and parity in PARITY_LEVELS:
        return parity
    raise TypeError(
        f"parity must be one of {', '.join(PARITY_LEVELS)}, got {parity!r}; the parity check cannot be turned off "
        f"(only export_component(..., unsafe_skip_parity=True) skips it, and ensure_export never serves that)."
    )


def parity_status(results: list[ParityResult], skipped_on_purpose: bool = False) -> str:
    """``passed``, ``skipped`` (ONNX Runtime could not run the graph here), ``failed`` or ``unchecked``."""
    if skipped_on_purpose or not results:
        return "unchecked"
    if not all(r.ok for r in results):
        return "failed"
    return "skipped" if all(r.skipped for r in results) else "passed"


def export_component(
    components: SanaComponents,
    component: str,
    precision: str = "fp32",
    out: Path | str = "export/sana-tiny",
    parity: str = "full",
    *,
    unsafe_skip_parity: bool = False,
) -> ExportResult:
    """Export one component; returns where it went, its manifest and the parity results.

    ``parity``: ``full`` (every parity size of the spec) or ``quick`` (its smallest one). A graph that fails it is
    refused with a :class:`~sana_deploy.errors.ParityError` carrying the report, and nothing is written to ``out``.
    ``unsafe_skip_parity``: write the graph unchecked (``sana-deploy export --no-parity``); the manifest says so and
    :func:`ensure_export`, the runtime's way to exports, never serves it.
    """
    level = check_parity_level(parity)
    start = time.perf_counter()
    spec = SPECS[component](components)
    dtype = component_dtype(component, precision)
    final = export_dir(Path(out), component, precision)
    _check_writable(final.parent)
    _clean_stale_temps(final.parent)
    module = cast_copy(spec.wrap(components).eval(), dtype)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{component}-", dir=final.parent))
    try:
        _progress(f"{component} ({precision}): tracing with torch.export (dynamic {', '.join(spec.axes)})")
        inputs = spec.dummy_inputs(components, spec.export_sizes)
        model, files = trace_to_onnx(module, spec, inputs, tmp / MODEL_FILE)
        functions = [f.name for f in model.functions]
        _progress(f"{component}: {len(model.graph.node)} nodes, functions {functions}; saved {', '.join(files)}")
        onnx.checker.check_model(str(tmp / MODEL_FILE))
        if component.startswith("transformer"):  # where each swappable weight lives (LoRA without re-export)
            refs = match_weights(dict(module.named_parameters()), onnx_initializers(tmp / MODEL_FILE))
            write_weight_map(tmp, refs, MODEL_FILE)
        results: list[ParityResult] = []
        if not unsafe_skip_parity:
            # The reference is the fp32 PyTorch model: ONNX Runtime's CPU provider runs fp16 graphs with fp32
            # kernels anyway, and PyTorch's own fp16 CPU path is far too slow for real-size models.
            reference = cast_copy(module, torch.float32)
            sizes = spec.parity_sizes if level == "full" else spec.quick_parity_sizes
            results = check_parity(
                tmp / MODEL_FILE, reference, spec, components, precision, progress=_progress, sizes=sizes
            )
            del reference
            if parity_status(results) == "failed":
                raise ParityError(parity_message(component, precision, results, components.model_id), results)
        manifest = {
            "format": MANIFEST_FORMAT,
            "model_id": components.model_id,
            "preset": components.preset.name,
            "weights_sha256": components.content_hash(component),
            "component": component,
            "precision": precision,
            "dtype": str(dtype).replace("torch.", ""),
            "opset": OPSET,
            "onnx_sha256": _sha256_files(tmp, files),
            "files": files,
            "inputs": [t.to_json() for t in spec.inputs],
            "outputs": [t.to_json() for t in spec.outputs],
            "axes": {k: [r.min, r.max] for k, r in spec.axes.items()},
            "sana_functions": sorted(f.name for f in model.functions if f.domain == DOMAIN),
            "parity": [r.to_json() for r in results],
            "parity_level": "none" if unsafe_skip_parity else level,
            "parity_status": parity_status(results, unsafe_skip_parity),
            "versions": package_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        manifest["export_seconds"] = round(time.perf_counter() - start, 2)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        _replace_dir(tmp, final)
    except SanaDeployError:
        raise
    except Exception as exc:
        raise ExportError(f"Export of {component} ({precision}) failed: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(component, precision, final / MODEL_FILE, manifest, results, manifest["export_seconds"])


def parity_message(component: str, precision: str, results: list[ParityResult], model_id: str = "") -> str:
    """The parity report of a refused export, and what to do about it."""
    lines = "\n".join(f"  {r}" for r in results)
    model = f" of {model_id}" if model_id else ""
    return (
        f"Parity check failed for {component}{model} ({precision}): its ONNX export does not match PyTorch, so it "
        f"is not used (parity report, ONNX Runtime vs PyTorch):\n{lines}\n"
        f"Nothing was written. Run this model with --backend torch, or try another --precision; "
        f"`sana-deploy export --model ... --components {component.replace('_', '-')}` prints the full report."
    )


def _replace_dir(src: Path, dst: Path) -> None:
    """Move a finished export into place; an older export at ``dst`` is swapped out, then removed."""
    old = None
    if dst.exists():
        old = dst.with_name(f".tmp-old-{dst.name}-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_model(
    components: SanaComponents,
    component_names: str | tuple[str, ...] | None = None,
    precision: str = "fp32",
    out: Path | str | None = None,
    parity: str = "full",
    *,
    unsafe_skip_parity: bool = False,
) -> list[ExportResult]:
    """Export several components of one model (default: all that are loaded); see :func:`export_component`."""
    torch_dtype(precision)  # validates the name
    names = parse_components(component_names)
    out = Path(out) if out is not None else default_export_root(components.model_id)
    level = check_parity_level(parity)
    return [
        export_component(components, c, precision, out, level, unsafe_skip_parity=unsafe_skip_parity) for c in names
    ]


def servable(manifest: dict) -> bool:
    """Whether an export's manifest records a parity check that let it through (older manifests: from the results)."""
    status = manifest.get("parity_status")
    if status is None:
        results = manifest.get("parity") or []
        ok = [bool(r.get("skipped")) or (r.get("finite") and r.get("rel", 1) <= r.get("tolerance", 0)) for r in results]
        status = "passed" if ok and all(ok) else "unchecked"
    return status in SERVABLE_PARITY


def ensure_export(
    components: SanaComponents, component: str, precision: str, root: str | Path, parity: str = "quick"
) -> tuple[Path, bool]:
    """The one way anything gets an export: ``root/<precision>/<component>/model.onnx`` of exactly these weights,
    and whether it was already there.

    Always parity-checked: an export is reused only when its manifest names these weights (``weights_sha256``)
    and the spec's inputs, and records a parity check it passed; otherwise it is exported again and checked at
    ``parity`` (``quick``: the spec's smallest parity size, ``full``: all of them). A graph that fails the check raises
    :class:`~sana_deploy.errors.ParityError` with the report and nothing is written. A file lock makes
    concurrent processes export once.
    """
    from filelock import FileLock

    level = check_parity_level(parity)
    root = Path(root)
    folder = export_dir(root, component, precision)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{component}-{precision}.lock")):
        manifest = folder / "manifest.json"
        if manifest.exists() and (folder / MODEL_FILE).exists():
            try:
                data = json.loads(manifest.read_text())
            except (OSError, ValueError):  # unreadable or not JSON: export again
                data = {}
            same_weights = isinstance(data, dict) and data.get("weights_sha256") == components.content_hash(component)
            # and the same graph interface (e.g. the number of ControlNet residuals transformer_control takes)
            same_io = isinstance(data, dict) and data.get("inputs") == [
                t.to_json() for t in SPECS[component](components).inputs
            ]
            if same_weights and same_io and servable(data):
                return folder / MODEL_FILE, True
        return export_component(components, component, precision, root, level).path, False


def load_manifest(onnx_path: Path) -> dict:
    path = Path(onnx_path).with_name("manifest.json")
    if not path.exists():
        fail(f"No manifest.json next to {onnx_path}; re-export it with `sana-deploy export`.")
    return json.loads(path.read_text())
