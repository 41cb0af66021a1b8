"""``sana-deploy export-triton``: a Triton Inference Server model repository for one Sana model.

Layout (one model per engine, plus the orchestrating pipeline)::

    <repo>/text_encoder/{config.pbtxt, 1/model.onnx | 1/model.plan | 1/model.py}
    <repo>/transformer_text/...                  caption K/V once per request (the runtime's split)
    <repo>/transformer_cached[_<profile>]/...    the per-step graph; one per profile for TensorRT plans
    <repo>/vae[_<profile>]/...
    <repo>/sana_pipeline/{config.pbtxt, warmup/, 1/{model.py, pipeline.json, tokenizer/[, onnx/]}}

The components are the product pipeline's (``sana_deploy.contract.PIPELINE_COMPONENTS``), their ONNX graphs come
from ``sana_deploy.export.ensure_export`` (the one export path), and ``sana_pipeline`` runs
``SanaDeployPipeline`` itself over runners that call these models (``sana_deploy.serve.triton.runner``).

``engine_backend``: ``tensorrt`` (plans from the engine cache, ``platform: tensorrt_plan``), ``onnxruntime``
(``platform: onnxruntime_onnx``) or ``python`` (the same ONNX graphs run by ONNX Runtime inside Triton's Python
backend: for servers without the onnxruntime backend, such as PyTriton's). ``engine_mode``: ``bls`` (the pipeline
calls those models) or ``onnxruntime`` (the pipeline runs the ONNX graphs itself; no per-engine models needed).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sana_deploy.contract import PIPELINE_COMPONENTS, default_export_root, parse_profiles
from sana_deploy.errors import SanaDeployError, fail
from sana_deploy.models.config import VAE_SCALE
from sana_deploy.serve.triton.io import engine_io
from sana_deploy.serve.triton.pbtxt import Enum, render, validate

ENGINE_BACKENDS = ("tensorrt", "onnxruntime", "python")
ENGINE_MODES = ("bls", "onnxruntime")
COMPONENTS = PIPELINE_COMPONENTS
PER_PROFILE = ("transformer_cached", "vae")  # inputs depend on the image size: one TensorRT plan per profile
_PIPELINE_MODEL_PY = "from sana_deploy.serve.triton.pipeline_model import TritonPythonModel  # noqa: F401\n"
_ORT_MODEL_PY = "from sana_deploy.serve.triton.ort_model import TritonPythonModel  # noqa: F401\n"


@dataclass(frozen=True)
class TritonModel:
    name: str
    path: Path
    platform: str  # "tensorrt_plan", "onnxruntime_onnx" or "python"


def export_triton_repository(
    repo_dir: str | Path,
    model: str = "sana-tiny",
    profiles: list[int] | None = None,
    engine_backend: str = "tensorrt",
    engine_mode: str = "bls",
    engine_dir: str | Path = "engines",
    onnx_dir: str | Path | None = None,
    max_batch: int = 1,
    instance_kind: str = "KIND_GPU",
    random_weights: bool = False,
    warmup_steps: int = 2,
    overwrite: bool = False,
) -> list[TritonModel]:
    """Write the repository (to a temporary sibling, validated, then renamed into place)."""
    from sana_deploy.engines.profiles import Profile
    from sana_deploy.models.loaders import load_components

    if engine_backend not in ENGINE_BACKENDS:
        fail(f"engine backend {engine_backend!r}: choose one of {', '.join(ENGINE_BACKENDS)}.")
    if engine_mode not in ENGINE_MODES:
        fail(f"engine mode {engine_mode!r}: choose one of {', '.join(ENGINE_MODES)}.")
    repo = Path(repo_dir)
    if repo.exists() and any(repo.iterdir()) and not overwrite:
        fail(f"{repo} already exists and is not empty; pass --overwrite or choose another folder.")
    components = load_components(model, random_weights=random_weights)
    profile_objs = [Profile.from_base(b, max_batch=max_batch) for b in parse_profiles(profiles or [1024])]

    repo.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{repo.name}.", dir=repo.parent))
    try:
        onnx = _onnx_graphs(components, onnx_dir) if engine_backend != "tensorrt" or engine_mode != "bls" else {}
        models, routes = [], {}
        if engine_mode == "bls":
            writer = _EngineWriter(tmp, components, engine_backend, instance_kind, onnx, Path(engine_dir))
            models, routes = writer.write_all(profile_objs)
        models.append(_write_pipeline(tmp, components, profile_objs, engine_mode, routes, onnx, warmup_steps))
        for m in models:
            validate(m.path / "config.pbtxt")
        if repo.exists():
            shutil.rmtree(repo)
        tmp.rename(repo)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [TritonModel(m.name, repo / m.name, m.platform) for m in models]


def _onnx_graphs(components, onnx_dir: str | Path | None) -> dict[str, Path]:
    """fp32 model.onnx per component, through ``ensure_export`` into ``onnx_dir`` (default: the model's export
    folder, ``export/<model>``): reused when it holds an export of these weights, exported otherwise."""
    from sana_deploy.export import ensure_export

    root = Path(onnx_dir) if onnx_dir else default_export_root(components.model_id)
    return {c: ensure_export(components, c, "fp32", root)[0] for c in COMPONENTS}


class _EngineWriter:
    def __init__(self, repo: Path, components, backend: str, kind: str, onnx: dict, engine_dir: Path) -> None:
        self.repo, self.components, self.backend, self.kind = repo, components, backend, kind
        self.onnx, self.engine_dir = onnx, engine_dir

    def write_all(self, profiles: list) -> tuple[list[TritonModel], dict]:
        """Every component's model(s); ``routes``: component -> [{"name", "latent_h", "latent_w"}] (the model
        serving each profile's latent range; size-free components have one model and no range)."""
        models, routes = [], {}
        for component in COMPONENTS:
            if self.backend == "tensorrt" and component in PER_PROFILE:  # one plan per profile
                routes[component] = []
                for p in profiles:
                    name = f"{component}_{p.name}"
                    models.append(self._write(component, name, p, [p]))
                    routes[component].append({"name": name, **_latent_range(p)})
            else:  # one model covers every profile (dynamic ONNX, or a size-free plan)
                models.append(self._write(component, component, profiles[-1], profiles))
                routes[component] = [{"name": component}]
        return models, routes

    def _write(self, component: str, name: str, profile, profiles: list) -> TritonModel:
        from sana_deploy.export import SPECS

        spec = SPECS[component](self.components)
        batched = batch_leading(spec)
        inputs, outputs = engine_io(spec, batched=batched)
        max_batch = max(p.axes["batch"].max for p in profiles) if batched else 0
        version = self.repo / name / "1"
        version.mkdir(parents=True)
        config = {"name": name, "max_batch_size": max_batch, "input": inputs, "output": outputs}
        if self.backend == "tensorrt":
            shutil.copyfile(self._plan(component, profile), version / "model.plan")
            config |= {"platform": "tensorrt_plan", "default_model_filename": "model.plan"}
            # The plan holds one optimisation profile (this resolution); instances are bound to it.
            config["instance_group"] = [{"kind": Enum("KIND_GPU"), "count": 1, "profile": ["0"]}]
            config["parameters"] = [
                {"key": "execution_context_allocation_strategy", "value": {"string_value": "ON_PROFILE_CHANGE"}}
            ]
        elif self.backend == "onnxruntime":
            _copy_onnx(self.onnx[component], version)
            config |= {"platform": "onnxruntime_onnx", "default_model_filename": "model.onnx"}
            config["instance_group"] = [{"kind": Enum(self.kind), "count": 1}]
        else:
            _copy_onnx(self.onnx[component], version)
            (version / "model.py").write_text(_ORT_MODEL_PY)
            config |= {"backend": "python"}
            config["instance_group"] = [{"kind": Enum("KIND_CPU"), "count": 1}]
        if batched and component != "text_encoder":  # Triton merges same-shape requests only: one size per batch
            config["dynamic_batching"] = {"max_queue_delay_microseconds": 2000}
        config["model_warmup"] = [_engine_warmup(spec, p, batched) for p in profiles]
        (self.repo / name / "config.pbtxt").write_text(render(config) + "\n")
        platform = config.get("platform", "python")
        return TritonModel(name, self.repo / name, platform)

    def _plan(self, component: str, profile) -> Path:
        from sana_deploy.engines import EngineCache

        cache = EngineCache(self.engine_dir)
        side = profile.axes["latent_h"].opt * VAE_SCALE
        entry = cache.find(self.components.model_id, component, side, side, 1, backend="tensorrt")
        if entry is None:
            fail(
                f"No TensorRT {component} engine for profile {profile.name} in {self.engine_dir}; run "
                f"`sana-deploy build --backend tensorrt --profiles {profile.base}` on the target GPU first.",
                SanaDeployError,
            )
        return Path(entry.path)


def batch_leading(spec) -> bool:
    """Whether every tensor of the graph has the batch as its first axis (Triton's implicit batch dimension).
    The caption K/V ``(layers, 2, batch, text_len, C)`` does not, so the split transformer graphs are served with
    ``max_batch_size: 0`` and explicit batch dims."""
    return all(t.shape and t.shape[0] == "batch" for t in (*spec.inputs, *spec.outputs))


def _io_names(components, component: str) -> dict:
    """The graph's input and output names, and the inputs a BLS caller sends as ``(batch, 1)``."""
    from sana_deploy.export import SPECS

    spec = SPECS[component](components)
    scalars = [t.name for t in spec.inputs if batch_leading(spec) and len(t.shape) == 1]
    return {"inputs": [t.name for t in spec.inputs], "outputs": [t.name for t in spec.outputs], "reshape": scalars}


def _latent_range(profile) -> dict:
    return {axis: [profile.axes[axis].min, profile.axes[axis].max] for axis in ("latent_h", "latent_w")}


def _engine_warmup(spec, profile, batched: bool = True) -> dict:
    """A zero-filled request at the profile's opt shapes (BLS cannot run while models load, so engines warm up)."""
    from sana_deploy.serve.triton.io import DTYPES

    sizes = {axis: t.opt for axis, t in profile.axes.items()}
    inputs = []
    for t in spec.inputs:
        shape = t.resolve(sizes)
        dims = (list(shape[1:]) if batched else list(shape)) or [1]
        inputs.append({"key": t.name, "value": {"data_type": Enum(DTYPES[t.dtype]), "dims": dims, "zero_data": True}})
    return {"name": f"warmup_{profile.name}", "batch_size": sizes["batch"] if batched else 1, "inputs": inputs}


def _copy_onnx(path: Path, folder: Path) -> None:
    """An export's graph and its external weights (``model.onnx.data``: the transformer graphs always have one)
    into ``folder`` as ``model.onnx`` / ``model.onnx.data``; real copies, as the graph names its data file."""
    path = Path(path)
    shutil.copyfile(path, folder / "model.onnx")
    data = path.with_name(path.name + ".data")
    if data.is_file():
        shutil.copyfile(data, folder / "model.onnx.data")


def _write_pipeline(repo: Path, components, profiles: list, mode: str, routes: dict, onnx: dict, steps: int):
    preset = components.preset
    version = repo / "sana_pipeline" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(_PIPELINE_MODEL_PY)
    components.tokenizer.save_pretrained(version / "tokenizer")
    if mode == "onnxruntime":
        for c, path in onnx.items():
            (version / "onnx" / c).mkdir(parents=True)
            _copy_onnx(path, version / "onnx" / c)
    side = preset.resolution if any(p.base == preset.resolution for p in profiles) else profiles[0].base
    meta = {
        "model": components.model_id,
        "engine_mode": mode,
        "preset": preset_to_json(preset),
        "sampler": "flow-dpm-solver",
        "default_size": [side, side],
        "num_inference_steps": 20,
        "guidance_scale": 4.5,
        "components": list(COMPONENTS),
        "models": routes,  # component -> [{"name", "latent_h"?, "latent_w"?}] (bls)
        "io": {c: _io_names(components, c) for c in COMPONENTS},
    }
    (version / "pipeline.json").write_text(json.dumps(meta, indent=2))
    scalar = lambda name, dtype, optional=True: {  # noqa: E731
        "name": name,
        "data_type": Enum(dtype),
        "dims": [1],
        "optional": optional,
    }
    config = {
        "name": "sana_pipeline",
        "backend": "python",
        "max_batch_size": 0,
        "input": [
            scalar("prompt", "TYPE_STRING", optional=False),
            scalar("negative_prompt", "TYPE_STRING"),
            scalar("height", "TYPE_INT32"),
            scalar("width", "TYPE_INT32"),
            scalar("num_inference_steps", "TYPE_INT32"),
            scalar("guidance_scale", "TYPE_FP32"),
            scalar("seed", "TYPE_INT64"),
            scalar("sampler", "TYPE_STRING"),
            scalar("resolution_binning", "TYPE_BOOL"),
        ],
        "output": [
            {"name": "image", "data_type": Enum("TYPE_UINT8"), "dims": [-1, -1, 3]},
            # the final latents (1, 32, h, w) before the DC-AE; requesting only these skips the decode
            {"name": "latent", "data_type": Enum("TYPE_FP32"), "dims": [-1, -1, -1, -1]},
        ],
        "instance_group": [{"kind": Enum("KIND_CPU"), "count": 1}],
        # In BLS mode the engine models warm up instead: BLS requests fail while the server is still loading.
        "model_warmup": _warmup(repo / "sana_pipeline" / "warmup", profiles, steps) if mode != "bls" else None,
    }
    (repo / "sana_pipeline" / "config.pbtxt").write_text(render(config) + "\n")
    return TritonModel("sana_pipeline", repo / "sana_pipeline", "python")


def preset_to_json(preset) -> dict:
    """What ``sana_pipeline`` needs of the model (no weights): the preset, as JSON."""
    return {
        "name": preset.name,
        "transformer": dataclasses.asdict(preset.transformer),
        "vae": preset.vae,
        "text_encoder": preset.text_encoder,
        "flow_shift": preset.flow_shift,
        "dtype": preset.dtype,
    }


def preset_from_json(data: dict):  # noqa: ANN201 (SanaPreset)
    from sana_deploy.models.config import SanaPreset, TransformerConfig

    return SanaPreset(
        name=data["name"],
        transformer=TransformerConfig(**data["transformer"]),
        vae=data["vae"],
        text_encoder=data["text_encoder"],
        flow_shift=data["flow_shift"],
        dtype=data["dtype"],
    )


def _warmup(folder: Path, profiles: list, steps: int) -> list[dict]:
    """One warm-up request per profile (its base size), so first-request latency is paid at load time."""
    if steps <= 0:
        return []
    folder.mkdir(parents=True)
    prompt = b"warm-up"
    (folder / "prompt").write_bytes(struct.pack("<I", len(prompt)) + prompt)  # Triton's BYTES serialisation
    (folder / "steps").write_bytes(struct.pack("<i", steps))
    entries = []
    for p in profiles:
        side = p.axes["latent_h"].opt * VAE_SCALE
        (folder / f"side_{side}").write_bytes(struct.pack("<i", side))
        file = lambda key, dtype, path: {  # noqa: E731
            "key": key,
            "value": {"data_type": Enum(dtype), "dims": [1], "input_data_file": path},
        }
        entries.append(
            {
                "name": f"warmup_{p.name}",
                "batch_size": 1,
                "inputs": [
                    file("prompt", "TYPE_STRING", "prompt"),
                    file("height", "TYPE_INT32", f"side_{side}"),
                    file("width", "TYPE_INT32", f"side_{side}"),
                    file("num_inference_steps", "TYPE_INT32", "steps"),
                ],
            }
        )
    return entries
