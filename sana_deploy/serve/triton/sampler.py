"""The denoising loop the Triton pipeline model runs, on any engines shaped like the export spec.

Engines are callables ``engine(**inputs) -> {output name: tensor}`` (BLS, ONNX Runtime, or anything else); the
transformer and VAE are chosen per request by the profile that covers its size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sana_deploy.models.config import LATENT_CHANNELS, VAE_SCALE
from sana_deploy.runtime.solvers import make_solver
from sana_deploy.runtime.text import encode_prompts


@dataclass
class SanaLoop:
    tokenizer: object
    text_encoder: object
    transformers: dict  # profile name -> engine
    vaes: dict  # profile name -> engine
    profiles: list[dict]  # {"name", "latent_h": [min, max], "latent_w": [min, max]}
    flow_shift: float
    vae_scaling_factor: float
    sampler: str = "flow-dpm-solver"
    default_size: tuple[int, int] = (1024, 1024)  # (height, width)
    default_steps: int = 20
    default_guidance: float = 4.5

    @classmethod
    def from_meta(cls, meta: dict, version_dir: Path, engines: dict) -> SanaLoop:
        from transformers import AutoTokenizer

        return cls(
            tokenizer=AutoTokenizer.from_pretrained(version_dir / "tokenizer"),
            text_encoder=engines["text_encoder"],
            transformers=engines["transformer"],
            vaes=engines["vae"],
            profiles=meta["profiles"],
            flow_shift=meta["flow_shift"],
            vae_scaling_factor=meta["vae_scaling_factor"],
            sampler=meta.get("sampler", "flow-dpm-solver"),
            default_size=tuple(meta["default_size"]),
            default_steps=meta.get("num_inference_steps", 20),
            default_guidance=meta.get("guidance_scale", 4.5),
        )

    def profile_for(self, height: int, width: int) -> str:
        h, w = height // VAE_SCALE, width // VAE_SCALE
        if height % VAE_SCALE == 0 and width % VAE_SCALE == 0:
            for p in self.profiles:
                if p["latent_h"][0] <= h <= p["latent_h"][1] and p["latent_w"][0] <= w <= p["latent_w"][1]:
                    return p["name"]
        names = ", ".join(p["name"] for p in self.profiles)
        raise ValueError(
            f"{width}x{height} is not covered by this repository's profiles ({names}); use a size from them or "
            f"re-run `sana-deploy export-triton --profiles ...` with engines for it."
        )

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """One image as (H, W, 3) uint8."""
        height = int(height or self.default_size[0])
        width = int(width or self.default_size[1])
        steps = int(num_inference_steps or self.default_steps)
        guidance = float(self.default_guidance if guidance_scale is None else guidance_scale)
        profile = self.profile_for(height, width)
        cfg = guidance > 1.0
        emb, mask = encode_prompts(self.text_encoder, self.tokenizer, [prompt], [negative_prompt] if cfg else None)
        generator = torch.Generator().manual_seed(int(seed))
        x = torch.randn(1, LATENT_CHANNELS, height // VAE_SCALE, width // VAE_SCALE, generator=generator)
        solver = make_solver(self.sampler, steps, self.flow_shift)
        transformer = self.transformers[profile]
        for _ in range(steps):
            x_in = torch.cat([x, x]) if cfg else x
            v = transformer(
                latent=x_in,
                timestep=solver.model_timestep(x_in.shape[0]),
                encoder_hidden_states=emb,
                encoder_attention_mask=mask,
            )["noise_pred"].float()
            if cfg:
                v_uncond, v_cond = v.chunk(2)
                v = v_uncond + guidance * (v_cond - v_uncond)
            x = solver.step(v, x)
        sample = self.vaes[profile](latent=x / self.vae_scaling_factor)["sample"].float()
        image = ((sample[0] / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return image.permute(1, 2, 0).contiguous().numpy()
