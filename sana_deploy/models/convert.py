"""Key mapping between NVlabs' original Sana checkpoints and the diffusers layout.

The rules are listed in docs/SANA.md#checkpoint-key-mapping.
"""

from __future__ import annotations

import re

import torch

# keys NVlabs checkpoints carry that the inference model does not use
DROPPED_PREFIXES = ("pos_embed", "y_embedder.y_embedding", "logvar_linear.")
_PREFIXES = ("model.diffusion_model.", "module.")

# whole-key renames (original -> diffusers), applied to the part after "blocks.{i}." for block keys
_TOP = {
    "x_embedder.proj.": "patch_embed.proj.",
    "t_embedder.mlp.0.": "time_embed.emb.timestep_embedder.linear_1.",
    "t_embedder.mlp.2.": "time_embed.emb.timestep_embedder.linear_2.",
    "t_block.1.": "time_embed.linear.",
    "y_embedder.y_proj.fc1.": "caption_projection.linear_1.",
    "y_embedder.y_proj.fc2.": "caption_projection.linear_2.",
    "attention_y_norm.": "caption_norm.",
    "final_layer.linear.": "proj_out.",
    "final_layer.scale_shift_table": "scale_shift_table",
}
# Sana-Sprint (a ``cfg_embedder`` in the checkpoint): the timestep and guidance embedders sit directly under
# ``time_embed`` (diffusers' SanaCombinedTimestepGuidanceEmbeddings), not under ``time_embed.emb``
_SPRINT_TOP = {
    **{k: v.replace("time_embed.emb.", "time_embed.") for k, v in _TOP.items()},
    "cfg_embedder.mlp.0.": "time_embed.guidance_embedder.linear_1.",
    "cfg_embedder.mlp.2.": "time_embed.guidance_embedder.linear_2.",
}
_BLOCK = {
    "scale_shift_table": "scale_shift_table",
    "attn.proj.": "attn1.to_out.0.",
    "attn.q_norm.": "attn1.norm_q.",
    "attn.k_norm.": "attn1.norm_k.",
    "cross_attn.q_linear.": "attn2.to_q.",
    "cross_attn.proj.": "attn2.to_out.0.",
    "cross_attn.q_norm.": "attn2.norm_q.",
    "cross_attn.k_norm.": "attn2.norm_k.",
    "mlp.inverted_conv.conv.": "ff.conv_inverted.",
    "mlp.depth_conv.conv.": "ff.conv_depth.",
    "mlp.point_conv.conv.": "ff.conv_point.",
}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.*)$")


def is_nvlabs(state_dict: dict[str, torch.Tensor]) -> bool:
    """Original-format detection, as diffusers does it: cross-attention q_linear/kv_linear keys."""
    return any(k.endswith(("cross_attn.q_linear.weight", "cross_attn.kv_linear.weight")) for k in state_dict)


def unwrap(checkpoint: dict) -> dict[str, torch.Tensor]:
    """``{"state_dict": ...}`` nesting and ``model.diffusion_model.`` prefixes removed."""
    sd = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    out = {}
    for k, v in sd.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p) :]
        out[k] = v
    return out


def _rename(key: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if key == old or (old.endswith(".") and key.startswith(old)):
            return new + key[len(old) :]
    return None


def _splits(value: object, parts: int) -> bool:
    """Whether a fused weight splits into ``parts`` equal chunks along its first dimension."""
    return isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] % parts == 0 and value.shape[0] > 0


def is_sprint_nvlabs(state_dict: dict[str, torch.Tensor]) -> bool:
    """An original Sana-Sprint checkpoint: it has the guidance embedder (``cfg_embedder``)."""
    return any(k.startswith("cfg_embedder.") for k in state_dict)


def nvlabs_to_diffusers(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Convert an original Sana (or Sana-Sprint) state dict; returns (diffusers state dict, keys left unmapped)."""
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    top = _SPRINT_TOP if is_sprint_nvlabs(state_dict) else _TOP
    for key, value in state_dict.items():
        if key.startswith(DROPPED_PREFIXES):
            continue
        m = _BLOCK_RE.match(key)
        if m is None:
            new = _rename(key, top)
            if new is None:
                unmapped.append(key)
            else:
                out[new] = value
            continue
        i, rest = m.groups()
        pre = f"transformer_blocks.{i}."
        if rest in ("attn.qkv.weight", "cross_attn.kv_linear.weight", "cross_attn.kv_linear.bias") and not _splits(
            value, 3 if rest == "attn.qkv.weight" else 2
        ):
            unmapped.append(key)  # a fused weight that cannot be split is reported, not guessed at
        elif rest == "attn.qkv.weight":
            q, k, v = torch.chunk(value, 3, dim=0)
            out.update({pre + "attn1.to_q.weight": q, pre + "attn1.to_k.weight": k, pre + "attn1.to_v.weight": v})
        elif rest.startswith("cross_attn.kv_linear."):
            suffix = rest.rsplit(".", 1)[1]
            k, v = torch.chunk(value, 2, dim=0)
            out.update({pre + f"attn2.to_k.{suffix}": k, pre + f"attn2.to_v.{suffix}": v})
        else:
            new = _rename(rest, _BLOCK)
            if new is None:
                unmapped.append(key)
            else:
                out[pre + new] = value
    return out, unmapped


def diffusers_to_nvlabs(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse mapping (fuses q/k/v and k/v back); used to write original-format checkpoints."""
    sprint = any(k.startswith("time_embed.guidance_embedder.") for k in state_dict)
    top_inv = {v: k for k, v in (_SPRINT_TOP if sprint else _TOP).items()}
    block_inv = {v: k for k, v in _BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    blocks: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        m = re.match(r"^transformer_blocks\.(\d+)\.(.*)$", key)
        if m is None:
            out[_rename(key, top_inv) or key] = value
        else:
            blocks.setdefault(m.group(1), {})[m.group(2)] = value
    for i, b in blocks.items():
        pre = f"blocks.{i}."
        out[pre + "attn.qkv.weight"] = torch.cat([b.pop(f"attn1.to_{n}.weight") for n in "qkv"], dim=0)
        for suffix in ("weight", "bias"):
            out[pre + f"cross_attn.kv_linear.{suffix}"] = torch.cat(
                [b.pop(f"attn2.to_k.{suffix}"), b.pop(f"attn2.to_v.{suffix}")], dim=0
            )
        for rest, value in b.items():
            out[pre + (_rename(rest, block_inv) or rest)] = value
    return out
