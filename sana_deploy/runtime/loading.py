"""Building the pipeline's stage providers: torch modules, our ONNX Runtime sessions, or engines from a cache."""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from sana_deploy.errors import fail
from sana_deploy.models.components import COMPONENTS, SanaComponents, torch_dtype
from sana_deploy.runtime.providers import RUNTIME_BACKENDS, EngineStages, FixedStages, require_runnable
from sana_deploy.runtime.stages import Stage, torch_stage

FIXED_BACKENDS = ("torch", "onnxruntime")


def component_dtype(component: str, precision: str) -> torch.dtype:
    """The transformer runs in ``precision``; DC-AE and Gemma-2 never in fp16 (reference §2, §3): fp32 then."""
    if component != "transformer" and precision == "fp16":
        return torch.float32
    return torch_dtype(precision)


def load_model(
    model: str | Path, precision: str, random_weights: bool, preset: str | None, device: str = "cpu"
) -> SanaComponents:
    """All components in fp32 on ``device``; :func:`cast_components` applies the precision policy per stage."""
    from sana_deploy.models.loaders import load_components

    torch_dtype(precision)  # validates the name
    comps = load_components(model, COMPONENTS, preset=preset, random_weights=random_weights)
    if comps.tokenizer is None:
        fail(f"{model} has no tokenizer; pass a diffusers folder with tokenizer/ or a preset.")
    return cast_components(comps, precision, device)


def cast_components(comps: SanaComponents, precision: str, device: str = "cpu") -> SanaComponents:
    """Each module in its stage's dtype (in place: modules are moved, not copied)."""
    for name in COMPONENTS:
        module, dtype = comps.get(name), component_dtype(name, precision)
        current = next(module.parameters())
        if current.dtype != dtype or current.device != torch.device(device):
            setattr(comps, name, module.to(device=device, dtype=dtype).eval())
    return comps


def load_fixed_stages(
    model: str | Path,
    backend: str,
    precision: str,
    export_dir: str | Path | None,
    random_weights: bool,
    preset: str | None,
    device: str = "cpu",
) -> tuple[FixedStages, SanaComponents]:
    """torch stages, or ONNX Runtime sessions over ``export_dir/<precision>/<component>/model.onnx``."""
    check_fixed_backend(backend)
    comps = load_model(model, precision, random_weights, preset, device)
    return fixed_stages(comps, backend, precision, export_dir, own_modules=True), comps


def fixed_stages(
    comps: SanaComponents,
    backend: str,
    precision: str,
    export_dir: str | Path | None = None,
    *,
    own_modules: bool = False,
) -> FixedStages:
    """Stages over already loaded (and cast) components.

    ``own_modules``: the caller hands the modules over (``from_model``). With onnxruntime the transformer and text
    encoder modules are then dropped once exported, before the sessions load their own copy of the weights, so
    the process does not hold every weight twice (at real size Gemma-2 alone is 10 GB in fp32).
    """
    if backend == "torch":
        stages = {c: torch_stage(comps, c, precision) for c in COMPONENTS}
        return FixedStages(stages, vae_module=comps.vae)
    from sana_deploy.export import ensure_export
    from sana_deploy.export.exporter import default_export_root
    from sana_deploy.runtime.ort import ort_stage

    root = Path(export_dir) if export_dir is not None else default_export_root(comps)
    paths = {c: ensure_export(comps, c, precision, root)[0] for c in COMPONENTS}
    if own_modules:
        comps.transformer = comps.text_encoder = None
        gc.collect()
    stages: dict[str, Stage] = {c: ort_stage(paths[c], c, precision) for c in COMPONENTS}
    # the exact tiled decode (large images) runs the torch DC-AE (small next to the others: kept)
    return FixedStages(stages, vae_module=comps.vae)


def check_fixed_backend(backend: str) -> None:
    if backend not in FIXED_BACKENDS:
        fail(f"from_model runs backend torch or onnxruntime, got {backend!r}; engines come from from_engines().")


def _tokenizer_and_preset(model: str | Path, random_weights: bool):  # noqa: ANN202
    """What the pipeline needs besides the engines: the tokenizer and the preset (no weights loaded)."""
    from sana_deploy.models.config import PRESETS, TINY_PRESETS, get_preset
    from sana_deploy.models.loaders import load_diffusers_folder
    from sana_deploy.models.tokenizer import byte_tokenizer

    key = str(model)
    if key.lower() in PRESETS and not Path(key).exists():
        p = get_preset(key)
        if p.name not in TINY_PRESETS and not random_weights:
            fail(
                f"Engines of {p.name} need its tokenizer: pass the diffusers folder as --model (the one the engines "
                f"were built from), or --random-weights for engines built with random weights."
            )
        return byte_tokenizer(), p, p.name
    path = Path(model)
    if not path.is_dir():
        fail(f"--model {model!r} must be a preset or the diffusers folder the engines were built from.")
    comps = load_diffusers_folder(path, components=())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    tokenizer.padding_side = "right"
    return tokenizer, comps.preset, comps.model_id


def engine_provider(
    engine_dir: str | Path,
    model: str | Path,
    backend: str,
    precision: str | None,
    on_miss: str,
    fallback: str,
    random_weights: bool,
    device: str = "cpu",
    build_kwargs: dict | None = None,
):  # noqa: ANN201
    """An :class:`EngineStages` over ``engine_dir``; misses follow ``on_miss``, the fallback is made on first use."""
    from sana_deploy.engines import EngineCache, get_backend

    if backend not in RUNTIME_BACKENDS or backend == "torch":
        fail(f"Engine backend must be one of auto, onnxruntime, aoti, tensorrt, tensorrt-rtx; got {backend!r}.")
    if backend != "auto":
        get_backend(backend)  # installed? (clear error otherwise)
    require_runnable(backend)
    if fallback not in FIXED_BACKENDS:
        fail(f"Fallback backend must be torch or onnxruntime, got {fallback!r}.")
    tokenizer, preset, model_id = _tokenizer_and_preset(model, random_weights)
    fb_precision = precision or "fp32"

    def make_fallback() -> FixedStages:
        return load_fixed_stages(model, fallback, fb_precision, None, random_weights, None, device)[0]

    build_kwargs = dict(build_kwargs or {})
    if random_weights:
        build_kwargs["random_weights"] = True
    provider = EngineStages(EngineCache(engine_dir), model_id, on_miss, backend, precision, make_fallback, build_kwargs)
    return provider, tokenizer, preset, model_id
