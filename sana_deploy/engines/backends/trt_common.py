"""Engine building shared by ``tensorrt`` (10.x/11.x) and ``tensorrt-rtx``: same Python API, different module.

Both build a strongly-typed network from the ONNX parser (precision lives in the ONNX: TensorRT 11 has no
precision flags), one optimisation profile per engine, the builder optimisation level,
a workspace limit, a shared timing cache merged under a file lock, and optionally a weight-stripped plan
(``STRIP_PLAN`` + ``REFIT_IDENTICAL``) refitted from the ONNX at load.

The ``sana`` local functions (``sana.LinearAttention``, ``sana.MixFFN``) are kept as plugin nodes only when the
``sana`` plugins are registered; otherwise they are inlined into their bodies before parsing. (Inlining is
needed, not just a fallback: tensorrt-rtx 1.7's parser has a built-in ``LinearAttention`` importer that claims
the node by op type and rejects it, "q_num_heads must be positive".)
"""

from __future__ import annotations

import struct
from pathlib import Path
from types import ModuleType

import onnx
import onnx.inliner
from filelock import FileLock

from sana_deploy.engines.backends.base import BuildJob, BuildOutput, EngineBuildError
from sana_deploy.engines.profiles import ShapeTuple
from sana_deploy.errors import fail
from sana_deploy.export.onnx_functions import DOMAIN
from sana_deploy.fileio import write_atomic
from sana_deploy.runners.tensorrt import make_logger
from sana_deploy.runners.weights import read_weight_map

PLAN_FILE = "engine.plan"
PLUGIN_NAMES = ("LinearAttention", "MixFFN")


def sana_plugins_registered(trt: ModuleType) -> bool:
    """Whether every ``sana`` plugin creator is in the registry (then the ONNX keeps its plugin nodes)."""
    registry = trt.get_plugin_registry()
    try:
        return all(registry.get_creator(n, "1", DOMAIN) is not None for n in PLUGIN_NAMES)
    except (AttributeError, TypeError):  # no V3 lookup by namespace in this build
        return False


def onnx_for_parser(onnx_path: Path, keep_plugin_nodes: bool) -> bytes:
    """The serialized ONNX to parse: as exported, or with the ``sana`` local functions inlined.

    External data stays external (the parser is given the original path to resolve it).
    """
    model = onnx.load(str(onnx_path), load_external_data=False)
    if not keep_plugin_nodes and model.functions:
        model = onnx.inliner.inline_local_functions(model)
        del model.functions[:]
        kept = [o for o in model.opset_import if o.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    return model.SerializeToString()


def parse_network(
    trt: ModuleType, builder, logger, onnx_path: Path, keep_plugin_nodes: bool, prefer_aot_plugins: bool = False
):
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # always on (and ignored) in TensorRT 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if prefer_aot_plugins and hasattr(trt.NetworkDefinitionCreationFlag, "PREFER_AOT_PYTHON_PLUGINS"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_for_parser(onnx_path, keep_plugin_nodes), str(onnx_path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        fail(f"The ONNX parser rejected {onnx_path}: {'; '.join(errors) or logger.errors}", EngineBuildError)
    return network, parser


def add_profile(builder, config, network, shapes: dict[str, ShapeTuple]) -> None:
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if sorted(names) != sorted(shapes):
        fail(f"Engine inputs {names} do not match the profile's {sorted(shapes)}; re-export.", EngineBuildError)
    profile = builder.create_optimization_profile()
    for name, s in shapes.items():
        profile.set_shape(name, s.min, s.opt, s.max)
    config.add_optimization_profile(profile)


def configure(trt: ModuleType, config, job: BuildJob) -> None:
    o = job.options
    if o.opt_level is not None:
        config.builder_optimization_level = o.opt_level
    if o.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, o.workspace_mb << 20)
    if o.strip_weights:
        config.set_flag(trt.BuilderFlag.STRIP_PLAN)
        config.set_flag(trt.BuilderFlag.REFIT_IDENTICAL)


def bindings(network) -> list[dict]:
    """I/O tensors of the network as built: name, mode, dtype, shape (-1 = dynamic)."""
    out = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        out.append({"name": t.name, "mode": "input", "dtype": _dtype(t.dtype), "shape": list(t.shape)})
    for i in range(network.num_outputs):
        t = network.get_output(i)
        out.append({"name": t.name, "mode": "output", "dtype": _dtype(t.dtype), "shape": list(t.shape)})
    return out


def _dtype(dt) -> str:  # noqa: ANN001
    return str(dt).split(".")[-1].lower()


# --- timing cache -----------------------------------------------------------------------------------------------
def load_timing_cache(config, path: Path | None):
    if path is None:
        return None
    with FileLock(str(path) + ".lock"):
        data = path.read_bytes() if path.exists() else b""
    cache = config.create_timing_cache(data)
    if cache is None:  # unreadable (other version): start empty; the merge below replaces the file
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    return cache


def merge_timing_cache(config, cache, path: Path | None) -> None:
    """Merge this build's timings into the shared file, under its lock, written atomically."""
    if path is None or cache is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        current = config.create_timing_cache(path.read_bytes() if path.exists() else b"")
        if current is None or not current.combine(cache, False):
            current = cache
        write_atomic(path, bytes(memoryview(current.serialize())))


# --- the build --------------------------------------------------------------------------------------------------
def build_plan(
    trt: ModuleType, job: BuildJob, keep_plugin_nodes: bool, extra_config=None, prefer_aot_plugins: bool = False
) -> BuildOutput:
    """Parse, configure, build and write ``engine.plan`` into the job's staging folder."""
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    if builder is None:
        fail(f"Could not create a TensorRT builder: {logger.errors}", EngineBuildError)
    job.progress(f"parsing {job.onnx_path.name} ({'plugin nodes' if keep_plugin_nodes else 'sana functions inlined'})")
    network, _parser = parse_network(trt, builder, logger, job.onnx_path, keep_plugin_nodes, prefer_aot_plugins)
    config = builder.create_builder_config()
    configure(trt, config, job)
    refittable = mark_lora_refittable(trt, network, config, job)
    if extra_config is not None:
        extra_config(config)
    add_profile(builder, config, network, job.input_shapes)
    cache = load_timing_cache(config, job.timing_cache)
    job.progress("building")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        fail(
            f"TensorRT could not build {job.component} [{job.profile.name}]: {' | '.join(logger.errors)}",
            EngineBuildError,
        )
    merge_timing_cache(config, cache, job.timing_cache)
    path = job.out_dir / PLAN_FILE
    with open(path, "wb") as f:
        f.write(memoryview(serialized))
    return BuildOutput(
        PLAN_FILE,
        {
            "bindings": bindings(network),
            "plugin_nodes": keep_plugin_nodes,
            "num_layers": network.num_layers,
            "plan_header": plan_header(path),
            "refittable_weights": refittable,
        },
    )


def mark_lora_refittable(trt: ModuleType, network, config, job: BuildJob) -> dict[str, str]:  # noqa: ANN001
    """Mark the transformer's LoRA-targetable weights refittable (``REFIT_INDIVIDUAL``); the rest stay constant,
    so the builder still folds them. Returns ``{parameter name: weights name}`` of the weights marked.

    The weights are named after the ONNX initializers (the export's weight map says which initializer holds which
    parameter, and in which layout). A weight-stripped plan (``strip_weights``) refits identical weights only, so it
    is not marked.
    """
    o = job.options
    if not (o.lora_refit and job.component.startswith("transformer")) or o.strip_weights:
        return {}
    if "+" in job.device:
        # TensorRT-RTX compiles refittable weights for one GPU architecture only, with CUDA present (its Myelin
        # code generator checks both); a multi-target build, such as any build on a machine without a GPU, keeps
        # its weights constant and LoRA swaps on it are refused with a message.
        job.progress(f"LoRA weights not refittable: {job.device} is a multi-architecture build")
        return {}
    refs = read_weight_map(job.onnx_path.parent) or {}
    marked = mark_refittable(network, refs)
    if marked:
        config.set_flag(trt.BuilderFlag.REFIT_INDIVIDUAL)
    job.progress(f"{len(marked)} of {len(refs)} LoRA-targetable weights marked refittable")
    return marked


def mark_refittable(network, refs: dict) -> dict[str, str]:  # noqa: ANN001 (INetworkDefinition)
    """Mark each weight of ``refs`` (a weight map) refittable in the parsed network, by its initializer's name;
    returns ``{parameter name: weights name}`` of those the network has."""
    return {n: r.name for n, r in refs.items() if network.mark_weights_refittable(r.name)}


# --- reading a plan without CUDA --------------------------------------------------------------------------------
def plan_header(path: Path) -> dict:
    """Magic and library version from a plan's header, read without deserializing (no CUDA needed).

    Layout observed on tensorrt-rtx 1.7 plans (checked in tests against the running library): 4-byte magic
    (``vtrt``), then at byte 24 one byte each for major, minor, patch, build — the fields
    ``trtexec --getPlanVersionOnly`` reports. Not verified on standard TensorRT plans here.
    """
    with open(path, "rb") as f:
        head = f.read(28)
    if len(head) < 28:
        return {"magic": None, "version": None}
    major, minor, patch, build = struct.unpack_from("4B", head, 24)
    return {"magic": head[:4].decode("ascii", "replace"), "version": f"{major}.{minor}.{patch}.{build}"}


def engine_io(engine) -> dict:
    """Bindings and per-profile shapes as the deserialized engine reports them."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    io, profiles = [], []
    for n in names:
        io.append({"name": n, "mode": _dtype(engine.get_tensor_mode(n)), "dtype": _dtype(engine.get_tensor_dtype(n))})
    for p in range(engine.num_optimization_profiles):
        shapes = {}
        for n in names:
            if str(engine.get_tensor_mode(n)).endswith("INPUT"):
                shapes[n] = [list(s) for s in engine.get_tensor_profile_shape(n, p)]
        profiles.append(shapes)
    return {"bindings": io, "profiles": profiles}
