"""Serving limits and defaults: one frozen value object shared by the HTTP app, Ray Serve and the examples.

Everything here is checked when it is made, so a server refuses to start with a setting it could never serve with
(:class:`ServeSettingsError`, a message naming the ``sana-deploy serve`` option) instead of refusing every request.
"""

from __future__ import annotations

import math
import os
import re
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path

from sana_deploy.contract import MISS_POLICIES, parse_profiles
from sana_deploy.contract import bucket_sizes as contract_bucket_sizes
from sana_deploy.errors import SanaDeployError, ShapeError, fail
from sana_deploy.models.config import PRESETS, SanaPreset
from sana_deploy.models.controlnet import check_fits, folder_config
from sana_deploy.models.loaders import load_diffusers_folder
from sana_deploy.runtime.resolution import MAX_SIDE
from sana_deploy.runtime.solvers import DEFAULT_STEPS

API_KEY_ENV = "SANA_DEPLOY_API_KEY"
MAX_PORT = 65535


class ServeSettingsError(SanaDeployError):
    """A server setting no server can run with; the message names the ``sana-deploy serve`` option to change."""


# ServeSettings field -> the `sana-deploy serve` option that sets it (messages name both)
_OPTIONS = {
    "max_n": "--max-n",
    "max_queue": "--max-queue",
    "request_timeout_s": "--timeout",
    "body_timeout_s": "--body-timeout",
    "num_inference_steps": "--steps",
    "sizes": "--sizes",
}
_ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # no '+', ':' or ',' (they separate names in requests)
_API_KEY = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: what an HTTP header carries unchanged


def _name(attr: str) -> str:
    option = _OPTIONS.get(attr)
    return f"{option} ({attr})" if option else attr


def _int_at_least(value: object, attr: str, low: int, high: int | None = None, why: str = "") -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        fail(f"{_name(attr)} must be an integer {bound}{why}, got {value!r}.", ServeSettingsError)


def _seconds(value: object, attr: str, allow_zero: bool = False) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        fail(f"{_name(attr)} must be a finite number of seconds, {bound}, got {value!r}.", ServeSettingsError)


@dataclass(frozen=True)
class ServeSettings:
    """What a server accepts and how hard it works before it says no.

    ``sizes``: the OpenAI-style sizes a request may ask for, ``(width, height)`` in pixels, or ``None`` (the
    default) for every size ``sana-deploy generate`` accepts: positive sides up to ``max_side``. The pipeline bins
    each request to the model's nearest aspect-ratio bucket and resizes the image back to the requested size.

    Every field is checked on construction (and by :meth:`with_`): an invalid one raises
    :class:`ServeSettingsError` naming the field and its ``sana-deploy serve`` option.
    """

    sizes: tuple[tuple[int, int], ...] | None
    default_size: tuple[int, int]
    max_n: int = 4  # images per request
    max_prompt_chars: int = 2000
    max_body_bytes: int = 64 * 1024
    num_inference_steps: int = 20
    max_inference_steps: int = 50
    guidance_scale: float = 4.5
    request_timeout_s: float = 300.0  # queue + run; then 504
    body_timeout_s: float = 30.0  # the whole request body must arrive within this; then 408 and the connection closes
    max_queue: int = 32  # requests waiting or running per replica; more -> 429
    max_batch_images: int = 4  # images merged into one pipeline call (same bucket, steps, guidance, negative)
    batch_wait_s: float = 0.01  # how long the worker waits for same-bucket requests to join a batch
    api_key: str | None = field(default=None, repr=False)
    model_name: str = "sana-tiny"
    max_side: int = MAX_SIDE  # largest width or height when ``sizes`` is None
    adapters: tuple[str, ...] = ()  # LoRA adapters a request may name (``--lora-dir``)
    lora_cache_size: int = 4  # fused weight sets kept for switching back (``--lora-cache``)
    # the model's variants (set by default_settings from the model): requests are checked against them before queueing
    sprint: bool = False  # a Sana-Sprint model: guidance_scale is its embedded guidance, no negative prompt
    controlnet: bool = False  # started with --controlnet: requests may send a control_image
    num_layers: int | None = None  # transformer blocks (PAG layers are checked against them); None: checked later
    max_image_bytes: int = 8 * 1024 * 1024  # each input image (image, control_image), decoded from base64
    max_image_pixels: int = 4096 * 4096  # each input image, width x height

    @property
    def body_limit(self) -> int:
        """The largest body read: ``max_body_bytes`` of fields plus two base64 images of ``max_image_bytes``
        (with a data-URL prefix). A body over ``max_body_bytes`` must carry an image (checked when parsed)."""
        return self.max_body_bytes + 2 * (4 * -(-self.max_image_bytes // 3) + 64)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ServeSettingsError` for the first setting no server could serve with."""
        _int_at_least(self.max_side, "max_side", 1, MAX_SIDE)
        if self.sizes is not None:
            if not self.sizes:
                fail(f"{_name('sizes')} is empty; pass e.g. --sizes 1024x1024,768x1344.", ServeSettingsError)
            for size in self.sizes:
                if not _is_size(size, MAX_SIDE):
                    fail(
                        f"{_name('sizes')}: {size!r} is not a (width, height) of 1 to {MAX_SIDE} px.",
                        ServeSettingsError,
                    )
        if not _is_size(self.default_size, self.max_side) or not self.allows(*self.default_size):
            fail(f"default_size {self.default_size!r} is not among the sizes this server allows.", ServeSettingsError)
        _int_at_least(self.max_n, "max_n", 1, why=" (images per request)")
        _int_at_least(self.max_prompt_chars, "max_prompt_chars", 1)
        _int_at_least(self.max_body_bytes, "max_body_bytes", 1)
        _int_at_least(self.max_inference_steps, "max_inference_steps", 1)
        cap = self.max_inference_steps
        _int_at_least(self.num_inference_steps, "num_inference_steps", 1, cap, f" (the server's cap is {cap})")
        guidance = self.guidance_scale
        if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not 0.0 <= guidance <= 20.0:
            fail(f"guidance_scale must be a number from 0 to 20, got {guidance!r}.", ServeSettingsError)
        _seconds(self.request_timeout_s, "request_timeout_s")
        _seconds(self.body_timeout_s, "body_timeout_s")
        _seconds(self.batch_wait_s, "batch_wait_s", allow_zero=True)
        _int_at_least(self.max_queue, "max_queue", 1, why=" (requests waiting or running)")
        _int_at_least(self.max_batch_images, "max_batch_images", 1)
        _int_at_least(self.lora_cache_size, "lora_cache_size", 1, why=" (--lora-cache: fused adapter sets kept)")
        _int_at_least(self.max_image_bytes, "max_image_bytes", 1)
        _int_at_least(self.max_image_pixels, "max_image_pixels", 1)
        if self.num_layers is not None:
            _int_at_least(self.num_layers, "num_layers", 1)
        for name in self.adapters:
            if not isinstance(name, str) or not _ADAPTER_NAME.fullmatch(name):
                fail(f"Adapter name {name!r}: use letters, digits, '.', '_' and '-' only.", ServeSettingsError)
        if self.api_key is not None:  # never echo the key itself
            if not isinstance(self.api_key, str) or not self.api_key:
                fail(
                    f"--api-key (or {API_KEY_ENV}) is empty; pass a key, or leave it unset to serve without one.",
                    ServeSettingsError,
                )
            if not _API_KEY.fullmatch(self.api_key):
                fail(
                    f"--api-key (or {API_KEY_ENV}) must be printable ASCII without spaces (clients send it in an HTTP "
                    "header, which carries nothing else unchanged); choose another key.",
                    ServeSettingsError,
                )
        if not isinstance(self.model_name, str) or not self.model_name:
            fail(f"model_name must be a non-empty string, got {self.model_name!r}.", ServeSettingsError)

    def with_(self, **changes) -> ServeSettings:
        return replace(self, **changes)

    def size_names(self) -> list[str] | None:
        """The allow-list as ``WxH`` strings, or None when every size up to ``max_side`` is served."""
        return None if self.sizes is None else [f"{w}x{h}" for w, h in self.sizes]

    def allows(self, width: int, height: int) -> bool:
        if self.sizes is not None:
            return (width, height) in self.sizes
        return 0 < width <= self.max_side and 0 < height <= self.max_side


def _is_size(value: object, max_side: int) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= max_side for v in value)
    )


def parse_sizes(spec: str) -> tuple[tuple[int, int], ...]:
    """``"1024x1024,768x1344"`` (OpenAI's width x height) -> ``((1024, 1024), (768, 1344))``.

    Any positive size up to the largest side is valid (the pipeline bins it to an aspect-ratio bucket and
    resizes the image back), as in ``sana-deploy generate``.
    """
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        try:
            w, h = (int(v) for v in item.lower().split("x"))
        except ValueError:
            fail(f"--sizes: {item!r} is not WIDTHxHEIGHT (e.g. 1024x1024).", ServeSettingsError)
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            fail(f"--sizes: {item} must have positive sides of at most {MAX_SIDE} pixels.", ServeSettingsError)
        out.append((w, h))
    if not out:
        fail("No sizes given; pass e.g. --sizes 1024x1024,768x1344.", ServeSettingsError)
    return tuple(dict.fromkeys(out))


def parse_bases(spec: str | int | list | tuple) -> list[int]:
    """``--profiles`` (``"1024,2048"`` or a list) as bucket bases; a bad one is a :class:`ServeSettingsError`."""
    try:
        return parse_profiles(spec)
    except ShapeError as exc:
        fail(f"--profiles: {exc}", ServeSettingsError)


def bucket_sizes(bases: str | list[int]) -> tuple[tuple[int, int], ...]:
    """Every aspect-ratio bucket of the given base resolutions as (width, height)."""
    sizes = [(w, h) for base in parse_bases(bases) for h, w in contract_bucket_sizes(base)]
    return tuple(dict.fromkeys(sizes))


def default_settings(
    model_name: str = "sana-tiny",
    bases: str | list[int] | None = None,
    sizes: str | None = None,
    api_key: str | None = None,
    **overrides,
) -> ServeSettings:
    """Settings for a model. ``sizes`` (an allow-list) wins over ``bases`` (``--profiles``: allow those bases'
    aspect buckets); with neither, every size ``generate`` accepts is served. The default size is the model's
    resolution. Invalid settings raise :class:`ServeSettingsError`.

    The API key is ``api_key`` or, when that is None, the ``SANA_DEPLOY_API_KEY`` environment variable. A preset
    or a diffusers folder (its configs) sets ``sprint`` and ``num_layers``, and a Sana-Sprint model's default steps
    are its solver's (2) unless ``num_inference_steps`` is given.
    """
    preset = _model_preset(model_name)
    base = preset.resolution if preset is not None else 1024
    if preset is not None:
        overrides.setdefault("sprint", preset.sprint)
        overrides.setdefault("num_layers", preset.transformer.num_layers)
        if preset.sprint and overrides.get("num_inference_steps") is None:
            overrides["num_inference_steps"] = DEFAULT_STEPS[preset.default_sampler]
    if overrides.get("num_inference_steps", 0) is None:
        overrides.pop("num_inference_steps")
    allowed: tuple[tuple[int, int], ...] | None = None
    default = (base, base)
    if sizes:
        allowed = parse_sizes(sizes)
        default = allowed[0]
    elif bases:
        bases = parse_bases(bases)
        allowed = bucket_sizes(bases)
        squares = [s for s in [default] + [(b, b) for b in bases] if s in allowed]
        default = squares[0] if squares else allowed[0]
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    return ServeSettings(sizes=allowed, default_size=default, api_key=key, model_name=model_name, **overrides)


def _model_preset(model_name: str) -> SanaPreset | None:
    """The preset of a preset name, or of a diffusers folder from its configs (no weights read); None otherwise
    (the model loader reports a bad folder)."""
    if model_name.lower() in PRESETS and not Path(model_name).exists():
        return PRESETS[model_name.lower()]
    if Path(model_name).is_dir():
        try:
            return load_diffusers_folder(Path(model_name), components=()).preset
        except SanaDeployError:
            return None
    return None


def adapter_files(lora_dir: str | Path) -> dict[str, Path]:
    """``--lora-dir``: every ``<name>.safetensors`` in the folder, by name (a request names adapters by it)."""
    folder = Path(lora_dir)
    if not folder.is_dir():
        fail(f"--lora-dir {folder} is not a folder; pass a folder of LoRA .safetensors files.", ServeSettingsError)
    files = {p.stem: p for p in sorted(folder.glob("*.safetensors")) if p.is_file()}
    if not files:
        fail(f"--lora-dir {folder} holds no .safetensors files; put the adapters there.", ServeSettingsError)
    bad = [n for n in files if not _ADAPTER_NAME.fullmatch(n)]
    if bad:
        fail(
            f"--lora-dir: adapter file name {bad[0]!r} cannot be used in requests; rename it to letters, digits, '.', "
            f"'_' and '-' only.",
            ServeSettingsError,
        )
    return files


# --- the rest of a server's start-up options (where it listens, its engine folder, Ray) -----------------------------


def check_listen(host: str, port: int, bind: bool = True) -> None:
    """``--host``/``--port`` a server can listen on: a port from 0 (any free port) to 65535, a host this machine
    resolves and, with ``bind``, an address nothing else listens on yet (checked before the model loads)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= MAX_PORT:
        fail(f"--port must be an integer from 0 (any free port) to {MAX_PORT}, got {port!r}.", ServeSettingsError)
    if not isinstance(host, str) or not host.strip():
        fail(f"--host must be an address or host name, e.g. 127.0.0.1, got {host!r}.", ServeSettingsError)
    if not bind:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn binds
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except (OSError, UnicodeError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        fail(
            f"Cannot listen on --host {host} --port {port} ({reason}); pick a free port, or an address of this "
            "machine (127.0.0.1 for this machine only, 0.0.0.0 for every interface).",
            ServeSettingsError,
        )


def check_engine_dir(path: str | Path, backend: str = "auto", miss_policy: str = "build") -> Path:
    """``--engines``: a folder, or a path where one can be made. It must be writable when a miss may build into it
    (an engine ``backend`` other than ``auto`` with miss policy ``build`` or ``background``). Returns the path."""
    if miss_policy not in MISS_POLICIES:
        fail(f"--miss-policy must be one of {', '.join(MISS_POLICIES)}, got {miss_policy!r}.", ServeSettingsError)
    path = Path(path)
    if path.exists() and not path.is_dir():
        fail(
            f"--engines {path} is a file, not a folder; pass the engine folder `sana-deploy build --engine-dir` "
            "wrote, or a new path.",
            ServeSettingsError,
        )
    builds = backend not in ("auto", "torch") and miss_policy != "error"
    if not builds:
        return path
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created (in {existing})"
        fail(
            f"--engines {path} {what}, and --miss-policy {miss_policy} builds missing engines into it; pass a "
            "writable folder, or --miss-policy error to serve only the engines it has.",
            ServeSettingsError,
        )
    return path


def check_replicas(replicas: int, gpus_per_replica: float) -> None:
    """``--replicas`` (at least 1) and ``--gpus-per-replica`` (a finite number, 0 or more) for Ray Serve."""
    _int_at_least(replicas, "--replicas", 1)
    g = gpus_per_replica
    if isinstance(g, bool) or not isinstance(g, int | float) or not math.isfinite(g) or g < 0:
        fail(f"--gpus-per-replica must be a finite number, 0 or more, got {g!r}.", ServeSettingsError)


def check_server(
    host: str,
    port: int,
    engine_dir: str | Path,
    backend: str = "auto",
    miss_policy: str = "build",
    ray: bool = False,
    replicas: int = 1,
    gpus_per_replica: float = 0.0,
    controlnet: str | Path | None = None,
    model: str | None = None,
) -> None:
    """Every start-up check of ``sana-deploy serve`` beyond :class:`ServeSettings`, run before the model loads:
    :func:`check_listen` (bound only without Ray, whose proxy may already hold the port), :func:`check_engine_dir`,
    :func:`check_controlnet` and, with Ray, :func:`check_replicas`."""
    check_listen(host, port, bind=not ray)
    check_engine_dir(engine_dir, backend, miss_policy)
    if controlnet is not None:
        check_controlnet(controlnet, model)
    if ray:
        check_replicas(replicas, gpus_per_replica)


def check_controlnet(folder: str | Path, model: str | None = None) -> None:
    """``--controlnet``: a diffusers Sana ControlNet folder (its ``config.json``) that fits ``model`` when that is a
    preset (same hidden size, caption and latent channels; not a Sana-Sprint model). Its weights are read, strictly,
    when the pipeline loads, still before the server listens."""
    cfg = folder_config(folder)
    preset = PRESETS.get(str(model).lower()) if model is not None else None
    if preset is not None:
        check_fits(cfg, preset, f"{folder} (--controlnet)")
    folders = (Path(folder), Path(folder) / "controlnet")  # diffusers' ControlNet folder, or a pipeline folder
    if not any(p.suffix in (".safetensors", ".bin") for f in folders if f.is_dir() for p in f.iterdir()):
        fail(
            f"--controlnet {folder} has a config.json but no weights (diffusion_pytorch_model.safetensors); copy the "
            "whole folder SanaControlNetModel.save_pretrained wrote.",
            ServeSettingsError,
        )
