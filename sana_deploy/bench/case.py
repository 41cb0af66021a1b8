"""What one benchmark measures (model, profile, steps, CFG, precision, device) and the fixed request it times."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from sana_deploy.contract import check_base, parse_profiles
from sana_deploy.errors import fail
from sana_deploy.models.config import PRESETS, TEXT_MAX_LENGTH, VAE_SCALE
from sana_deploy.runtime.generate import MAX_STEPS

STAGES = ("text_encode", "step", "loop", "vae_decode", "e2e")
STAGE_LABELS = {
    "text_encode": "text encode",
    "step": "denoising step",
    "loop": "denoising loop",
    "vae_decode": "VAE decode",
    "e2e": "end to end",
}
# Stages that need the DC-AE decode in the timed request (without them it stops at the latents).
DECODE_STAGES = ("vae_decode", "e2e")
PROMPT = "a cyberpunk cat with a neon sign that says Sana, ultra detailed, 8k"
NEGATIVE_PROMPT = ""


@dataclass(frozen=True)
class BenchCase:
    """One (model, profile) point: a request of one ``profile``×``profile`` image (resolution binning off, so
    every backend generates exactly that size); CFG doubles the transformer batch."""

    model: str
    profile: int
    steps: int | None = None  # None: the model's default (20 for Flow-DPM-Solver++, 2 for Sana-Sprint's sCM)
    guidance_scale: float = 4.5  # CFG for base Sana; Sana-Sprint's embedded guidance (no CFG batch)
    precision: str = "fp32"
    device: str = "cpu"
    seed: int = 0
    text_encoder_layers: int | None = None  # None: the preset's full Gemma-2 depth
    stages: tuple[str, ...] = STAGES

    def __post_init__(self) -> None:
        object.__setattr__(self, "profile", check_base(self.profile))
        if self.steps is None:
            object.__setattr__(self, "steps", 2 if self.sprint else 20)
        if not isinstance(self.steps, int) or self.steps < 1:
            fail(f"--steps must be at least 1 (got {self.steps}).")
        if self.steps > MAX_STEPS:
            fail(f"--steps must be at most {MAX_STEPS}, the most generate and serve run (got {self.steps}).")
        if not isinstance(self.guidance_scale, int | float) or not math.isfinite(self.guidance_scale):
            fail(f"--guidance-scale must be a finite number (e.g. 4.5), got {self.guidance_scale!r}.")
        if self.text_encoder_layers is not None and self.text_encoder_layers < 1:
            fail(f"--text-encoder-layers must be at least 1 (got {self.text_encoder_layers}).")

    @property
    def height(self) -> int:
        return self.profile

    @property
    def width(self) -> int:
        return self.profile

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // VAE_SCALE, self.width // VAE_SCALE

    @property
    def text_len(self) -> int:
        return TEXT_MAX_LENGTH

    @property
    def sprint(self) -> bool:
        """A Sana-Sprint model (a Sprint preset, or a diffusers folder whose transformer embeds guidance): its
        guidance is a transformer input, so there is no CFG batch and no negative prompt."""
        preset = PRESETS.get(str(self.model).lower())
        if preset is not None and not Path(self.model).exists():
            return preset.sprint
        try:
            config = json.loads((Path(self.model) / "transformer" / "config.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(config, dict) and bool(config.get("guidance_embeds"))

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0 and not self.sprint

    @property
    def transformer_batch(self) -> int:
        return 2 if self.cfg else 1

    @property
    def decodes(self) -> bool:
        """Whether the timed request runs the DC-AE (else it returns latents: ``output_type="latent"``)."""
        return bool(set(self.stages) & set(DECODE_STAGES))

    @property
    def output_type(self) -> str:
        return "np" if self.decodes else "latent"

    @property
    def label(self) -> str:
        return f"{self.model} {self.height}x{self.width}"

    def request(self) -> dict:
        """The arguments of the case's request that every pipeline (ours and diffusers') takes alike; resolution
        binning is off (ours: ``resolution_binning``, diffusers: ``use_resolution_binning``)."""
        out = {
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE_PROMPT,
            "height": self.height,
            "width": self.width,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "generator": torch.Generator().manual_seed(self.seed),
        }
        if self.sprint:  # no CFG, so no negative prompt (diffusers' SanaSprintPipeline takes none)
            del out["negative_prompt"]
        return out

    def record(self) -> dict:
        """The case as it goes into the result JSON."""
        return {
            "model": self.model,
            "profile": self.profile,
            "height": self.height,
            "width": self.width,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "sprint": self.sprint,
            "precision": self.precision,
            "device": self.device,
            "seed": self.seed,
            "text_len": self.text_len,
            "text_encoder_layers": self.text_encoder_layers,
            "stages": list(self.stages),
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE_PROMPT,
            "output_type": self.output_type,
        }


def parse_stages(spec: str | None) -> tuple[str, ...]:
    if spec is None or spec.strip().lower() in ("", "all"):
        return STAGES
    items = [s.strip().lower().replace("-", "_") for s in spec.split(",") if s.strip()]
    bad = [s for s in items if s not in STAGES]
    if bad or not items:
        fail(f"Unknown stage(s) {bad or spec!r}; choose from {', '.join(STAGES)} (or all).")
    return tuple(s for s in STAGES if s in items)


__all__ = ["DECODE_STAGES", "NEGATIVE_PROMPT", "PROMPT", "STAGES", "STAGE_LABELS", "BenchCase", "parse_profiles"]
