"""Model configuration: one dataclass per component plus named presets (gpt-fast style).

The numbers are documented in docs/SANA.md (#presets: dimensions, flow_shift and weight dtypes;
#positional-embedding; #dc-ae; #text-encoder). A preset describes *what* a released Sana variant is;
where the weights come from is the loaders' business.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sana_deploy.errors import fail

LINEAR_HEAD_DIM = 32  # Sana's self-attention head size is fixed (SanaMSBlock linear_head_dim)
VAE_SCALE = 32  # DC-AE f32: one latent pixel per 32x32 image pixels
LATENT_CHANNELS = 32
TEXT_MAX_LENGTH = 300
# The shortest text the graphs take (the min of the text encoder's ``seq`` and the transformer's ``text_len`` axes):
# the runtime runs the text encoder only up to the last real token, and "" is one token (BOS).
TEXT_MIN_TOKENS = 2


@dataclass(frozen=True)
class TransformerConfig:
    """Sana linear DiT hyper-parameters, in diffusers' ``SanaTransformer2DModel`` vocabulary."""

    num_layers: int
    hidden_size: int
    num_cross_attention_heads: int
    cross_attention_head_dim: int
    caption_channels: int = 2304
    mlp_ratio: float = 2.5
    sample_size: int = 32  # latent base size (image size / 32); also the PE base size
    interpolation_scale: float | None = None  # None: no positional embedding (512/1024 tiers)
    qk_norm: bool = False  # Sana 1.5: RMSNorm across heads on q and k
    in_channels: int = LATENT_CHANNELS
    out_channels: int = LATENT_CHANNELS
    patch_size: int = 1
    attention_bias: bool = False
    norm_eps: float = 1e-6
    linear_attention_eps: float = 1e-15  # diffusers' value (NVlabs uses 1e-8)
    # Sana-Sprint: the timestep embedding is summed with an embedding of the guidance input (guidance_scale times
    # guidance_embeds_scale, a model input, not CFG); docs/VARIANTS.md#sana-sprint-one-to-four-steps
    guidance_embeds: bool = False
    guidance_embeds_scale: float = 0.1

    @property
    def num_attention_heads(self) -> int:
        return self.hidden_size // LINEAR_HEAD_DIM

    @property
    def ffn_hidden(self) -> int:
        return int(self.mlp_ratio * self.hidden_size)

    @property
    def use_pe(self) -> bool:
        return self.interpolation_scale is not None

    def __post_init__(self) -> None:
        if self.hidden_size % LINEAR_HEAD_DIM:
            fail(f"hidden_size {self.hidden_size} must be a multiple of {LINEAR_HEAD_DIM} (Sana's linear head size).")
        if self.patch_size != 1:
            fail("Only patch_size 1 is supported (every released Sana uses it).")

    def to_diffusers(self) -> dict[str, Any]:
        """The ``config.json`` of the equivalent diffusers ``SanaTransformer2DModel``."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "num_attention_heads": self.num_attention_heads,
            "attention_head_dim": LINEAR_HEAD_DIM,
            "num_layers": self.num_layers,
            "num_cross_attention_heads": self.num_cross_attention_heads,
            "cross_attention_head_dim": self.cross_attention_head_dim,
            "cross_attention_dim": self.hidden_size,
            "caption_channels": self.caption_channels,
            "mlp_ratio": self.mlp_ratio,
            "attention_bias": self.attention_bias,
            "sample_size": self.sample_size,
            "patch_size": self.patch_size,
            "norm_elementwise_affine": False,
            "norm_eps": self.norm_eps,
            "interpolation_scale": self.interpolation_scale,
            "qk_norm": "rms_norm_across_heads" if self.qk_norm else None,
            "guidance_embeds": self.guidance_embeds,
            "guidance_embeds_scale": self.guidance_embeds_scale,
        }

    @classmethod
    def from_diffusers(cls, cfg: dict[str, Any]) -> TransformerConfig:
        head_dim = cfg.get("attention_head_dim", LINEAR_HEAD_DIM)
        if head_dim != LINEAR_HEAD_DIM:
            fail(f"attention_head_dim {head_dim} in the transformer config is not Sana's {LINEAR_HEAD_DIM}.")
        hidden = cfg.get("num_attention_heads", 70) * head_dim
        return cls(
            num_layers=cfg.get("num_layers", 20),
            hidden_size=hidden,
            num_cross_attention_heads=cfg.get("num_cross_attention_heads", 20),
            cross_attention_head_dim=cfg.get("cross_attention_head_dim", 112),
            caption_channels=cfg.get("caption_channels", 2304),
            mlp_ratio=cfg.get("mlp_ratio", 2.5),
            sample_size=cfg.get("sample_size", 32),
            interpolation_scale=cfg.get("interpolation_scale"),
            qk_norm=cfg.get("qk_norm") is not None,
            in_channels=cfg.get("in_channels", LATENT_CHANNELS),
            out_channels=cfg.get("out_channels") or cfg.get("in_channels", LATENT_CHANNELS),
            patch_size=cfg.get("patch_size", 1),
            attention_bias=cfg.get("attention_bias", False),
            norm_eps=cfg.get("norm_eps", 1e-6),
            guidance_embeds=bool(cfg.get("guidance_embeds", False)),
            guidance_embeds_scale=float(cfg.get("guidance_embeds_scale", 0.1)),
        )


_RES, _VIT = "ResBlock", "EfficientViTBlock"

# diffusers AutoencoderDC config of mit-han-lab/dc-ae-f32c32-sana-1.0 (docs/SANA.md#dc-ae)
DCAE_SANA_1_0: dict[str, Any] = {
    "in_channels": 3,
    "latent_channels": LATENT_CHANNELS,
    "attention_head_dim": 32,
    "encoder_block_types": [_RES, _RES, _RES, _VIT, _VIT, _VIT],
    "decoder_block_types": [_RES, _RES, _RES, _VIT, _VIT, _VIT],
    "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "decoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "encoder_layers_per_block": [2, 2, 2, 3, 3, 3],
    "decoder_layers_per_block": [3, 3, 3, 3, 3, 3],
    "encoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "decoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "upsample_block_type": "interpolate",
    "downsample_block_type": "Conv",
    "decoder_norm_types": "rms_norm",
    "decoder_act_fns": "silu",
    "scaling_factor": 0.41407,
}

# transformers Gemma2Config of gemma-2-2b-it (docs/SANA.md#text-encoder)
GEMMA2_2B: dict[str, Any] = {
    "vocab_size": 256000,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "sliding_window": 4096,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 8192,
    "hidden_activation": "gelu_pytorch_tanh",
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
}


@dataclass(frozen=True)
class SanaPreset:
    """Everything that identifies one Sana variant, independent of where its weights live."""

    name: str
    transformer: TransformerConfig
    vae: dict[str, Any] = field(default_factory=lambda: dict(DCAE_SANA_1_0))
    text_encoder: dict[str, Any] = field(default_factory=lambda: dict(GEMMA2_2B))
    flow_shift: float = 3.0
    dtype: str = "fp16"  # dtype the released transformer weights are in
    hub_id: str | None = None  # where users download it (never fetched by sana-deploy at run time)
    description: str = ""
    sigma_data: float = 0.5  # Sana-Sprint's TrigFlow data scale (SCMScheduler's sigma_data); unused by base Sana

    @property
    def sprint(self) -> bool:
        """Whether this is a Sana-Sprint model (guidance-embedded transformer, sCM solver, no CFG)."""
        return self.transformer.guidance_embeds

    @property
    def default_sampler(self) -> str:
        """The solver this model runs unless told otherwise: ``scm`` for Sana-Sprint, else ``flow-dpm-solver``."""
        return "scm" if self.sprint else "flow-dpm-solver"

    @property
    def resolution(self) -> int:
        """Native image size of the preset, in pixels."""
        return self.transformer.sample_size * VAE_SCALE

    @property
    def vae_scaling_factor(self) -> float:
        return float(self.vae.get("scaling_factor", 1.0))

    def replace(self, **changes: Any) -> SanaPreset:
        return dataclasses.replace(self, **changes)


def _t(depth: int, hidden: int, cross_heads: int, cross_dim: int, sample: int, pe: float | None = None, **kw: Any):
    return TransformerConfig(
        num_layers=depth,
        hidden_size=hidden,
        num_cross_attention_heads=cross_heads,
        cross_attention_head_dim=cross_dim,
        sample_size=sample,
        interpolation_scale=pe,
        **kw,
    )


_E = "Efficient-Large-Model/"


def _p(name: str, t: TransformerConfig, flow_shift: float, dtype: str, hub: str) -> SanaPreset:
    return SanaPreset(name, t, flow_shift=flow_shift, dtype=dtype, hub_id=hub)


PRESETS: dict[str, SanaPreset] = {
    p.name: p
    for p in [
        _p("sana-0.6b-512", _t(28, 1152, 16, 72, 16), 3.0, "fp16", _E + "Sana_600M_512px_diffusers"),
        # flow_shift 4.0 as in NVlabs' config (diffusers writes 3.0); a diffusers folder's scheduler config wins.
        _p("sana-0.6b-1024", _t(28, 1152, 16, 72, 32), 4.0, "fp16", _E + "Sana_600M_1024px_diffusers"),
        _p("sana-1.6b-512", _t(20, 2240, 20, 112, 16), 3.0, "fp16", _E + "Sana_1600M_512px_diffusers"),
        _p("sana-1.6b-1024", _t(20, 2240, 20, 112, 32), 3.0, "fp16", _E + "Sana_1600M_1024px_diffusers"),
        _p("sana-1.6b-1024-bf16", _t(20, 2240, 20, 112, 32), 3.0, "bf16", _E + "Sana_1600M_1024px_BF16_diffusers"),
        _p("sana-1.6b-2k", _t(20, 2240, 20, 112, 64, 1.0), 3.0, "bf16", _E + "Sana_1600M_2Kpx_BF16_diffusers"),
        _p("sana-1.6b-4k", _t(20, 2240, 20, 112, 128, 2.0), 6.0, "bf16", _E + "Sana_1600M_4Kpx_BF16_diffusers"),
        _p(
            "sana-1.5-1.6b-1024",
            _t(20, 2240, 20, 112, 32, qk_norm=True),
            3.0,
            "bf16",
            _E + "SANA1.5_1.6B_1024px_diffusers",
        ),
        _p(
            "sana-1.5-4.8b-1024",
            _t(60, 2240, 20, 112, 32, qk_norm=True),
            3.0,
            "bf16",
            _E + "SANA1.5_4.8B_1024px_diffusers",
        ),
        # Sana-Sprint: qk-norm and the guidance embedding; flow_shift is unused (the sCM solver has no shift)
        _p(
            "sana-sprint-0.6b-1024",
            _t(28, 1152, 16, 72, 32, qk_norm=True, guidance_embeds=True),
            3.0,
            "bf16",
            _E + "Sana_Sprint_0.6B_1024px_diffusers",
        ),
        _p(
            "sana-sprint-1.6b-1024",
            _t(20, 2240, 20, 112, 32, qk_norm=True, guidance_embeds=True),
            3.0,
            "bf16",
            _E + "Sana_Sprint_1.6B_1024px_diffusers",
        ),
    ]
}

# --- sana-tiny: a seeded random-weight Sana small enough to run the whole pipeline on a laptop CPU ---
TINY_GEMMA2: dict[str, Any] = {
    **GEMMA2_2B,
    "vocab_size": 260,  # the byte-level tokenizer in models/tokenizer.py
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "query_pre_attn_scalar": 32,
    "max_position_embeddings": 4096,
}
TINY_DCAE: dict[str, Any] = {
    **DCAE_SANA_1_0,
    "encoder_block_out_channels": [8, 16, 32, 32, 64, 64],
    "decoder_block_out_channels": [8, 16, 32, 32, 64, 64],
    "encoder_layers_per_block": [1, 1, 1, 1, 1, 1],
    "decoder_layers_per_block": [1, 1, 1, 1, 1, 1],
}
_TINY_T = _t(2, 64, 2, 32, 32, caption_channels=TINY_GEMMA2["hidden_size"])
TINY_PRESETS: dict[str, SanaPreset] = {
    "sana-tiny": SanaPreset(
        "sana-tiny", _TINY_T, dict(TINY_DCAE), dict(TINY_GEMMA2), 3.0, "fp32", description="seeded random weights"
    ),
    # 4K-style tiny model: sincos positional embedding with the 4K tier's base size and interpolation
    "sana-tiny-pe": SanaPreset(
        "sana-tiny-pe",
        dataclasses.replace(_TINY_T, sample_size=128, interpolation_scale=2.0),
        dict(TINY_DCAE),
        dict(TINY_GEMMA2),
        6.0,
        "fp32",
        description="seeded random weights, 4K-style positional embedding",
    ),
    # Sana-Sprint-style tiny model: qk-norm, guidance embedding, sCM solver
    "sana-sprint-tiny": SanaPreset(
        "sana-sprint-tiny",
        dataclasses.replace(_TINY_T, qk_norm=True, guidance_embeds=True),
        dict(TINY_DCAE),
        dict(TINY_GEMMA2),
        3.0,
        "fp32",
        description="seeded random weights, Sana-Sprint layout (guidance embedding, qk-norm, sCM solver)",
    ),
}
PRESETS.update(TINY_PRESETS)

DEFAULT_MODEL = "sana-tiny"


def get_preset(name: str) -> SanaPreset:
    """Look a preset up by name; an unknown name lists the valid ones."""
    key = name.lower()
    if key not in PRESETS:
        valid = ", ".join(sorted(PRESETS))
        fail(f"Unknown model preset {name!r}. Valid presets: {valid}. Or pass a path to a checkpoint.")
    return PRESETS[key]


def preset_for(transformer: TransformerConfig) -> SanaPreset | None:
    """The released preset whose transformer matches ``transformer`` exactly, if any."""
    for p in PRESETS.values():
        if p.transformer == transformer:
            return p
    return None
