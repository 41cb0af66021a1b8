"""OpenAI ``POST /v1/images/generations`` requests: parse, validate, and the errors a request can end in."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import re
import warnings
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

from sana_deploy.runtime.variants import VariantError, check_variants
from sana_deploy.serve.settings import ServeSettings


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP code, the message says what to change."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def to_json(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class ClientGone(Exception):
    """The client went away before its answer; ``stage`` is where the request was then (the metrics' label):
    "body" (still sending it), "queued" (dropped, never run), "running" or "finished"."""

    def __init__(self, stage: str) -> None:
        super().__init__(f"the client went away (request {stage})")
        self.stage = stage


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    n: int
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int | None = None
    negative_prompt: str = ""
    adapters: tuple[tuple[str, float], ...] = ()  # LoRA (name, weight), sorted by name; () = the base model
    image: Image.Image | None = field(default=None, compare=False, repr=False)  # img2img start image (RGB)
    image_digest: str = ""  # sha256 of the decoded image's pixels and size ("" without one)
    strength: float = 0.6  # img2img: the share of the schedule run from the noised image
    control_image: Image.Image | None = field(default=None, compare=False, repr=False)  # ControlNet (RGB)
    control_digest: str = ""
    control_scale: float = 1.0
    pag_scale: float = 0.0
    pag_adaptive_scale: float = 0.0
    pag_layers: tuple[int, ...] | None = None  # PAG blocks; None: the model's default

    @property
    def bucket(self) -> tuple:
        """Requests with the same bucket can share one pipeline call (same engine shapes, loop, weights, input
        images and variant options)."""
        return (
            self.width,
            self.height,
            self.num_inference_steps,
            self.guidance_scale,
            self.negative_prompt,
            self.adapters,
            self.image_digest,
            self.strength if self.image is not None else None,
            self.control_digest,
            self.control_scale if self.control_image is not None else None,
            self.pag_scale,
            self.pag_adaptive_scale if self.pag_scale > 0 else None,
            self.pag_layers if self.pag_scale > 0 else None,
        )

    def pipeline_options(self) -> dict:
        """The variant keywords of this request's pipeline call (``{}`` for plain text-to-image)."""
        options: dict = {}
        if self.image is not None:
            options.update(image=self.image, strength=self.strength)
        if self.control_image is not None:
            options.update(control_image=self.control_image, controlnet_conditioning_scale=self.control_scale)
        if self.pag_scale > 0:
            options.update(
                pag_scale=self.pag_scale,
                pag_adaptive_scale=self.pag_adaptive_scale,
                pag_applied_layers=None if self.pag_layers is None else list(self.pag_layers),
            )
        return options


_KNOWN = {
    "prompt",
    "n",
    "size",
    "response_format",
    "model",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "negative_prompt",
    "user",
    "quality",
    "style",
    "adapters",
    "image",
    "strength",
    "control_image",
    "control_scale",
    "pag_scale",
    "pag_adaptive_scale",
    "pag_layers",
}
_IMAGE_FIELDS = ("image", "control_image")
MAX_ADAPTER_WEIGHT = 10.0
_DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)


def parse_body(body: bytes, settings: ServeSettings) -> ImageRequest:
    """Bytes of an HTTP body -> a validated :class:`ImageRequest` (or a :class:`RequestError`)."""
    limit = settings.max_body_bytes
    too_big = RequestError(
        413,
        f"Request body is {len(body)} bytes; the limit is {limit} plus two images (image, control_image) of at most "
        f"{settings.max_image_bytes} bytes each, base64.",
    )
    # a body over the field limit must carry an image (checked exactly once parsed)
    if len(body) > settings.body_limit or (
        len(body) > limit and not any(f'"{f}"'.encode() in body for f in _IMAGE_FIELDS)
    ):
        raise too_big
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"Body is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}).") from None
    if not isinstance(data, dict):
        raise RequestError(400, 'Body must be a JSON object like {"prompt": "a cat", "size": "1024x1024"}.')
    if len(body) > limit:  # the fields besides the images, as sent (re-encoded: escapes in the images do not count)
        rest = {k: v for k, v in data.items() if k not in _IMAGE_FIELDS or not isinstance(v, str)}
        if len(json.dumps(rest, ensure_ascii=False).encode()) > limit:
            raise too_big
    return parse_request(data, settings)


def parse_request(data: dict, settings: ServeSettings) -> ImageRequest:
    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        raise RequestError(400, f"Unknown field(s) {unknown}; accepted: {sorted(_KNOWN)}.", unknown[0])
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError(400, "'prompt' must be a non-empty string.", "prompt")
    if len(prompt) > settings.max_prompt_chars:
        raise RequestError(
            400, f"'prompt' has {len(prompt)} characters; the limit is {settings.max_prompt_chars}.", "prompt"
        )
    n = _int(data, "n", 1, 1, settings.max_n)
    fmt = data.get("response_format", "b64_json")
    if fmt != "b64_json":
        raise RequestError(
            400, "Only response_format 'b64_json' is supported (this server stores no files).", "response_format"
        )
    width, height = _size(data.get("size"), settings)
    steps = _int(data, "num_inference_steps", settings.num_inference_steps, 1, settings.max_inference_steps)
    guidance = data.get("guidance_scale", settings.guidance_scale)
    if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not 0.0 <= guidance <= 20.0:
        raise RequestError(400, "'guidance_scale' must be a number from 0 to 20.", "guidance_scale")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise RequestError(400, "'seed' must be a non-negative integer.", "seed")
    negative = data.get("negative_prompt", "")
    if not isinstance(negative, str) or len(negative) > settings.max_prompt_chars:
        raise RequestError(
            400, f"'negative_prompt' must be a string of at most {settings.max_prompt_chars} characters."
        )
    if settings.sprint and negative:
        raise RequestError(
            400,
            f"{settings.model_name} is a Sana-Sprint model: 'guidance_scale' is its embedded guidance (a model input), "
            "not classifier-free guidance, so there is no negative prompt; leave 'negative_prompt' out.",
            "negative_prompt",
        )
    adapters = _adapters(data, settings)
    return ImageRequest(
        prompt, n, width, height, steps, float(guidance), seed, negative, adapters, **_variants(data, settings)
    )


def _variants(data: dict, settings: ServeSettings) -> dict:
    """img2img, ControlNet and PAG fields, checked as the pipeline checks them (before the request is queued)."""
    out: dict = {}
    if "image" in data:
        out["image"], out["image_digest"] = _image(data["image"], "image", settings)
        out["strength"] = _number(
            data, "strength", 0.6, "a number in (0, 1] (1 ignores the image, small values keep it)"
        )
        if not 0 < out["strength"] <= 1:
            raise RequestError(
                400,
                f"'strength' must be a number in (0, 1] (1 ignores the image), got {data['strength']!r}.",
                "strength",
            )
    elif "strength" in data:
        raise RequestError(
            400,
            "'strength' sets how far img2img departs from 'image'; send 'image' too (or leave 'strength' out).",
            "strength",
        )
    if "control_image" in data:
        if not settings.controlnet:
            raise RequestError(
                400,
                "This server has no ControlNet, so it cannot use 'control_image' (the operator starts it with "
                "--controlnet FOLDER); leave 'control_image' and 'control_scale' out.",
                "control_image",
            )
        out["control_image"], out["control_digest"] = _image(data["control_image"], "control_image", settings)
        out["control_scale"] = _number(data, "control_scale", 1.0, "a finite number >= 0", minimum=0.0)
    elif "control_scale" in data:
        raise RequestError(400, "'control_scale' scales the ControlNet; send 'control_image' too.", "control_scale")
    out["pag_scale"] = _number(data, "pag_scale", 0.0, "a finite number >= 0 (0: no PAG)", minimum=0.0)
    out["pag_adaptive_scale"] = _number(data, "pag_adaptive_scale", 0.0, "a finite number >= 0", minimum=0.0)
    layers = data.get("pag_layers")
    if layers is not None and not (
        isinstance(layers, list)
        and layers
        and all(isinstance(x, str | int) and not isinstance(x, bool) for x in layers)
    ):
        raise RequestError(
            400,
            "'pag_layers' must be a non-empty list of block indices or diffusers' names, e.g. [8] or "
            '["transformer_blocks.8"].',
            "pag_layers",
        )
    if layers is not None and out["pag_scale"] == 0:
        raise RequestError(400, "'pag_layers' picks PAG's blocks; send 'pag_scale' > 0 too.", "pag_layers")
    try:
        _, _, _, parsed = check_variants(
            sprint=settings.sprint,
            controlnet_layers=1 if settings.controlnet else 0,
            control_image=out.get("control_image"),
            conditioning_scale=out.get("control_scale", 1.0),
            pag_scale=out["pag_scale"],
            pag_adaptive_scale=out["pag_adaptive_scale"],
            pag_layers=layers if settings.num_layers is not None else None,
            num_layers=settings.num_layers or 1,
        )
    except VariantError as exc:
        raise RequestError(400, request_words(str(exc)), "pag_layers" if layers is not None else None) from None
    if layers is not None:  # indices when the model's depth is known here, else as sent (the pipeline checks them)
        out["pag_layers"] = parsed if settings.num_layers is not None else tuple(layers)
    if out["pag_scale"] == 0:
        out["pag_adaptive_scale"] = 0.0
    return out


def request_words(message: str) -> str:
    """A pipeline check's message in the request's field names."""
    for option, name in (
        ("pag_scale (--pag-scale)", "'pag_scale'"),
        ("controlnet_conditioning_scale (--control-scale)", "'control_scale'"),
        ("--control-image", "'control_image'"),
        ("--pag-scale", "'pag_scale'"),
    ):
        message = message.replace(option, name)
    return message


def _number(data: dict, name: str, default: float, what: str, minimum: float | None = None) -> float:
    value = data.get(name, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (minimum is not None and value < minimum):
        raise RequestError(400, f"'{name}' must be {what}, got {value!r}.", name)
    return float(value)


def _image(value: object, name: str, settings: ServeSettings) -> tuple[Image.Image, str]:
    """A base64 PNG/JPEG (or a ``data:image/...;base64,`` URL) -> (RGB image, digest of its pixels)."""
    if not isinstance(value, str) or not value:
        raise RequestError(
            400, f"'{name}' must be a base64 PNG or JPEG, or a data:image/png;base64,... URL (a string).", name
        )
    match = _DATA_URL.match(value)
    text = value[match.end() :] if match else value
    if text.startswith("data:"):
        raise RequestError(400, f"'{name}' is a data URL but not a base64 image one (data:image/png;base64,...).", name)
    limit = settings.max_image_bytes
    if len(text) > 4 * -(-limit // 3) + 4:
        raise RequestError(413, f"'{name}' is over {limit} bytes; send a smaller image.", name)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(
            400, f"'{name}' is not valid base64; send the image file's bytes base64-encoded.", name
        ) from None
    if len(raw) > limit:
        raise RequestError(413, f"'{name}' is {len(raw)} bytes; the limit is {limit}.", name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:
                if im.format not in ("PNG", "JPEG"):
                    raise RequestError(400, f"'{name}' is a {im.format} image; send a PNG or JPEG.", name)
                w, h = im.size
                if w * h > settings.max_image_pixels:
                    raise RequestError(
                        400,
                        f"'{name}' is {w}x{h} pixels; the limit is {settings.max_image_pixels} pixels "
                        f"(e.g. 4096x4096): send a smaller image.",
                        name,
                    )
                im.load()
                image = im.convert("RGB")
    except RequestError:
        raise
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        OSError,
        SyntaxError,
        ValueError,
    ):
        raise RequestError(
            400, f"'{name}' is not a PNG or JPEG image PIL can read; send a PNG or JPEG file.", name
        ) from None
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode() + image.tobytes()).hexdigest()
    return image, digest


def _adapters(data: dict, settings: ServeSettings) -> tuple[tuple[str, float], ...]:
    """LoRA adapters from ``"adapters"`` (``["style", "ink:0.5"]``, ``[{"name": "ink", "weight": 0.5}]`` or
    ``{"ink": 0.5}``) and from a model name ``"<model>+style+ink:0.5"``; weight 1 unless given."""
    items: list[tuple[object, object]] = []
    model = data.get("model")
    if isinstance(model, str) and "+" in model:
        items += [_name_weight(part) for part in model.split("+")[1:]]
    raw = data.get("adapters")
    if isinstance(raw, dict):
        items += list(raw.items())
    elif isinstance(raw, list):
        for item in raw:
            if isinstance(item, str):
                items.append(_name_weight(item))
            elif isinstance(item, dict) and set(item) <= {"name", "weight", "scale"} and "name" in item:
                items.append((item["name"], item.get("weight", item.get("scale", 1.0))))
            else:
                raise RequestError(
                    400, f'\'adapters\' item {item!r} is not a name or {{"name", "weight"}}.', "adapters"
                )
    elif raw is not None:
        raise RequestError(
            400, "'adapters' must be a list of names (\"name:weight\") or an object of weights.", "adapters"
        )
    known = settings.adapters
    out: dict[str, float] = {}
    for name, weight in items:
        if not isinstance(name, str) or name not in known:
            listed = ", ".join(known) if known else "none (start the server with --lora-dir)"
            raise RequestError(400, f"Unknown adapter {name!r}; this server has: {listed}.", "adapters")
        ok = isinstance(weight, int | float) and not isinstance(weight, bool)
        if not ok or not math.isfinite(weight) or not 0 <= weight <= MAX_ADAPTER_WEIGHT:
            raise RequestError(
                400,
                f"Adapter {name!r}: weight must be a number from 0 to {MAX_ADAPTER_WEIGHT}, got {weight!r}.",
                "adapters",
            )
        if name in out:
            raise RequestError(400, f"Adapter {name!r} is named twice; name each adapter once.", "adapters")
        out[name] = float(weight)
    return tuple(sorted((n, w) for n, w in out.items() if w != 0))


def _name_weight(text: str) -> tuple[object, object]:
    name, _, weight = text.partition(":")
    if not weight:
        return name, 1.0
    try:
        return name, float(weight)
    except ValueError:
        return name, weight


def _int(data: dict, name: str, default: int, lo: int, hi: int) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestError(400, f"'{name}' must be an integer from {lo} to {hi}, got {value!r}.", name)
    return value


def _size(value: object, settings: ServeSettings) -> tuple[int, int]:
    if value is None or value == "auto":
        return settings.default_size
    allowed = settings.size_names()
    if allowed is None:
        shown = f"any WIDTHxHEIGHT with sides from 1 to {settings.max_side}, e.g. 1024x1024 or 1792x1024"
    else:
        more = f" … ({len(allowed)} in all, see GET /health)" if len(allowed) > 12 else ""
        shown = ", ".join(allowed[:12]) + more
    if not isinstance(value, str):
        raise RequestError(400, f"'size' must be a string like \"1024x1024\"; allowed: {shown}.", "size")
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise RequestError(400, f"'size' {value!r} is not WIDTHxHEIGHT; allowed: {shown}.", "size") from None
    if not settings.allows(w, h):
        raise RequestError(400, f"Size {value} is not served here; allowed: {shown}.", "size")
    return w, h
