"""Sana ControlNet, written for export, with the parameter names of diffusers' ``SanaControlNetModel``.

A copy of the first blocks of the transformer that sees the control image (its DC-AE latents): its own patch
embedding, adaLN-single time embedding, caption projection and ``num_layers`` Sana blocks (no q/k norm), plus a
zero-initialised ``input_block`` on the control latents and one ``controlnet_blocks[k]`` Linear per block. Its output
k (times ``conditioning_scale``) is added to the transformer's tokens after transformer block k + 1
(:meth:`~sana_deploy.models.transformer.SanaTransformer.forward_cached`). docs/VARIANTS.md#controlnet.

Weights load from a diffusers ControlNet folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, as
``SanaControlNetModel.save_pretrained`` writes it), or a pipeline folder with a ``controlnet/`` subfolder, with a
strict key check.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from sana_deploy.contract import model_dirname
from sana_deploy.errors import CheckpointError, fail
from sana_deploy.models.config import SanaPreset, TransformerConfig
from sana_deploy.models.transformer import RMSNorm, SanaBlock, _CaptionProjection, _PatchEmbed, _TimeEmbed

CONFIG_FILE = "config.json"
_SHOWN = 8


class SanaControlNet(nn.Module):
    """``forward(latent, timestep, encoder_hidden_states, encoder_attention_mask, controlnet_cond,
    conditioning_scale) -> (num_layers, B, H, W, C)``: the block residuals, already scaled."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.config = cfg
        c = cfg.hidden_size
        self.patch_embed = _PatchEmbed(cfg)
        self.time_embed = _TimeEmbed(c)
        self.caption_projection = _CaptionProjection(cfg.caption_channels, c)
        self.caption_norm = RMSNorm(c, eps=1e-5)
        self.transformer_blocks = nn.ModuleList([SanaBlock(cfg) for _ in range(cfg.num_layers)])
        self.input_block = nn.Linear(c, c)
        self.controlnet_blocks = nn.ModuleList([nn.Linear(c, c) for _ in range(cfg.num_layers)])

    @property
    def dtype(self) -> torch.dtype:
        return self.input_block.weight.dtype

    def forward(
        self,
        latent: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: torch.Tensor,
    ) -> torch.Tensor:
        b, _, h, w = latent.shape
        dtype = self.dtype
        x = self.patch_embed(latent.to(dtype))
        x = x + self.input_block(self.patch_embed(controlnet_cond.to(dtype)))
        t0, _ = self.time_embed(timestep, dtype)
        y = self.caption_norm(self.caption_projection(encoder_hidden_states.to(dtype)))
        mask_bias = ((1 - encoder_attention_mask.to(dtype)) * -10000.0)[:, None, None, :]
        scale = conditioning_scale.to(dtype).reshape(-1)[0]
        out = []
        for block, head in zip(self.transformer_blocks, self.controlnet_blocks, strict=True):
            x = block(x, block.text_kv(y), mask_bias, t0, h, w)
            out.append(head(x) * scale)
        return torch.stack(out).reshape(len(out), b, h, w, -1)


def controlnet_config(path: Path) -> TransformerConfig:
    """The block config of a diffusers ControlNet ``config.json`` (a CheckpointError naming the file otherwise)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        fail(f"Could not read the ControlNet config {path}: {exc}", CheckpointError)
    if not isinstance(data, dict):
        fail(f"{path} is not a JSON object; a Sana ControlNet folder has diffusers' config.json.", CheckpointError)
    if data.get("_class_name", "SanaControlNetModel") != "SanaControlNetModel":
        fail(f"{path} describes a {data['_class_name']}, not a SanaControlNetModel.", CheckpointError)
    try:
        cfg = TransformerConfig.from_diffusers({k: v for k, v in data.items() if k != "qk_norm"})
    except (TypeError, ValueError, ArithmeticError) as exc:
        fail(
            f"{path} has a value sana-deploy cannot use ({type(exc).__name__}: {exc}); check the file.", CheckpointError
        )
    cross = data.get("cross_attention_dim", cfg.hidden_size)
    if cross != cfg.hidden_size:
        fail(f"{path}: cross_attention_dim {cross} differs from the hidden size {cfg.hidden_size}.", CheckpointError)
    return cfg


def check_fits(cfg: TransformerConfig, preset: SanaPreset, source: str) -> None:
    """A ControlNet's residuals are added to the transformer's tokens: same width, same caption and latent
    channels, else a clear error naming both model sizes."""
    t = preset.transformer
    mine = (cfg.hidden_size, cfg.caption_channels, cfg.in_channels)
    theirs = (t.hidden_size, t.caption_channels, t.in_channels)
    if mine != theirs:
        fail(
            f"ControlNet {source} is for another model size: hidden size {cfg.hidden_size}, caption channels "
            f"{cfg.caption_channels}, latent channels {cfg.in_channels}; {preset.name} has {t.hidden_size}, "
            f"{t.caption_channels} and {t.in_channels}. Use a ControlNet trained for this model (a Sana ControlNet "
            f"of hidden size {t.hidden_size}).",
            CheckpointError,
        )
    if t.guidance_embeds:
        fail(
            f"ControlNet {source}: {preset.name} is a Sana-Sprint model; ControlNets run with base Sana and Sana-1.5 "
            f"(diffusers' SanaControlNetPipeline), not with the sCM solver.",
            CheckpointError,
        )


def _folder(path: Path) -> Path:
    path = Path(path)
    if path.is_dir() and not (path / CONFIG_FILE).exists() and (path / "controlnet" / CONFIG_FILE).exists():
        return path / "controlnet"
    return path


def controlnet_id(path: str | Path) -> str:
    """The name a ControlNet's engines are cached under: its folder's name (engines/<name>/controlnet/...)."""
    return model_dirname(str(Path(path).resolve()))


def folder_config(path: str | Path) -> TransformerConfig:
    """The block config of a ControlNet folder, without loading its weights (what engines need to know)."""
    folder = _folder(Path(path))
    if not folder.is_dir() or not (folder / CONFIG_FILE).exists():
        fail(
            f"--controlnet {path}: not a diffusers Sana ControlNet folder (config.json and "
            f"diffusion_pytorch_model.safetensors, as SanaControlNetModel.save_pretrained writes them).",
            CheckpointError,
        )
    return controlnet_config(folder / CONFIG_FILE)


def load_controlnet(path: str | Path, preset: SanaPreset, dtype: torch.dtype = torch.float32) -> SanaControlNet:
    """A Sana ControlNet from a diffusers folder, checked to fit ``preset``'s transformer."""
    from sana_deploy.models.loaders import _folder_state_dict

    cfg = folder_config(path)
    check_fits(cfg, preset, str(path))
    folder = _folder(Path(path))
    sd = {k: v for k, v in _folder_state_dict(folder).items() if k != "patch_embed.pos_embed"}
    model = SanaControlNet(cfg)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    mismatched = sorted(k for k in set(sd) & set(expected) if tuple(sd[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or mismatched:
        found = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        parts = [f"{what} ({len(keys)}): {', '.join(keys[:_SHOWN])}" for what, keys in found if keys]
        fail(f"ControlNet {path} does not match its config.json: " + "; ".join(parts), CheckpointError)
    model.load_state_dict(sd, strict=True)
    return model.to(dtype).eval()


def random_controlnet(preset: SanaPreset, num_layers: int = 1, seed: int = 0) -> SanaControlNet:
    """A seeded random-weight ControlNet for ``preset`` (tests and benchmarks). Unlike a freshly initialised
    diffusers one, ``input_block`` and ``controlnet_blocks`` are not zero, so its residuals are not either."""
    from dataclasses import replace

    from sana_deploy.models.random import _init_transformer

    cfg = replace(preset.transformer, num_layers=num_layers, qk_norm=False, guidance_embeds=False)
    with torch.random.fork_rng(devices=[]):
        model = SanaControlNet(cfg)
        _init_transformer(model, torch.Generator().manual_seed(seed))
    return model.eval()


def save_controlnet(model: SanaControlNet, folder: str | Path) -> Path:
    """Write ``model`` as a diffusers ControlNet folder that ``SanaControlNetModel.from_pretrained`` loads."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_diffusers()
    cfg.pop("qk_norm", None)
    cfg.pop("guidance_embeds", None)
    cfg.pop("guidance_embeds_scale", None)
    cfg.update({"_class_name": "SanaControlNetModel", "cross_attention_dim": model.config.hidden_size})
    (folder / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


__all__ = [
    "SanaControlNet",
    "check_fits",
    "controlnet_config",
    "controlnet_id",
    "folder_config",
    "load_controlnet",
    "random_controlnet",
    "save_controlnet",
]
