"""Export Sana components to ONNX with dynamic axes, ``sana`` local functions and a parity check.

Every export is written into a temporary folder next to its destination and renamed into place only
after ``onnx.checker`` and the parity check passed, so a failed or killed export never leaves a file that
looks finished. Layout: ``<out>/<precision>/<component>/{model.onnx[, model.onnx.data], manifest.json}``.
"""

from __future__ import annotations

import copy
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
from sana_deploy.errors import ExportError, SanaDeployError, fail
from sana_deploy.export.onnx_functions import DOMAIN, FUNCTION_VERSION, PLUGIN_ATTRS, attach_functions, register_schemas
from sana_deploy.export.parity import ParityResult, check_parity
from sana_deploy.export.specs import SPECS, ExportSpec
from sana_deploy.models.components import SanaComponents
from sana_deploy.plugins.registry import use_kernels
from sana_deploy.versions import package_versions

OPSET = 18
MANIFEST_FORMAT = "sana-deploy/export/1"
EXTERNAL_DATA_THRESHOLD = 1 << 31  # protobuf's 2 GiB limit
MODEL_FILE = "model.onnx"


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
    dims = {name: torch.export.Dim(name, min=r.min, max=r.max) for name, r in spec.axes.items()}
    return tuple({i: dims[d] for i, d in enumerate(t.shape) if isinstance(d, str)} for t in spec.inputs)


def trace_to_onnx(
    module: torch.nn.Module, spec: ExportSpec, inputs: dict[str, torch.Tensor], path: Path
) -> tuple[onnx.ModelProto, list[str]]:
    """torch.export + the dynamo ONNX exporter, ``sana::`` ops as ``sana`` nodes with function bodies.

    Writes ``path`` (with ``path.data`` external weights when they would pass protobuf's 2 GiB limit) and
    returns the graph (without weights) and the files written.
    """
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # torchvision notes
    with use_kernels("reference"), torch.no_grad(), warnings.catch_warnings():
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
    external = _weight_bytes(module) > EXTERNAL_DATA_THRESHOLD * 0.9
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


def _in_dtype(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module`` in ``dtype``; a copy when it is in another dtype, so the caller's modules stay as loaded."""
    current = {p.dtype for p in module.parameters() if p.is_floating_point()}
    return module if current == {dtype} else copy.deepcopy(module).to(dtype)


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


def export_component(
    components: SanaComponents,
    component: str,
    precision: str = "fp32",
    out: Path | str = "export/sana-tiny",
    parity: bool = True,
) -> ExportResult:
    """Export one component; returns where it went, its manifest and the parity results."""
    start = time.perf_counter()
    spec = SPECS[component](components)
    dtype = component_dtype(component, precision)
    final = export_dir(Path(out), component, precision)
    _check_writable(final.parent)
    _clean_stale_temps(final.parent)
    module = _in_dtype(spec.wrap(components).eval(), dtype)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{component}-", dir=final.parent))
    try:
        _progress(f"{component} ({precision}): tracing with torch.export (dynamic {', '.join(spec.axes)})")
        inputs = spec.dummy_inputs(components, spec.export_sizes)
        model, files = trace_to_onnx(module, spec, inputs, tmp / MODEL_FILE)
        functions = [f.name for f in model.functions]
        _progress(f"{component}: {len(model.graph.node)} nodes, functions {functions}; saved {', '.join(files)}")
        onnx.checker.check_model(str(tmp / MODEL_FILE))
        results: list[ParityResult] = []
        if parity:
            # The reference is the fp32 PyTorch model: ONNX Runtime's CPU provider runs fp16 graphs with fp32
            # kernels anyway, and PyTorch's own fp16 CPU path is far too slow for real-size models.
            reference = _in_dtype(module, torch.float32)
            results = check_parity(tmp / MODEL_FILE, reference, spec, components, precision, progress=_progress)
            del reference
            bad = [r for r in results if not r.ok]
            if bad:
                lines = "\n".join(f"  {r}" for r in bad)
                fail(f"Parity check failed for {component} ({precision}):\n{lines}", ExportError)
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
    parity: bool = True,
) -> list[ExportResult]:
    """Export several components of one model (default: all that are loaded)."""
    torch_dtype(precision)  # validates the name
    names = parse_components(component_names)
    out = Path(out) if out is not None else default_export_root(components.model_id)
    return [export_component(components, c, precision, out, parity) for c in names]


def ensure_export(
    components: SanaComponents, component: str, precision: str, root: str | Path, parity: bool = True
) -> tuple[Path, bool]:
    """The one way anything gets an export: ``root/<precision>/<component>/model.onnx`` of exactly these weights,
    and whether it was already there.

    Exported (parity-checked unless ``parity=False``) when the folder holds no export, or one of other weights
    (manifest ``weights_sha256``); a file lock makes concurrent processes export once.
    """
    from filelock import FileLock

    root = Path(root)
    folder = export_dir(root, component, precision)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{component}-{precision}.lock")):
        manifest = folder / "manifest.json"
        if manifest.exists() and (folder / MODEL_FILE).exists():
            data = json.loads(manifest.read_text())
            if data.get("weights_sha256") == components.content_hash(component):
                return folder / MODEL_FILE, True
        return export_component(components, component, precision, root, parity=parity).path, False


def load_manifest(onnx_path: Path) -> dict:
    path = Path(onnx_path).with_name("manifest.json")
    if not path.exists():
        fail(f"No manifest.json next to {onnx_path}; re-export it with `sana-deploy export`.")
    return json.loads(path.read_text())
