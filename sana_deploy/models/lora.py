"""LoRA adapters for the Sana transformer: read, convert to one layout, check, and turn into weight deltas.

One internal layout, :class:`LoraAdapter`: ``{weight name: LoraLayer(down, up, scale)}`` where the weight name is
the transformer parameter it changes, in diffusers' names (``transformer_blocks.0.attn1.to_q.weight``), and the
change is ``scale * up @ down`` (``scale`` = alpha / rank, or alpha / sqrt(rank) for rsLoRA).

Formats read (safetensors only: a pickle can run code, so ``.bin``/``.pt``/``.ckpt`` files are refused):

* diffusers / PEFT, as ``SanaPipeline.save_lora_weights`` writes it: ``transformer.<module>.lora_A.weight`` and
  ``lora_B.weight``; rank and alpha from the file's ``lora_adapter_metadata`` (PEFT's ``r``, ``lora_alpha``,
  ``rank_pattern``, ``alpha_pattern``, ``use_rslora``). Without metadata alpha = rank, as diffusers assumes.
* the prefixed layout of community trainers: ``lora_unet_<module with _>.lora_down.weight`` / ``.lora_up.weight``
  / ``.alpha`` (also ``lora_transformer_`` and ``transformer.`` + ``.lora_down``/``.lora_up``), converted by
  :func:`convert_state_dict`.

Targets: every ``nn.Linear`` and 1x1 ``nn.Conv2d`` of the transformer (attention, cross-attention, Mix-FFN's
pointwise convolutions, embedders, the output projection). Text-encoder LoRA and the depthwise 3x3 convolution
are refused with a message.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sana_deploy.errors import SanaDeployError, fail

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_TEXT_ENCODER_PREFIXES = ("text_encoder.", "lora_te_", "lora_te1_", "lora_te2_", "te.")
_KOHYA_PREFIXES = ("lora_unet_", "lora_transformer_", "lora_dit_")


class LoraError(SanaDeployError):
    """An adapter file or request that cannot be applied; the pipeline keeps its previous weights."""


@dataclass(frozen=True)
class LoraLayer:
    """``delta = scale * up @ down`` for one weight; ``down`` (r, in[, 1, 1]), ``up`` (out, r[, 1, 1])."""

    down: torch.Tensor
    up: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """The weight change in fp32, shaped like the target weight (a 1x1 conv's (out, in, 1, 1) included)."""
        d = self.up.float().flatten(1) @ self.down.float().flatten(1)
        return (self.scale * d).reshape(shape)


@dataclass(frozen=True)
class LoraAdapter:
    """A parsed adapter: its layers by target weight name, where it came from, and its content hash."""

    name: str
    layers: dict[str, LoraLayer]
    sha256: str
    source: str = ""
    info: dict = field(default_factory=dict)

    def check(self, weight_shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Refuse an adapter with keys that match no weight, or shapes of another model size."""
        unknown = sorted(k for k in self.layers if k not in weight_shapes)
        if unknown:
            fail(
                f"LoRA {self.name!r} targets {len(unknown)} layer(s) this transformer does not have, e.g. "
                f"{', '.join(unknown[:3])}. Use an adapter trained for this Sana model (transformer layers in "
                f"diffusers' names, e.g. transformer_blocks.0.attn1.to_q).",
                LoraError,
            )
        bad = []
        for key, layer in self.layers.items():
            shape = tuple(weight_shapes[key])
            out_f, in_f = shape[0], math.prod(shape[1:])
            if (
                layer.up.shape[0] != out_f
                or math.prod(layer.down.shape[1:]) != in_f
                or len(shape) == 4
                and shape[2:] != (1, 1)
            ):
                bad.append(
                    f"{key}: adapter {tuple(layer.up.shape[:1])}x{tuple(layer.down.shape[1:2])} vs weight {shape}"
                )
        if bad:
            fail(
                f"LoRA {self.name!r} was trained for another model size: {len(bad)} layer(s) do not fit, first "
                f"{'; '.join(bad[:3])}. Use an adapter trained for this model.",
                LoraError,
            )

    def deltas(self, weight_shapes: Mapping[str, tuple[int, ...]], scale: float = 1.0) -> dict[str, torch.Tensor]:
        """``{weight name: scale * delta}`` (fp32), after :meth:`check`."""
        self.check(weight_shapes)
        return {k: scale * layer.delta(tuple(weight_shapes[k])) for k, layer in self.layers.items()}


def check_scale(scale: object, what: str = "LoRA scale") -> float:
    """A finite, non-negative float, or a :class:`LoraError` saying what to pass."""
    try:
        value = float(scale)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        fail(f"{what} must be a number, got {scale!r}; e.g. 0.8.", LoraError)
    if not math.isfinite(value) or value < 0:
        fail(f"{what} must be a finite number >= 0, got {scale!r}; e.g. 0.8 (0 turns the adapter off).", LoraError)
    return value


def combined_deltas(
    adapters: Sequence[tuple[LoraAdapter, float]], weight_shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """The sum of every adapter's scaled delta, per weight name (fp32); adapters at scale 0 add nothing."""
    total: dict[str, torch.Tensor] = {}
    for adapter, scale in adapters:
        adapter.check(weight_shapes)
        if scale == 0:
            continue
        for key, d in adapter.deltas(weight_shapes, scale).items():
            total[key] = total[key] + d if key in total else d
    return total


# --- reading ---------------------------------------------------------------------------------------------------
def load_adapter(
    source: str | Path | Mapping[str, torch.Tensor], name: str | None = None, metadata: Mapping | None = None
) -> LoraAdapter:
    """Read a LoRA safetensors file (or a state dict already in memory) into a :class:`LoraAdapter`."""
    if isinstance(source, Mapping):
        sd = dict(source)
        label = name or "adapter"
        return _adapter(sd, dict(metadata or {}), label, _hash_state_dict(sd), "<state dict>")
    path = Path(source)
    label = name or path.stem
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors"))
        if len(candidates) != 1:
            fail(
                f"LoRA folder {path} holds {len(candidates)} .safetensors files; pass the adapter file itself.",
                LoraError,
            )
        path = candidates[0]
    if not path.exists():
        fail(f"LoRA file {path} does not exist; pass the path of a .safetensors adapter.", LoraError)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        fail(
            f"LoRA file {path} is a pickle ({path.suffix}), which can run code when loaded, so it is refused. "
            f"Convert it once, where you trust it, to safetensors (safetensors.torch.save_file) and pass that.",
            LoraError,
        )
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            file_metadata = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        fail(
            f"LoRA file {path} cannot be read as safetensors ({type(exc).__name__}: {str(exc)[:200]}); it is "
            f"corrupt or truncated, or not a safetensors file. Download or save it again.",
            LoraError,
        )
    meta = dict(metadata or {})
    raw = file_metadata.get("lora_adapter_metadata")
    if raw and not meta:
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError:
            fail(f"LoRA file {path}: its lora_adapter_metadata is not JSON; save the adapter again.", LoraError)
    return _adapter(sd, meta, label, _hash_file(path), str(path))


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_state_dict(sd: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _adapter(sd: dict, meta: dict, name: str, sha: str, source: str) -> LoraAdapter:
    layers, fmt = convert_state_dict(sd, meta, name)
    if not layers:
        fail(f"LoRA {name!r} ({source}) holds no LoRA weights (no lora_A/lora_B or lora_down/lora_up keys).", LoraError)
    return LoraAdapter(name, layers, sha, source, {"format": fmt})


def convert_state_dict(sd: Mapping[str, torch.Tensor], meta: Mapping | None, name: str = "adapter") -> tuple[dict, str]:
    """One function for every supported key layout: ``({weight name: LoraLayer}, format name)``."""
    meta = dict(meta or {})
    text = sorted(k for k in sd if k.startswith(_TEXT_ENCODER_PREFIXES))
    if text:
        fail(
            f"LoRA {name!r} has text-encoder layers (e.g. {text[0]}); sana-deploy applies transformer LoRA only. "
            f"Use an adapter trained on the transformer alone, or drop the text-encoder keys from the file.",
            LoraError,
        )
    keys = [k for k in sd if not k.endswith(".alpha")]
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return _convert_peft(sd, meta, name), "peft"
    if any(".lora_down." in k or ".lora_up." in k for k in keys):
        return _convert_down_up(sd, name), "down-up"
    return {}, "unknown"


def _module_name(key: str) -> str:
    for prefix in ("transformer.", "base_model.model.", "model."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _peft_number(meta: Mapping, field_name: str, module: str, default: float) -> float:
    """PEFT's per-module override (``rank_pattern`` / ``alpha_pattern``: the key is a suffix or a regex)."""
    pattern = _meta(meta, "rank_pattern" if field_name == "r" else "alpha_pattern")
    for key, value in (pattern or {}).items():
        if re.fullmatch(rf"(.*\.)?({key})", module):
            return float(value)
    return default


def _meta(meta: Mapping, key: str):  # noqa: ANN202
    for k in (f"transformer.{key}", key):
        if k in meta:
            return meta[k]
    return None


def _convert_peft(sd: Mapping[str, torch.Tensor], meta: Mapping, name: str) -> dict[str, LoraLayer]:
    if _meta(meta, "use_dora"):
        fail(f"LoRA {name!r} is a DoRA adapter; only plain LoRA can be fused into engines.", LoraError)
    rslora = bool(_meta(meta, "use_rslora"))
    layers = {}
    modules = sorted({_module_name(k.split(".lora_A.")[0]) for k in sd if ".lora_A." in k})
    for module in modules:
        down, up = _pair(sd, module, ("lora_A", "lora_B"), name)
        rank = down.shape[0]
        r = _peft_number(meta, "r", module, float(_meta(meta, "r") or rank))
        alpha = _peft_number(meta, "lora_alpha", module, float(_meta(meta, "lora_alpha") or r))
        if int(r) != rank:  # metadata from another adapter: the tensors are the truth
            r = rank
        layers[_weight_name(module, name)] = LoraLayer(down, up, alpha / (math.sqrt(r) if rslora else r))
    return layers


def _convert_down_up(sd: Mapping[str, torch.Tensor], name: str) -> dict[str, LoraLayer]:
    layers = {}
    stems = sorted({k.split(".lora_down.")[0] for k in sd if ".lora_down." in k})
    for stem in stems:
        module = _kohya_module(stem)
        down, up = _pair(sd, stem, ("lora_down", "lora_up"), name, raw=True)
        alpha_t = sd.get(f"{stem}.alpha")
        rank = down.shape[0]
        alpha = float(alpha_t.float().item()) if alpha_t is not None else float(rank)
        layers[_weight_name(module, name)] = LoraLayer(down, up, alpha / rank)
    return layers


def _kohya_module(stem: str) -> str:
    """``lora_unet_transformer_blocks_0_attn1_to_q`` -> ``transformer_blocks.0.attn1.to_q``."""
    for prefix in _KOHYA_PREFIXES:
        if stem.startswith(prefix):
            flat = stem[len(prefix) :]
            return _unflatten(flat)
    return _module_name(stem)


_PARTS = (
    "transformer_blocks", "attn1", "attn2", "to_q", "to_k", "to_v", "to_out", "ff", "conv_inverted", "conv_depth",
    "conv_point", "caption_projection", "linear_1", "linear_2", "time_embed", "emb", "timestep_embedder", "linear",
    "proj_out", "patch_embed", "proj",
)  # fmt: skip


def _unflatten(flat: str) -> str:
    """Split an underscore-joined module path on the Sana transformer's known names and indices."""
    out, rest = [], flat
    while rest:
        for part in sorted(_PARTS, key=len, reverse=True):
            if rest == part or rest.startswith(part + "_"):
                out.append(part)
                rest = rest[len(part) + 1 :]
                break
        else:
            m = re.match(r"(\d+)(_|$)", rest)
            if not m:
                return flat  # unknown layout: left as is, so the key check names it
            out.append(m.group(1))
            rest = rest[m.end() :]
    return ".".join(out)


def _pair(sd: Mapping, stem: str, names: tuple[str, str], adapter: str, raw: bool = False) -> tuple:
    candidates = [stem] if raw else [stem, f"transformer.{stem}", f"base_model.model.{stem}"]
    for s in candidates:
        a, b = sd.get(f"{s}.{names[0]}.weight"), sd.get(f"{s}.{names[1]}.weight")
        if a is not None and b is not None:
            if a.dim() not in (2, 4) or b.dim() != a.dim() or b.shape[1] != a.shape[0]:
                fail(
                    f"LoRA {adapter!r}: {s} has {names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)}, "
                    f"which do not form a low-rank pair; the file is damaged or not a LoRA.",
                    LoraError,
                )
            return a, b
    fail(f"LoRA {adapter!r}: {stem} has no matching {names[0]}/{names[1]} pair; the file is incomplete.", LoraError)


def _weight_name(module: str, adapter: str) -> str:
    if module.endswith("conv_depth"):
        fail(
            f"LoRA {adapter!r} targets {module}, a depthwise 3x3 convolution; only linear and 1x1 convolution layers "
            f"can take LoRA here.",
            LoraError,
        )
    return f"{module}.weight"
