"""Seeded random-weight Sana models: ``sana-tiny`` and real-size configs for benchmarks (no downloads).

Speed does not depend on weight values, so a real-size config with random weights benchmarks like the
released model. Everything is built from one seed, under a forked RNG, so it is deterministic and leaves
the caller's random state alone.
"""

from __future__ import annotations

import torch
from torch import nn

from sana_deploy.contract import COMPONENTS
from sana_deploy.models.components import SanaComponents
from sana_deploy.models.config import SanaPreset, get_preset
from sana_deploy.models.tokenizer import VOCAB_SIZE, byte_tokenizer
from sana_deploy.models.transformer import SanaTransformer

DEFAULT_SEED = 0


def _init_transformer(model: nn.Module, generator: torch.Generator) -> None:
    """Fan-in scaled normal weights for every parameter (the module's own init leaves tables at zero)."""
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            std = fan_in**-0.5 if name.endswith("weight") and p.dim() > 1 else 0.1
            if name.endswith("norm.weight") or ".norm_" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(std * torch.randn(p.shape, generator=generator))


def random_components(
    preset: SanaPreset | str,
    components: tuple[str, ...] = COMPONENTS,
    dtype: torch.dtype = torch.float32,
    seed: int = DEFAULT_SEED,
) -> SanaComponents:
    """Build the chosen components of ``preset`` with seeded random weights."""
    from diffusers import AutoencoderDC
    from transformers import Gemma2Config, Gemma2Model

    preset = get_preset(preset) if isinstance(preset, str) else preset
    out = SanaComponents(preset=preset, model_id=preset.name, source=f"random weights (seed {seed})")
    with torch.random.fork_rng(devices=[]):
        if "transformer" in components:
            g = torch.Generator().manual_seed(seed)
            out.transformer = SanaTransformer(preset.transformer)
            _init_transformer(out.transformer, g)
            out.transformer = out.transformer.to(dtype).eval()
        if "vae" in components:
            torch.manual_seed(seed + 1)
            out.vae = AutoencoderDC(**preset.vae).eval()
            out.vae = out.vae if dtype == torch.float32 else out.vae.to(dtype)
        if "text_encoder" in components:
            torch.manual_seed(seed + 2)
            te_cfg = Gemma2Config(**preset.text_encoder)
            te_cfg._attn_implementation = "eager"
            out.text_encoder = Gemma2Model(te_cfg).to(dtype).eval()
    if "text_encoder" in components:
        # For real-size Gemma configs the byte tokenizer's ids are a valid subset of the vocabulary.
        assert preset.text_encoder["vocab_size"] >= VOCAB_SIZE
        out.tokenizer = byte_tokenizer()
    return out
