"""``build_engines``: export when needed, then one engine per (component, profile), through the cache.

A build is ``SaveEngine(EngineFromOnnx(backend, job), cache, meta)`` under the key's file lock; a valid entry with
the same key is a hit and nothing is built. Components whose inputs do not depend on resolution (the text encoder)
get one engine for all profiles that share a batch range. A build that fails removes its staging folder; before
building, leftovers of killed builds and finished background builds are removed (``EngineCache.clean_leftovers``).
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sana_deploy.contract import (
    CONTROLNET,
    SPLIT_TRANSFORMER,
    TRANSFORMER_CONTROL,
    VAE_ENCODER,
    default_export_root,
    export_dir,
    model_dirname,
    module_of,
    parse_components,
    parse_profiles,
    pipeline_components,
    torch_dtype,
)
from sana_deploy.engines.backends import Backend, BuildJob, BuildOptions, get_backend, not_runnable_note
from sana_deploy.engines.cache import EngineCache, sha256_file
from sana_deploy.engines.lazy import EngineFromOnnx, SaveEngine
from sana_deploy.engines.profiles import Profile, check_max_batch
from sana_deploy.engines.quantized import quant_flags, quant_options, quantized_export, split_precision
from sana_deploy.engines.records import CacheKey, EngineEntry, check_model_dir, is_plain_name
from sana_deploy.errors import fail
from sana_deploy.export import ensure_export, load_manifest
from sana_deploy.models.components import SanaComponents
from sana_deploy.models.controlnet import controlnet_id, load_controlnet
from sana_deploy.models.loaders import load_components
from sana_deploy.runners.weights import WEIGHT_MAP_FILE


@dataclass
class Export:
    component: str
    onnx_path: Path
    manifest: dict


def exports_for(
    components: SanaComponents, names: tuple[str, ...], precision: str, root: Path, say: Callable[[str], None]
) -> dict[str, Export]:
    """The export of each component, through :func:`~sana_deploy.export.ensure_export` (parity-checked)."""
    out = {}
    for comp in names:
        say(f"export {comp} ({precision}) in {export_dir(root, comp, precision)}")
        path, _cached = ensure_export(components, comp, precision, root, parity=True)
        out[comp] = Export(comp, path, load_manifest(path))
    return out


def check_onnx_matches(export: Export) -> None:
    """Refuse to build from an ONNX that is not the one its manifest (and so the cache key) describes."""
    from sana_deploy.export.exporter import _sha256_files

    if _sha256_files(export.onnx_path.parent, export.manifest["files"]) != export.manifest["onnx_sha256"]:
        fail(
            f"{export.onnx_path} does not match the onnx_sha256 in its manifest.json (edited after export?). "
            f"Re-export it: `sana-deploy export --components {export.component.replace('_', '-')}`."
        )


def cache_key(backend: Backend, model: str, export: Export, precision: str, profile: Profile, options: BuildOptions):
    shapes = profile.input_shapes(export.manifest["inputs"])
    flags = {
        **options.key_fields(),
        "static": profile.static,
        **quant_flags(export.manifest),
        **backend.key_flags(precision),
    }
    return CacheKey(
        model=model,
        component=export.component,
        onnx_sha256=export.manifest["onnx_sha256"],
        weights_sha256=export.manifest.get("weights_sha256", ""),
        backend=backend.name,
        backend_version=backend.version(),
        device=backend.target_device(options),
        precision=precision,
        input_shapes={k: v.to_json() for k, v in shapes.items()},
        flags=flags,
        plugins=backend.plugin_hashes(options),
    ), shapes


def _meta(key: CacheKey, profile: Profile, export: Export, backend: Backend) -> dict:
    from sana_deploy.versions import package_versions

    return {
        **key.fields(),
        "key": key.digest,
        "profile": profile.to_json(),
        "onnx_path": str(export.onnx_path.resolve()),
        "inputs": export.manifest["inputs"],
        "outputs": export.manifest["outputs"],
        "versions": package_versions(),
    }


def build_one(
    cache: EngineCache,
    backend: Backend,
    model: str,
    export: Export,
    precision: str,
    profile: Profile,
    options: BuildOptions,
    load: Callable | None = None,
    say: Callable[[str], None] = lambda m: None,
) -> EngineEntry:
    """One engine through the cache: a hit if a valid entry exists, else built under the key lock."""
    key, shapes = cache_key(backend, model, export, precision, profile, options)
    t0 = time.perf_counter()
    entry = cache.lookup(key)
    lookup_s = time.perf_counter() - t0
    if entry is not None and not cache.problems(entry, deep=True):
        entry.hit, entry.lookup_seconds = True, lookup_s
        return entry
    cache.clean_leftovers()  # staging folders of killed builds, records of finished background builds
    with cache.key_lock(key.digest):
        entry = cache.lookup(key)  # another process may have built it while we waited
        if entry is not None:
            issues = cache.problems(entry, deep=True)
            if not issues:
                entry.hit, entry.lookup_seconds = True, lookup_s
                return entry
            say(f"rebuilding {entry.path.name}: {'; '.join(issues)}")
        cache.clean_staging(model, export.component, key.digest)
        check_onnx_matches(export)
        staging = cache.staging_dir(model, export.component, key.digest)
        try:
            entry = _build_into(cache, staging, backend, export, profile, options, key, shapes, load, say)
        except BaseException:
            cache.discard(staging)  # a failed or interrupted build leaves nothing behind
            raise
        entry.hit, entry.lookup_seconds = False, lookup_s
        return entry


def _keeps_lora_base(component: str, backend: str, options: BuildOptions) -> bool:
    """Transformer engines whose LoRA swaps need the base weights from the export (the package or plan cannot
    hand them back): aoti always, TensorRT when its LoRA weights are refittable. ONNX Runtime entries hold their
    own initializers."""
    if not component.startswith("transformer"):
        return False
    return backend == "aoti" or backend in ("tensorrt", "tensorrt-rtx") and options.lora_refit


def _stage_refit(export: Export, staging: Path) -> list[str]:
    """A weight-stripped plan is refitted at load from the ONNX it was built from: the entry keeps a copy of that
    ONNX in ``refit/``, so loading never reads a path recorded in meta.json. A copy, not a hard link: onnx (1.19+)
    refuses to load external data whose file has more than one link, which would break ``onnx.load`` of the export
    itself. Returns the file names (``refit_files``)."""
    folder = staging / "refit"
    folder.mkdir()
    files = list(export.manifest["files"])
    for name in files:
        if not is_plain_name(name):
            fail(f"The export manifest of {export.onnx_path} lists {name!r}, which is not a file name; re-export it.")
        src, dst = export.onnx_path.parent / name, folder / name
        shutil.copyfile(src, dst)
    weight_map = export.onnx_path.parent / WEIGHT_MAP_FILE  # where each LoRA-targetable weight lives in it
    if weight_map.is_file():
        shutil.copyfile(weight_map, folder / WEIGHT_MAP_FILE)
    return files


def _build_into(
    cache: EngineCache,
    staging: Path,
    backend: Backend,
    export: Export,
    profile: Profile,
    options: BuildOptions,
    key: CacheKey,
    shapes: dict,
    load: Callable | None,
    say: Callable[[str], None],
) -> EngineEntry:
    meta = _meta(key, profile, export, backend)
    if options.strip_weights or _keeps_lora_base(export.component, backend.name, options):
        meta["refit_files"] = _stage_refit(export, staging)
    job = BuildJob(
        model=key.model,
        component=export.component,
        precision=key.precision,
        profile=profile,
        onnx_path=export.onnx_path,
        manifest=export.manifest,
        input_shapes=shapes,
        options=options,
        out_dir=staging,
        device=key.device,
        timing_cache=cache.timing_cache_path(backend.name, key.backend_version, key.device)
        if backend.timing_cache and options.timing_cache
        else None,
        components_loader=load,
        progress=say,
    )
    return SaveEngine(EngineFromOnnx(backend, job), cache, meta)()


def _reuse(loaded: SanaComponents | None, modules: tuple[str, ...]) -> SanaComponents | None:
    """``loaded`` for a build that needs ``modules`` (a shallow copy, so the build's additions stay its own)."""
    if loaded is None:
        return None
    if missing := [m for m in modules if getattr(loaded, m, None) is None]:
        fail(
            f"The components passed to build_engines lack {', '.join(missing)}, which this build exports; load them "
            f"too, or pass loaded=None to load the model here."
        )
    return dataclasses.replace(loaded)


def build_engines(
    model: str = "sana-tiny",
    profiles: Iterable[int] | str = (1024,),
    backend: str = "auto",
    precision: str = "fp32",
    max_batch: int = 1,
    static: bool = False,
    engine_dir: str | Path = "engines",
    components: Iterable[str] | str | None = None,
    export_root: str | Path | None = None,
    options: BuildOptions | None = None,
    preset: str | None = None,
    random_weights: bool = False,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
    kv_cache: bool = True,
    quantize: str | None = None,
    recipe: str | None = None,
    controlnet: str | Path | None = None,
    loaded: SanaComponents | None = None,
) -> list[EngineEntry]:
    """Build (or find) one engine per component and profile. Returns the entries, ``.hit`` set on cache hits.

    ``components`` None: what the pipeline runs, the caption K/V split (``kv_cache``) or the one-graph transformer.
    ``quantize`` (``int8``/``fp8``, or ``precision="int8"``): the transformer graphs from the Q/DQ exports of
    ``sana-deploy quantize`` (``recipe``: a recipe name or digest prefix; default the newest for these weights that
    the backend runs), every engine recorded at that precision (``sana_deploy.engines.quantized``).
    ``controlnet``: a Sana ControlNet folder, for the ``controlnet`` graph (its engines are cached under the
    ControlNet's folder name) and ``transformer_control`` (which takes as many residuals as it has blocks); with
    ``components`` None, those two and the DC-AE encoder are built too.
    ``loaded``: ``model``'s components already in memory (every module the build needs), used instead of loading
    them a second time; a process that holds the model while it builds (the bench) then holds one copy, not two.
    """
    say = say or (lambda m: print(f"[sana-deploy build] {m}", file=sys.stderr, flush=True))
    precision, quantize = split_precision(precision, quantize)
    torch_dtype(precision)
    bases = parse_profiles(profiles if isinstance(profiles, str) else list(profiles))
    max_batch = check_max_batch(max_batch)
    names = pipeline_components(kv_cache) if components is None else parse_components(components)
    if controlnet is not None and components is None:  # and what a control image needs: encoder, ControlNet graphs
        names = tuple(dict.fromkeys((*names, VAE_ENCODER, SPLIT_TRANSFORMER[0], TRANSFORMER_CONTROL, CONTROLNET)))
    chosen, why = get_backend(backend)
    options = quant_options(chosen, options or BuildOptions(), quantize)
    device = chosen.target_device(options)  # validates targets before anything is exported
    say(f"backend: {chosen.name} {chosen.version()} for {device} ({why})")
    if note := not_runnable_note(chosen, device):  # e.g. tensorrt-rtx on a CPU-only machine: built for another
        say(note)
    model = str(model)
    check_model_dir(model_dirname(model))  # the cache folder it will go in
    cache = EngineCache(engine_dir)
    cache.check_writable()  # a read-only or file --engine-dir fails here, before the model is loaded or exported
    modules = tuple(dict.fromkeys(module_of(c) for c in names if c != CONTROLNET))
    components = _reuse(loaded, modules)
    if components is None:
        components = load_components(model, modules, preset=preset, random_weights=random_weights)
    cache_models = {c: model for c in names}
    if controlnet is not None:
        components.controlnet = load_controlnet(controlnet, components.preset)
        cache_models[CONTROLNET] = check_model_dir(controlnet_id(controlnet))
    elif CONTROLNET in names:
        fail("Building the controlnet graph needs the ControlNet: pass --controlnet FOLDER (diffusers' Sana layout).")

    def load() -> SanaComponents:  # what backends that trace PyTorch (aoti) are handed
        return components

    root = Path(export_root) if export_root is not None else default_export_root(model)
    exports = exports_for(components, names, chosen.export_precision(precision), root, say)
    for c in names if quantize else ():  # the transformer graphs' Q/DQ exports; the others stay fp32
        if found := quantized_export(root, c, quantize, recipe, components.content_hash(c), chosen.name, model):
            say(f"{c}: {quantize} graph {found[0].parent.parent.name} ({found[1]['quantization']['tool']})")
            exports[c] = Export(c, *found)
    tasks = [(exports[c], Profile.from_base(b, max_batch, static)) for c in names for b in bases]
    entries: list[EngineEntry] = []
    seen: set[str] = set()
    bar = _progress_bar(len(tasks), progress)
    for export, profile in tasks:
        bar.set_description(f"{export.component} [{profile.name}]")
        key_precision = quantize or precision  # a quantized build's engines never answer an fp32 lookup
        entry = build_one(
            cache, chosen, cache_models[export.component], export, key_precision, profile, options, load,
            bar.set_postfix_str,
        )  # fmt: skip
        if entry.key not in seen:  # the text encoder's profiles coincide: one engine, listed once
            seen.add(entry.key)
            entries.append(entry)
        bar.update(1)
    bar.close()
    return entries


class _NoBar:
    def set_description(self, *_a) -> None: ...  # noqa: ANN002

    def set_postfix_str(self, *_a) -> None: ...  # noqa: ANN002

    def update(self, *_a) -> None: ...  # noqa: ANN002

    def close(self) -> None: ...


def _progress_bar(total: int, enabled: bool):  # noqa: ANN202
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="engine", file=sys.stderr, dynamic_ncols=True)


__all__ = ["build_engines", "build_one", "cache_key", "exports_for", "sha256_file"]
