"""Sana linear DiT, written for export.

Parameter names are exactly those of diffusers' ``SanaTransformer2DModel`` so diffusers weights load
with a strict key check. What differs from diffusers is only how the graph is expressed:

* linear attention and Mix-FFN call the ``sana::`` custom ops (exported as ONNX local functions);
* the sincos positional embedding (2K/4K tiers) is computed from the run-time latent size inside the
  graph, with the preset's base size and interpolation scale -- there is no fixed-size ``pos_embed`` buffer;
* the linear-attention output is always clamped to the fp16 range (NVlabs behaviour; docs/SANA.md#linear-attention).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sana_deploy.models.config import LINEAR_HEAD_DIM, TransformerConfig
from sana_deploy.models.fp8 import Float8Linear
from sana_deploy.plugins.linear_attention import linear_attention
from sana_deploy.plugins.linear_attention.ref import FP16_MAX
from sana_deploy.plugins.mix_ffn import mix_ffn
from sana_deploy.plugins.mix_ffn.ref import dw_glu_ref

TIMESTEP_CHANNELS = 256


class RMSNorm(nn.Module):
    """diffusers ``RMSNorm`` (fp32 statistics, affine weight)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return (x * self.weight).to(dtype)


class Attention(nn.Module):
    """Projections of one attention layer; the attention itself is chosen by the caller."""

    def __init__(self, dim: int, kv_dim: int, heads: int, head_dim: int, bias: bool, qk_norm: bool) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(kv_dim, inner, bias=bias)
        self.to_v = nn.Linear(kv_dim, inner, bias=bias)
        self.norm_q = RMSNorm(inner, eps=1e-5) if qk_norm else None
        self.norm_k = RMSNorm(inner, eps=1e-5) if qk_norm else None
        self.to_out = nn.ModuleList([nn.Linear(inner, dim, bias=True)])

    def qkv(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        return q, k, v


class MixFFN(nn.Module):
    """GLUMBConv with diffusers' parameter names; runs as one ``sana::mix_ffn`` op."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.conv_inverted = nn.Conv2d(dim, hidden * 2, 1)
        self.conv_depth = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2)
        self.conv_point = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H, W, C)
        if isinstance(self.conv_inverted, Float8Linear):  # FP8 1x1 convs (models/fp8.py): GEMMs around the middle
            h = dw_glu_ref(self.conv_inverted.linear(x), self.conv_depth.weight, self.conv_depth.bias)
            return self.conv_point.linear(h)
        return mix_ffn(
            x,
            self.conv_inverted.weight.flatten(1),
            self.conv_inverted.bias,
            self.conv_depth.weight,
            self.conv_depth.bias,
            self.conv_point.weight.flatten(1),
        )


class SanaBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        c = cfg.hidden_size
        self.norm1 = nn.LayerNorm(c, elementwise_affine=False, eps=cfg.norm_eps)
        self.attn1 = Attention(c, c, cfg.num_attention_heads, LINEAR_HEAD_DIM, cfg.attention_bias, cfg.qk_norm)
        self.norm2 = nn.LayerNorm(c, elementwise_affine=False, eps=cfg.norm_eps)
        self.attn2 = Attention(c, c, cfg.num_cross_attention_heads, cfg.cross_attention_head_dim, True, cfg.qk_norm)
        self.ff = MixFFN(c, cfg.ffn_hidden)
        self.scale_shift_table = nn.Parameter(torch.zeros(6, c))
        self.eps = cfg.linear_attention_eps

    def text_kv(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of the caption tokens: step-invariant, computable once per prompt."""
        k, v = self.attn2.to_k(y), self.attn2.to_v(y)
        if self.attn2.norm_k is not None:
            k = self.attn2.norm_k(k)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor],
        mask_bias: torch.Tensor,
        t0: torch.Tensor,
        height: int,
        width: int,
        identity: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``identity`` (B,) bool: PAG's perturbed rows, whose self-attention is the identity (its values)."""
        b, n, c = x.shape
        mod = self.scale_shift_table[None] + t0.reshape(b, 6, c)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)

        h = (self.norm1(x) * (1 + scale_msa) + shift_msa).to(x.dtype)
        q, k, v = self.attn1.qkv(h, h)
        attn = linear_attention(q, k, v, self.attn1.heads, self.eps)
        if identity is not None:  # docs/VARIANTS.md#pag-perturbed-attention-guidance
            attn = torch.where(identity[:, None, None], v.to(attn.dtype), attn)
        a = self.attn1.to_out[0](attn)
        x = x + gate_msa * a.clamp(-FP16_MAX, FP16_MAX)

        x = x + self.cross_attention(x, kv, mask_bias)

        h = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        f = self.ff(h.reshape(b, height, width, c)).reshape(b, n, c)
        return x + gate_mlp * f

    def cross_attention(
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask_bias: torch.Tensor
    ) -> torch.Tensor:
        b = x.shape[0]
        q = self.attn2.to_q(x)
        if self.attn2.norm_q is not None:
            q = self.attn2.norm_q(q)
        k, v = kv
        heads = self.attn2.heads
        q, k, v = (t.reshape(b, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_bias)
        return self.attn2.to_out[0](o.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[3]).to(q.dtype))


class _TimestepEmbedder(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(TIMESTEP_CHANNELS, c)
        self.linear_2 = nn.Linear(c, c)


def _sinusoid(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """diffusers' ``Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)``: ``cat[cos, sin]`` of t·freqs."""
    # fp32 frequencies built here, not kept in a buffer: ``module.to(fp16)`` would cast a buffer, and t·freqs
    # with t up to 999 in fp16 is off by up to ~0.5 rad (a ~5% time-embedding error, 20x PyTorch's own).
    half = TIMESTEP_CHANNELS // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(dtype)


class _TimeEmbed(nn.Module):
    """adaLN-single: diffusers ``AdaLayerNormSingle`` layout (``emb.timestep_embedder`` + ``linear``)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.emb = nn.Module()
        self.emb.timestep_embedder = _TimestepEmbedder(c)
        self.linear = nn.Linear(c, 6 * c)

    def forward(
        self, t: torch.Tensor, dtype: torch.dtype, guidance: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        te = self.emb.timestep_embedder
        embedded = te.linear_2(F.silu(te.linear_1(_sinusoid(t, dtype))))
        return self.linear(F.silu(embedded)), embedded


class _TimeGuidanceEmbed(nn.Module):
    """Sana-Sprint's ``SanaCombinedTimestepGuidanceEmbeddings`` layout (``timestep_embedder``,
    ``guidance_embedder``, ``linear``): the two embeddings are summed, then SiLU -> Linear(C, 6C)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.timestep_embedder = _TimestepEmbedder(c)
        self.guidance_embedder = _TimestepEmbedder(c)
        self.linear = nn.Linear(c, 6 * c)

    def forward(
        self, t: torch.Tensor, dtype: torch.dtype, guidance: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if guidance is None:
            raise ValueError("This transformer embeds guidance (Sana-Sprint): pass guidance (B,) with the timestep.")
        te, ge = self.timestep_embedder, self.guidance_embedder
        embedded = te.linear_2(F.silu(te.linear_1(_sinusoid(t, dtype))))
        embedded = embedded + ge.linear_2(F.silu(ge.linear_1(_sinusoid(guidance, dtype))))
        return self.linear(F.silu(embedded)), embedded


class _CaptionProjection(nn.Module):
    def __init__(self, in_features: int, c: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, c)
        self.linear_2 = nn.Linear(c, c)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(y), approximate="tanh"))


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_channels, cfg.hidden_size, cfg.patch_size, cfg.patch_size)
        self.base_size = float(cfg.sample_size)
        self.interpolation_scale = cfg.interpolation_scale
        quarter = cfg.hidden_size // 4
        omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
        self.register_buffer("omega", omega.float(), persistent=False)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        _, _, h, w = latent.shape
        x = self.proj(latent).flatten(2).transpose(1, 2)
        if self.interpolation_scale is None:
            return x
        return (x + self.pos_embed(h, w)[None]).to(x.dtype)

    def pos_embed(self, h: int, w: int) -> torch.Tensor:
        """2D sincos table for an h x w latent, positions normalised to ``base_size``.

        See docs/SANA.md#positional-embedding.
        """
        dev = self.omega.device
        pos_h = torch.arange(h, device=dev, dtype=torch.float32) / (h / self.base_size) / self.interpolation_scale
        pos_w = torch.arange(w, device=dev, dtype=torch.float32) / (w / self.base_size) / self.interpolation_scale

        def sincos(pos: torch.Tensor) -> torch.Tensor:
            out = pos[:, None] * self.omega[None]
            return torch.cat([torch.sin(out), torch.cos(out)], dim=-1)

        ew, eh = sincos(pos_w), sincos(pos_h)  # (W, D/2), (H, D/2); w comes first, as in diffusers
        d2 = ew.shape[-1]
        table = torch.cat([ew[None].expand(h, w, d2), eh[:, None].expand(h, w, d2)], dim=-1)
        return table.reshape(h * w, 2 * d2)


class SanaTransformer(nn.Module):
    """Sana linear DiT. ``forward(latent, timestep, encoder_hidden_states, encoder_attention_mask[, guidance])``.

    latent (B, 32, H, W); timestep (B,) float, already ⌊σ·1000⌋ as the scheduler makes it (Sana-Sprint: the
    continuous TrigFlow time in [0, 1]); encoder_hidden_states (B, L, caption_channels); encoder_attention_mask
    (B, L) with 1 = keep; guidance (B,) float, only for a guidance-embedded (Sana-Sprint) config: the guidance
    scale times ``guidance_embeds_scale``. Returns the flow prediction v (B, 32, H, W).
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.config = cfg
        c = cfg.hidden_size
        self.patch_embed = _PatchEmbed(cfg)
        self.time_embed = _TimeGuidanceEmbed(c) if cfg.guidance_embeds else _TimeEmbed(c)
        self.caption_projection = _CaptionProjection(cfg.caption_channels, c)
        self.caption_norm = RMSNorm(c, eps=1e-5)
        self.transformer_blocks = nn.ModuleList([SanaBlock(cfg) for _ in range(cfg.num_layers)])
        self.scale_shift_table = nn.Parameter(torch.zeros(2, c))
        self.norm_out = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(c, cfg.out_channels * cfg.patch_size**2)

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    def forward(
        self,
        latent: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        y = self._caption(encoder_hidden_states)
        kv = [b.text_kv(y) for b in self.transformer_blocks]
        return self._denoise(latent, timestep, kv, encoder_attention_mask, guidance)

    def _caption(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.caption_norm(self.caption_projection(encoder_hidden_states.to(self.dtype)))

    def text_kv(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """Every block's cross-attention K and V of the caption, stacked as (num_layers, 2, B, L, C).

        They depend only on the prompt, so a denoising loop can compute them once per request and call
        :meth:`forward_cached` at every step (docs/SANA.md#cross-attention).
        """
        y = self._caption(encoder_hidden_states)
        return torch.stack([torch.stack(block.text_kv(y)) for block in self.transformer_blocks])

    def forward_cached(
        self,
        latent: torch.Tensor,
        timestep: torch.Tensor,
        text_kv: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        guidance: torch.Tensor | None = None,
        controlnet_residuals: torch.Tensor | None = None,
        pag_identity: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One denoising step with the caption K/V from :meth:`text_kv`.

        ``controlnet_residuals`` (K, B, H, W, C): a ControlNet's block outputs, sample k added after block k + 1
        (diffusers' ``controlnet_block_samples``). ``pag_identity`` (B, num_layers): 1 where a row's self-attention
        in that block is the identity (PAG's perturbed branch), 0 elsewhere.
        """
        text_kv = text_kv.to(self.dtype)
        kv = [(text_kv[i, 0], text_kv[i, 1]) for i in range(len(self.transformer_blocks))]
        return self._denoise(latent, timestep, kv, encoder_attention_mask, guidance, controlnet_residuals, pag_identity)

    def _denoise(
        self,
        latent: torch.Tensor,
        timestep: torch.Tensor,
        kv: list[tuple[torch.Tensor, torch.Tensor]],
        encoder_attention_mask: torch.Tensor,
        guidance: torch.Tensor | None = None,
        controlnet_residuals: torch.Tensor | None = None,
        pag_identity: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, _, h, w = latent.shape
        dtype = self.dtype
        x = self.patch_embed(latent.to(dtype))
        t0, embedded_t = self.time_embed(timestep, dtype, guidance)
        mask_bias = ((1 - encoder_attention_mask.to(dtype)) * -10000.0)[:, None, None, :]
        residuals = 0 if controlnet_residuals is None else controlnet_residuals.shape[0]
        for i, (block, block_kv) in enumerate(zip(self.transformer_blocks, kv, strict=True)):
            identity = None if pag_identity is None else pag_identity[:, i] > 0.5
            x = block(x, block_kv, mask_bias, t0, h, w, identity)
            if 0 < i <= residuals:  # ControlNet: sample i - 1 after block i (blocks 1..K)
                x = x + controlnet_residuals[i - 1].reshape(b, h * w, -1).to(dtype)
        shift, scale = (self.scale_shift_table[None] + embedded_t[:, None]).chunk(2, dim=1)
        x = self.proj_out(self.norm_out(x) * (1 + scale) + shift)
        return x.reshape(b, h, w, -1).permute(0, 3, 1, 2)
