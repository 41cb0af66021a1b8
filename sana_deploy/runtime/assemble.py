"""Building the pipeline's stage providers: torch modules, ONNX Runtime over plain exports, or engines.

Every backend gives the pipeline the same thing, a :class:`StageProvider` of :class:`~sana_deploy.runners.Runner`
objects; the denoiser (caption K/V split or one-graph transformer) is chosen by the provider, once, for all.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from pathlib import Path

import torch

from sana_deploy.contract import (
    ALL_COMPONENTS,
    COMPONENTS,
    CONTROLNET,
    SPLIT_TRANSFORMER,
    TRANSFORMER_CONTROL,
    VAE_ENCODER,
    VARIANT_STEP_GRAPHS,
    component_dtype,
    component_precision,
    default_export_root,
    module_of,
    parse_components,
    pipeline_components,
    torch_dtype,
)
from sana_deploy.engines import EngineCache, get_backend
from sana_deploy.errors import fail
from sana_deploy.export import SPECS, ensure_export
from sana_deploy.models.components import SanaComponents
from sana_deploy.models.config import PRESETS, TINY_PRESETS, SanaPreset, get_preset
from sana_deploy.models.controlnet import check_fits, controlnet_id, folder_config, load_controlnet
from sana_deploy.models.fp8 import to_fp8_
from sana_deploy.models.loaders import load_components, load_diffusers_folder, load_tokenizer
from sana_deploy.models.tokenizer import byte_tokenizer
from sana_deploy.runners import OrtOptions, OrtRunner, Runner, TorchRunner
from sana_deploy.runners.winograd import winograd_suits
from sana_deploy.runtime.providers import RUNTIME_BACKENDS, EngineStages, FixedStages, require_runnable

FIXED_BACKENDS = ("torch", "onnxruntime")
# The DC-AE stages (decode, and img2img/ControlNet's encode): what ``vae_backend="torch"`` serves with eager torch.
DCAE_STAGES = ("vae", VAE_ENCODER)
VAE_BACKENDS = (None, "torch")
TEXT_GRAPH = SPLIT_TRANSFORMER[0]


def default_kernels() -> str:
    """The ``sana::`` op implementation eager torch runs: Triton on a CUDA GPU with triton installed, else the
    PyTorch reference."""
    if torch.cuda.is_available():
        try:
            import triton  # noqa: F401

            return "triton"
        except ImportError:
            pass
    return "reference"


def load_model(
    model: str | Path,
    precision: str,
    random_weights: bool,
    preset: str | None,
    device: str = "cpu",
    controlnet: str | Path | None = None,
) -> SanaComponents:
    """All components on ``device``, each in its stage's dtype (the precision policy, :mod:`sana_deploy.contract`);
    with a Sana ControlNet folder, checked to fit the model, as ``components.controlnet``."""
    torch_dtype(precision)  # validates the name
    comps = load_components(model, COMPONENTS, preset=preset, random_weights=random_weights)
    if comps.tokenizer is None:
        fail(f"{model} has no tokenizer; pass a diffusers folder with tokenizer/ or a preset.")
    if controlnet is not None:
        comps.controlnet = load_controlnet(controlnet, comps.preset)
    return cast_components(comps, precision, device)


def cast_components(comps: SanaComponents, precision: str, device: str = "cpu") -> SanaComponents:
    """Each module in its stage's dtype (in place: modules are moved, not copied)."""
    for name in COMPONENTS + ((CONTROLNET,) if comps.controlnet is not None else ()):
        module, dtype = comps.get(name), component_dtype(name, precision)
        current = next(module.parameters())
        if current.dtype != dtype or current.device != torch.device(device):
            setattr(comps, name, module.to(device=device, dtype=dtype).eval())
    return comps


def use_winograd(component: str, precision: str, device: str | torch.device) -> bool:
    """Winograd convolutions (NNPACK) for the DC-AE stages in fp32 on a CPU, unless ``SANA_DEPLOY_WINOGRAD=0``."""
    return component in DCAE_STAGES and winograd_suits(device, component_dtype(component, precision))


def torch_runner(
    comps: SanaComponents, component: str, precision: str, kernels: str | None = None, winograd: bool | None = None
) -> TorchRunner:
    """Eager torch over the export spec's wrapper of the loaded module (the graph that is exported).
    ``winograd``: None (default) means :func:`use_winograd`."""
    spec = SPECS[component](comps)
    module = spec.wrap(comps)
    if winograd is None:
        winograd = use_winograd(component, precision, next(module.parameters()).device)
    return TorchRunner(
        module,
        component,
        [t.name for t in spec.inputs],
        [t.name for t in spec.outputs],
        component_precision(component, precision),
        kernels or default_kernels(),
        winograd,
    )


def without_torch_stages(names: tuple[str, ...], vae_backend: str | None) -> tuple[str, ...]:
    """``names`` less the stages ``vae_backend`` moves to eager torch (nothing to export or build for them)."""
    return tuple(c for c in names if c not in DCAE_STAGES) if vae_backend == "torch" else names


def check_vae_backend(vae_backend: str | None) -> None:
    if vae_backend not in VAE_BACKENDS:
        fail(
            f"vae_backend must be None (the pipeline's backend) or 'torch' (the DC-AE on eager PyTorch, with Winograd "
            f"convolutions on a CPU), got {vae_backend!r}."
        )


def fixed_stages(
    comps: SanaComponents,
    backend: str,
    precision: str,
    export_dir: str | Path | None = None,
    *,
    own_modules: bool = False,
    kv_cache: bool = True,
    ort_options: OrtOptions | None = None,
    kernels: str | None = None,
    variants: tuple[str, ...] = (),
    quantize: str | None = None,
    vae_backend: str | None = None,
) -> FixedStages:
    """Runners over already loaded (and cast) components: eager torch, or ONNX Runtime over their exports.

    ``quantize="fp8"`` (torch only): the transformer's (and a ControlNet's) block linear layers made FP8 in place
    (:mod:`sana_deploy.models.fp8`; FP8 tensor cores on a GPU of compute capability 8.9+, an fp32 emulation
    elsewhere). Quantized ONNX graphs are engines: ``build --quantize``.

    ``variants``: graphs of the variants to export up front too (``transformer_pag``, ``transformer_control``,
    ``controlnet``; a loaded ControlNet's two always are); the others are exported on first use when the modules
    are still at hand.

    ``vae_backend="torch"``: the DC-AE stages run on the torch module whatever ``backend`` runs the rest (on a CPU
    in fp32 it uses Winograd convolutions; whether that beats ONNX Runtime depends on the CPU, docs/RUNTIME.md).

    torch offers every component (the split and the one-graph transformer alike). onnxruntime exports what the
    pipeline runs (``kv_cache``: the split; else the one-graph transformer) into ``export_dir`` on first use, and
    with ``own_modules`` (the caller hands the modules over, as ``from_model`` does) drops the transformer and text
    encoder once exported, before the sessions load their own copy of the weights, so the process does not hold
    every weight twice (at real size Gemma-2 alone is 10 GB in fp32).
    """
    check_fixed_backend(backend)
    check_fixed_quantize(backend, quantize)
    check_vae_backend(vae_backend)
    if quantize == "fp8":
        for module in (comps.transformer, comps.controlnet):
            if module is not None:
                to_fp8_(module)
    if backend == "torch":
        runners = {c: (lambda c=c: torch_runner(comps, c, precision, kernels)) for c in ALL_COMPONENTS}
        return _with_controlnet(FixedStages(runners, vae_module=comps.vae, kv_cache=kv_cache), comps)
    root = Path(export_dir) if export_dir is not None else default_export_root(comps.model_id)
    names = tuple(dict.fromkeys(pipeline_components(kv_cache) + variant_graphs(variants, comps)))
    names = without_torch_stages(names, vae_backend)
    paths = {c: ensure_export(comps, c, precision, root)[0] for c in names}
    if own_modules:
        comps.transformer = comps.text_encoder = None
        gc.collect()
    runners: dict[str, Runner | Callable[[], Runner]] = {
        c: OrtRunner(paths[c], c, component_precision(c, precision), ort_options) for c in names
    }
    # optional stages (img2img's DC-AE encoder, the variants' graphs): exported and loaded on first use

    def ort_runner(c: str) -> Runner:
        if getattr(comps, module_of(c)) is None:  # from_model hands its transformer over once the graphs it named exist
            fail(
                f"This onnxruntime pipeline has no {c} graph, and its transformer was released after export: make it "
                f"with from_model(..., variants=({c!r},)) (generate does so for the options it is given) or "
                f"from_components."
            )
        return OrtRunner(ensure_export(comps, c, precision, root)[0], c, component_precision(c, precision), ort_options)

    optional = (VAE_ENCODER, TEXT_GRAPH, *VARIANT_STEP_GRAPHS, *((CONTROLNET,) if comps.controlnet is not None else ()))
    runners.update({c: (lambda c=c: ort_runner(c)) for c in optional if c not in runners})
    if vae_backend == "torch":
        runners.update({c: (lambda c=c: torch_runner(comps, c, precision, kernels)) for c in DCAE_STAGES})
    # the exact tiled decode (large images) runs the torch DC-AE (small next to the others: kept)
    return _with_controlnet(FixedStages(runners, vae_module=comps.vae, kv_cache=kv_cache), comps)


def _with_controlnet(provider: FixedStages, comps: SanaComponents) -> FixedStages:
    provider.controlnet_layers = comps.controlnet.config.num_layers if comps.controlnet is not None else 0
    return provider


def variant_graphs(variants: tuple[str, ...] | str, comps: SanaComponents) -> tuple[str, ...]:
    """The graphs the named variants run (with the caption K/V graph they share), and a loaded ControlNet's."""
    names = list(parse_components(variants)) if variants else []
    if comps.controlnet is not None:
        names += [TRANSFORMER_CONTROL, CONTROLNET]
    if any(n in VARIANT_STEP_GRAPHS for n in names):
        names.insert(0, TEXT_GRAPH)
    return tuple(dict.fromkeys(names))


def check_fixed_backend(backend: str) -> None:
    if backend not in FIXED_BACKENDS:
        fail(f"from_model runs backend torch or onnxruntime, got {backend!r}; engines come from from_engines().")


def check_fixed_quantize(backend: str, quantize: str | None) -> None:
    """from_model/from_components quantize only on torch, and only to FP8 (dynamic scales, nothing to calibrate)."""
    if quantize is None:
        return
    if quantize != "fp8":
        fail(
            f"quantize={quantize!r} on backend {backend}: int8 needs calibrated graphs. Run `sana-deploy build "
            f"--backend onnxruntime|openvino --quantize int8` and use from_engines(), or quantize='fp8' on torch."
        )
    if backend != "torch":
        fail(
            f"quantize='fp8' runs on backend torch (FP8 layers in PyTorch); for {backend} build FP8 engines: "
            f"`sana-deploy build --backend tensorrt|tensorrt-rtx|aoti --quantize fp8`."
        )


def tokenizer_and_preset(model: str | Path, random_weights: bool) -> tuple[object, SanaPreset, str]:
    """What the pipeline needs besides the engines: the tokenizer, the preset and the model id (no weights)."""
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
    return load_tokenizer(path), comps.preset, comps.model_id


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
    kv_cache: bool = True,
    controlnet: str | Path | None = None,
    vae_backend: str | None = None,
) -> tuple[EngineStages, object, SanaPreset, str]:
    """An :class:`EngineStages` over ``engine_dir``; misses follow ``on_miss``, the fallback is made on first use.
    ``controlnet``: a ControlNet folder; its engines are looked up (and built) under its folder's name.
    ``vae_backend="torch"``: the DC-AE stages run on its torch module (loaded on first use), not on engines."""
    check_vae_backend(vae_backend)
    if backend not in RUNTIME_BACKENDS or backend == "torch":
        fail(f"Engine backend must be one of auto, onnxruntime, aoti, tensorrt, tensorrt-rtx; got {backend!r}.")
    chosen, _why = get_backend(backend)  # installed? (clear error otherwise); auto: one whose engines run here
    require_runnable(chosen.name)
    if fallback not in FIXED_BACKENDS:
        fail(f"Fallback backend must be torch or onnxruntime, got {fallback!r}.")
    tokenizer, preset, model_id = tokenizer_and_preset(model, random_weights)
    fb_precision = precision if precision in ("fp16", "bf16") else "fp32"  # None, fp32, int8/fp8: fp32 torch

    def make_fallback() -> FixedStages:
        comps = load_model(model, fb_precision, random_weights, None, device, controlnet)
        return fixed_stages(comps, fallback, fb_precision, own_modules=True, kv_cache=kv_cache)

    build_kwargs = dict(build_kwargs or {})
    build_kwargs["random_weights"] = random_weights or build_kwargs.get("random_weights", False)
    component_models, controlnet_layers = {}, 0
    if controlnet is not None:  # checked now (it fits the model); its weights load when a build or fallback needs them
        cfg = folder_config(controlnet)
        check_fits(cfg, preset, str(controlnet))
        build_kwargs["controlnet"] = str(Path(controlnet).resolve())
        component_models[CONTROLNET], controlnet_layers = controlnet_id(controlnet), cfg.num_layers
    provider = EngineStages(
        EngineCache(engine_dir),
        model_id,
        on_miss,
        backend,
        precision,
        make_fallback,
        build_kwargs,
        kv_cache,
        build_backend=chosen.name,
        component_models=component_models,
    )
    provider.controlnet_layers = controlnet_layers
    if vae_backend == "torch":

        @functools.cache  # the DC-AE alone, loaded once for both stages (first use is under the provider's lock)
        def dcae() -> SanaComponents:
            comps = load_components(model, ("vae",), random_weights=random_weights)
            comps.vae = comps.vae.to(device=device, dtype=component_dtype("vae", fb_precision)).eval()
            return comps

        provider.overrides = {c: (lambda c=c: torch_runner(dcae(), c, fb_precision)) for c in DCAE_STAGES}
    return provider, tokenizer, preset, model_id


__all__ = [
    "FIXED_BACKENDS",
    "cast_components",
    "engine_provider",
    "fixed_stages",
    "load_model",
    "tokenizer_and_preset",
    "torch_runner",
]
