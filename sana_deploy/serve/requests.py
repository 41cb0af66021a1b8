"""OpenAI ``POST /v1/images/generations`` requests: parse, validate, and the errors a request can end in."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

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

    @property
    def bucket(self) -> tuple:
        """Requests with the same bucket can share one pipeline call (same engine shapes, loop and weights)."""
        return (
            self.width,
            self.height,
            self.num_inference_steps,
            self.guidance_scale,
            self.negative_prompt,
            self.adapters,
        )


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
}
MAX_ADAPTER_WEIGHT = 10.0


def parse_body(body: bytes, settings: ServeSettings) -> ImageRequest:
    """Bytes of an HTTP body -> a validated :class:`ImageRequest` (or a :class:`RequestError`)."""
    if len(body) > settings.max_body_bytes:
        raise RequestError(413, f"Request body is {len(body)} bytes; the limit is {settings.max_body_bytes}.")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"Body is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}).") from None
    if not isinstance(data, dict):
        raise RequestError(400, 'Body must be a JSON object like {"prompt": "a cat", "size": "1024x1024"}.')
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
    adapters = _adapters(data, settings)
    return ImageRequest(prompt, n, width, height, steps, float(guidance), seed, negative, adapters)


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
