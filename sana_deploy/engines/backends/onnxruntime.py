"""``onnxruntime``: the "build" saves the graph after ONNX Runtime's optimisations, so sessions start fast.

The CPU engine of CI machines and the fallback everywhere. Execution providers: TensorRT, then CUDA, then CPU, as
installed (``onnxruntime-gpu``); the artifact is optimised at the ``extended`` level, which stays portable across
providers (``all`` adds CPU-layout-specific nodes). A static profile pins its fixed free dimensions (all but the
batch) so the optimiser can specialise shapes. ONNX Runtime runs any shape, but lookups still honour the profile,
like every backend.
"""

from __future__ import annotations

from pathlib import Path

from sana_deploy.engines.backends.base import Backend, BuildJob, BuildOptions, BuildOutput, EngineBuildError
from sana_deploy.engines.devices import current_device
from sana_deploy.errors import SanaDeployError, fail
from sana_deploy.runners.onnxruntime import PROVIDER_ORDER, ort_session
from sana_deploy.runners.weights import (
    match_weights,
    onnx_initializers,
    read_weight_map,
    stored_weights,
    write_weight_map,
)

ARTIFACT = "model.opt.onnx"
_GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}


def choose_providers(options: BuildOptions | None = None) -> list[str]:
    import onnxruntime as ort

    have = ort.get_available_providers()
    if options is not None and options.ort_providers:
        missing = [p for p in options.ort_providers if p not in have]
        if missing:
            fail(f"ONNX Runtime providers {missing} are not available; this onnxruntime has {have}.")
        return list(options.ort_providers)
    return [p for p in PROVIDER_ORDER if p in have]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    package = "onnxruntime"
    module = "onnxruntime"
    extra = "onnxruntime"

    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__

    def target_device(self, options: BuildOptions) -> str:
        gpu = _GPU_PROVIDERS & set(choose_providers(options))
        return current_device() if gpu else "cpu"

    def build(self, job: BuildJob) -> BuildOutput:
        import onnxruntime as ort

        providers = choose_providers(job.options)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(job.out_dir / ARTIFACT)
        if len(job.manifest.get("files", [])) > 1:  # external data in, external data out
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", ARTIFACT + ".data")
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        if job.profile.static:  # pin the fixed axes (size, text lengths); the batch stays a range
            for axis, t in job.profile.axes.items():
                if t.min == t.max:
                    so.add_free_dimension_override_by_name(axis, int(t.opt))
        job.progress(f"optimising with {providers[0]}")
        try:  # the session saves the optimised graph; TensorRT EP engines are built at load time instead
            ort_session(
                job.onnx_path, providers=[p for p in providers if p != "TensorrtExecutionProvider"], session_options=so
            )
        except SanaDeployError as exc:  # e.g. bf16 graphs: no CPU kernels
            fail(
                f"Could not build the onnxruntime engine for {job.component} ({job.precision}): {exc}", EngineBuildError
            )
        swappable = _write_weight_map(job)
        return BuildOutput(
            ARTIFACT, {"providers": providers, "optimization": "extended", "swappable_weights": swappable}
        )

    def inspect(self, artifact: Path, meta: dict) -> dict:
        import onnx

        model = onnx.load(str(artifact), load_external_data=False)
        dims = lambda t: [d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim]  # noqa: E731
        return {
            "nodes": len(model.graph.node),
            "inputs": {i.name: dims(i) for i in model.graph.input},
            "outputs": {o.name: dims(o) for o in model.graph.output},
        }


def _write_weight_map(job: BuildJob) -> int:
    """Where the optimised graph keeps each LoRA-targetable transformer weight (``weights.json`` in the entry):
    the optimiser renames and folds initializers, so they are found again by value against the export's own map.
    Returns how many weights were found."""
    refs = read_weight_map(job.onnx_path.parent) if job.component.startswith("transformer") else None
    if not refs:
        return 0
    params = stored_weights(job.onnx_path, refs, set(refs))
    built = match_weights(params, onnx_initializers(job.out_dir / ARTIFACT))
    write_weight_map(job.out_dir, built, ARTIFACT)
    return len(built)
