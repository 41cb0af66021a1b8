"""One declarative export spec per component: inputs, outputs, dynamic axes, dummy inputs, tolerance.

All float I/O is fp32 whatever the precision inside (the graph casts at its edges), masks and token ids
are int64, so runtimes and engines never need to know the precision a graph was exported in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from sana_deploy.models.components import SanaComponents
from sana_deploy.models.config import LATENT_CHANNELS, TEXT_MAX_LENGTH, TEXT_MIN_TOKENS, VAE_SCALE

Dim = int | str  # a fixed size, or the name of a dynamic axis


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: torch.dtype = torch.float32

    def resolve(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """Concrete shape for the given axis sizes (axis expressions like ``32*latent_h`` allowed)."""
        return tuple(d if isinstance(d, int) else _eval(d, sizes) for d in self.shape)

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": str(self.dtype).replace("torch.", "")}


def _eval(expr: str, sizes: dict[str, int]) -> int:
    factor, axis = axis_factor(expr)
    return factor * sizes[axis]


def axis_factor(expr: str) -> tuple[int, str]:
    """A dimension pattern as (factor, axis name): ``"latent_h"`` -> (1, "latent_h"), ``"32*latent_h"`` -> (32,
    "latent_h"). A derived axis (an image side of the DC-AE encoder) is a multiple of a named one."""
    if "*" in expr:
        a, b = expr.split("*")
        return int(a), b
    return 1, expr


@dataclass(frozen=True)
class AxisRange:
    """Range torch.export may assume for a dynamic axis (the graph is valid across all of it)."""

    min: int
    max: int


@dataclass(frozen=True)
class ExportSpec:
    component: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    axes: dict[str, AxisRange]
    export_sizes: dict[str, int]  # the dummy input's sizes; parity sizes are chosen to differ from it
    parity_sizes: tuple[dict[str, int], ...]
    tolerance: dict[str, float]  # precision -> max relative error (max|onnx - torch| / max|torch|)
    wrap: Callable[[SanaComponents], nn.Module]

    @property
    def quick_parity_sizes(self) -> tuple[dict[str, int], ...]:
        """The smallest parity size (fewest input elements): the runtime's check before it serves an export."""
        return (min(self.parity_sizes, key=self._input_elements),)

    def _input_elements(self, sizes: dict[str, int]) -> int:
        return sum(math.prod(t.resolve(sizes)) for t in self.inputs)

    def dummy_inputs(self, components: SanaComponents, sizes: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
        """Seeded inputs of the given sizes, valid for the component (e.g. in-vocabulary token ids)."""
        g = torch.Generator().manual_seed(seed)
        out = {}
        for spec in self.inputs:
            shape = spec.resolve(sizes)
            if spec.name == "timestep":
                out[spec.name] = torch.randint(0, 1000, shape, generator=g).float()
            elif spec.name == "guidance":  # Sana-Sprint: guidance_scale x 0.1, scales 0..8
                out[spec.name] = 0.8 * torch.rand(shape, generator=g)
            elif spec.name == "input_ids":
                vocab = components.preset.text_encoder.get("vocab_size", 256)
                out[spec.name] = torch.randint(4, min(vocab, 260), shape, generator=g)
            elif spec.dtype == torch.int64:  # attention masks: keep a prefix of each row, at least one token
                lengths = torch.randint(1, shape[1] + 1, (shape[0],), generator=g)
                lengths[0] = shape[1]
                out[spec.name] = (torch.arange(shape[1])[None] < lengths[:, None]).long()
            else:
                out[spec.name] = torch.randn(shape, generator=g)
        return out


class _TransformerIO(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, latent, timestep, encoder_hidden_states, encoder_attention_mask, guidance=None):
        return self.model(latent, timestep, encoder_hidden_states, encoder_attention_mask, guidance).float()


class _TransformerTextIO(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, encoder_hidden_states):
        return self.model.text_kv(encoder_hidden_states).float()


class _TransformerCachedIO(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, latent, timestep, text_kv, encoder_attention_mask, guidance=None):
        return self.model.forward_cached(latent, timestep, text_kv, encoder_attention_mask, guidance).float()


class _TransformerControlIO(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, latent, timestep, text_kv, encoder_attention_mask, controlnet_residuals):
        return self.model.forward_cached(
            latent, timestep, text_kv, encoder_attention_mask, controlnet_residuals=controlnet_residuals
        ).float()


class _TransformerPagIO(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, latent, timestep, text_kv, encoder_attention_mask, pag_identity):
        return self.model.forward_cached(
            latent, timestep, text_kv, encoder_attention_mask, pag_identity=pag_identity
        ).float()


class _ControlNetIO(nn.Module):
    def __init__(self, controlnet: nn.Module) -> None:
        super().__init__()
        self.controlnet = controlnet

    def forward(
        self, latent, timestep, encoder_hidden_states, encoder_attention_mask, controlnet_cond, conditioning_scale
    ):
        return self.controlnet(
            latent, timestep, encoder_hidden_states, encoder_attention_mask, controlnet_cond, conditioning_scale
        ).float()


class _VaeDecoderIO(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(latent.to(dtype), return_dict=False)[0].float()


class _VaeEncoderIO(nn.Module):
    """DC-AE encoder: image (B, 3, H, W) in [-1, 1] -> ``latent`` (B, 32, H/32, W/32), unscaled (deterministic: the
    DC-AE has no posterior to sample)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image):
        dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(image.to(dtype), return_dict=False)[0].float()


class _TextEncoderIO(nn.Module):
    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids, attention_mask):
        return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)[0].float()


def _guidance_inputs(components: SanaComponents) -> tuple[TensorSpec, ...]:
    """Sana-Sprint's transformer graphs take the embedded guidance (B,) as their last input (no CFG batch)."""
    return (TensorSpec("guidance", ("batch",)),) if components.preset.transformer.guidance_embeds else ()


def transformer_spec(components: SanaComponents) -> ExportSpec:
    caption = components.preset.transformer.caption_channels
    return ExportSpec(
        component="transformer",
        inputs=(
            TensorSpec("latent", ("batch", LATENT_CHANNELS, "latent_h", "latent_w")),
            TensorSpec("timestep", ("batch",)),
            TensorSpec("encoder_hidden_states", ("batch", "text_len", caption)),
            TensorSpec("encoder_attention_mask", ("batch", "text_len"), torch.int64),
            *_guidance_inputs(components),
        ),
        outputs=(TensorSpec("noise_pred", ("batch", LATENT_CHANNELS, "latent_h", "latent_w")),),
        axes={
            "batch": AxisRange(1, 64),
            "latent_h": AxisRange(2, 512),
            "latent_w": AxisRange(2, 512),
            "text_len": AxisRange(TEXT_MIN_TOKENS, 1024),
        },
        export_sizes={"batch": 2, "latent_h": 20, "latent_w": 28, "text_len": 40},
        parity_sizes=(
            {"batch": 1, "latent_h": 32, "latent_w": 32, "text_len": TEXT_MAX_LENGTH},
            {"batch": 1, "latent_h": 24, "latent_w": 32, "text_len": TEXT_MAX_LENGTH},
            {"batch": 1, "latent_h": 32, "latent_w": 24, "text_len": 77},
            {"batch": 2, "latent_h": 48, "latent_w": 64, "text_len": TEXT_MAX_LENGTH},
        ),
        tolerance={"fp32": 1e-5, "fp16": 2e-2, "bf16": 5e-2},
        wrap=lambda c: _TransformerIO(c.get("transformer")),
    )


def transformer_text_spec(components: SanaComponents) -> ExportSpec:
    """Caption projection + every block's cross-attention K/V, once per request (opt-in split)."""
    t = components.preset.transformer
    base = transformer_spec(components)
    return ExportSpec(
        component="transformer_text",
        inputs=(TensorSpec("encoder_hidden_states", ("batch", "text_len", t.caption_channels)),),
        outputs=(TensorSpec("text_kv", (t.num_layers, 2, "batch", "text_len", t.hidden_size)),),
        axes={"batch": base.axes["batch"], "text_len": base.axes["text_len"]},
        export_sizes={"batch": 2, "text_len": 40},
        parity_sizes=(
            {"batch": 1, "text_len": TEXT_MAX_LENGTH},
            {"batch": 2, "text_len": 77},
            {"batch": 3, "text_len": 120},
        ),
        tolerance=base.tolerance,
        wrap=lambda c: _TransformerTextIO(c.get("transformer")),
    )


def transformer_cached_spec(components: SanaComponents) -> ExportSpec:
    """One denoising step that takes the caption K/V from ``transformer_text`` (opt-in split)."""
    t = components.preset.transformer
    base = transformer_spec(components)
    inputs = list(base.inputs)
    inputs[2] = TensorSpec("text_kv", (t.num_layers, 2, "batch", "text_len", t.hidden_size))
    return ExportSpec(
        component="transformer_cached",
        inputs=tuple(inputs),
        outputs=base.outputs,
        axes=base.axes,
        export_sizes=base.export_sizes,
        parity_sizes=base.parity_sizes,
        tolerance=base.tolerance,
        wrap=lambda c: _TransformerCachedIO(c.get("transformer")),
    )


CONTROLNET_DEFAULT_LAYERS = 7  # diffusers' SanaControlNetModel default, and every released Sana ControlNet's


def control_blocks(components: SanaComponents) -> int:
    """How many ControlNet residuals the ``transformer_control`` graph takes: one per ControlNet block, at most one
    per transformer block after the first (diffusers adds sample k after block k + 1 and drops the rest)."""
    cn = components.controlnet
    layers = cn.config.num_layers if cn is not None else CONTROLNET_DEFAULT_LAYERS
    return max(1, min(layers, components.preset.transformer.num_layers - 1))


def _step_inputs(components: SanaComponents) -> list[TensorSpec]:
    """The cached step graph's inputs without Sana-Sprint's guidance (ControlNet and PAG run with base Sana)."""
    return [t for t in transformer_cached_spec(components).inputs if t.name != "guidance"]


def transformer_control_spec(components: SanaComponents) -> ExportSpec:
    """The cached step graph that adds a ControlNet's block residuals (``controlnet`` graph output) to its tokens."""
    t = components.preset.transformer
    base = transformer_cached_spec(components)
    residuals = TensorSpec(
        "controlnet_residuals", (control_blocks(components), "batch", "latent_h", "latent_w", t.hidden_size)
    )
    return ExportSpec(
        component="transformer_control",
        inputs=(*_step_inputs(components), residuals),
        outputs=base.outputs,
        axes=base.axes,
        export_sizes=base.export_sizes,
        parity_sizes=base.parity_sizes,
        tolerance=base.tolerance,
        wrap=lambda c: _TransformerControlIO(c.get("transformer")),
    )


def transformer_pag_spec(components: SanaComponents) -> ExportSpec:
    """The cached step graph with PAG's ``pag_identity`` (batch, num_layers): 1 where a row's self-attention in that
    block is the identity (the perturbed branch), 0 elsewhere; one call runs [uncond, cond, perturbed]."""
    t = components.preset.transformer
    base = transformer_cached_spec(components)
    return ExportSpec(
        component="transformer_pag",
        inputs=(*_step_inputs(components), TensorSpec("pag_identity", ("batch", t.num_layers))),
        outputs=base.outputs,
        axes=base.axes,
        export_sizes=base.export_sizes,
        parity_sizes=base.parity_sizes,
        tolerance=base.tolerance,
        wrap=lambda c: _TransformerPagIO(c.get("transformer")),
    )


def controlnet_spec(components: SanaComponents) -> ExportSpec:
    """A Sana ControlNet: the denoiser's inputs plus the control latents and the scale -> its block residuals
    (num_layers, batch, latent_h, latent_w, C), already scaled, in the layout ``transformer_control`` takes."""
    cfg = components.get("controlnet").config
    base = transformer_spec(components)
    latent = TensorSpec("latent", ("batch", LATENT_CHANNELS, "latent_h", "latent_w"))
    return ExportSpec(
        component="controlnet",
        inputs=(
            latent,
            TensorSpec("timestep", ("batch",)),
            TensorSpec("encoder_hidden_states", ("batch", "text_len", cfg.caption_channels)),
            TensorSpec("encoder_attention_mask", ("batch", "text_len"), torch.int64),
            TensorSpec("controlnet_cond", ("batch", LATENT_CHANNELS, "latent_h", "latent_w")),
            TensorSpec("conditioning_scale", (1,)),
        ),
        outputs=(
            TensorSpec("controlnet_residuals", (cfg.num_layers, "batch", "latent_h", "latent_w", cfg.hidden_size)),
        ),
        axes=base.axes,
        export_sizes=base.export_sizes,
        parity_sizes=base.parity_sizes,
        tolerance=base.tolerance,
        wrap=lambda c: _ControlNetIO(c.get("controlnet")),
    )


def vae_spec(components: SanaComponents) -> ExportSpec:
    # Latents of at least 6x6. DC-AE's multiscale attention takes a quadratic path when H*W <= attention_head_dim
    # and the linear one above; the graph is traced on the linear path, which computes the same ReLU linear
    # attention (the order of the matrix products differs), so it matches diffusers at every size and head size.
    return ExportSpec(
        component="vae",
        inputs=(TensorSpec("latent", ("batch", LATENT_CHANNELS, "latent_h", "latent_w")),),
        outputs=(TensorSpec("sample", ("batch", 3, f"{VAE_SCALE}*latent_h", f"{VAE_SCALE}*latent_w")),),
        axes={"batch": AxisRange(1, 64), "latent_h": AxisRange(6, 512), "latent_w": AxisRange(6, 512)},
        export_sizes={"batch": 2, "latent_h": 10, "latent_w": 14},
        parity_sizes=(
            {"batch": 1, "latent_h": 8, "latent_w": 8},
            {"batch": 1, "latent_h": 6, "latent_w": 8},
            {"batch": 1, "latent_h": 8, "latent_w": 6},
            {"batch": 2, "latent_h": 12, "latent_w": 16},
        ),
        tolerance={"fp32": 1e-5, "fp16": 2e-2, "bf16": 5e-2},
        wrap=lambda c: _VaeDecoderIO(c.get("vae")),
    )


def vae_encoder_spec(components: SanaComponents) -> ExportSpec:
    """The DC-AE encoder; the image axes are derived (32 x the latent axes), so every size it takes is a valid one.
    Latents of at least 6x6, as for the decoder: the encoder's last stage runs the same multiscale attention."""
    return ExportSpec(
        component="vae_encoder",
        inputs=(TensorSpec("image", ("batch", 3, f"{VAE_SCALE}*latent_h", f"{VAE_SCALE}*latent_w")),),
        outputs=(TensorSpec("latent", ("batch", LATENT_CHANNELS, "latent_h", "latent_w")),),
        axes={"batch": AxisRange(1, 64), "latent_h": AxisRange(6, 512), "latent_w": AxisRange(6, 512)},
        export_sizes={"batch": 2, "latent_h": 10, "latent_w": 14},
        parity_sizes=(
            {"batch": 1, "latent_h": 8, "latent_w": 8},
            {"batch": 1, "latent_h": 6, "latent_w": 8},
            {"batch": 1, "latent_h": 8, "latent_w": 6},
            {"batch": 2, "latent_h": 12, "latent_w": 16},
        ),
        tolerance={"fp32": 1e-5, "fp16": 2e-2, "bf16": 5e-2},
        wrap=lambda c: _VaeEncoderIO(c.get("vae")),
    )


def text_encoder_spec(components: SanaComponents) -> ExportSpec:
    hidden = components.preset.text_encoder.get("hidden_size", 2304)
    return ExportSpec(
        component="text_encoder",
        inputs=(
            TensorSpec("input_ids", ("batch", "seq"), torch.int64),
            TensorSpec("attention_mask", ("batch", "seq"), torch.int64),
        ),
        outputs=(TensorSpec("last_hidden_state", ("batch", "seq", hidden)),),
        axes={"batch": AxisRange(1, 64), "seq": AxisRange(TEXT_MIN_TOKENS, 4096)},
        export_sizes={"batch": 2, "seq": 48},
        parity_sizes=(
            {"batch": 1, "seq": TEXT_MAX_LENGTH},
            {"batch": 2, "seq": 77},
            {"batch": 1, "seq": 333},
        ),
        tolerance={"fp32": 1e-5, "fp16": 2e-2, "bf16": 5e-2},
        wrap=lambda c: _TextEncoderIO(c.get("text_encoder")),
    )


SPECS: dict[str, Callable[[SanaComponents], ExportSpec]] = {
    "transformer": transformer_spec,
    "vae": vae_spec,
    "text_encoder": text_encoder_spec,
    "transformer_text": transformer_text_spec,
    "transformer_cached": transformer_cached_spec,
    "vae_encoder": vae_encoder_spec,
    "transformer_control": transformer_control_spec,
    "transformer_pag": transformer_pag_spec,
    "controlnet": controlnet_spec,
}
