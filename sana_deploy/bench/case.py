"""What one benchmark measures (model, resolution, steps, CFG, precision, device) and its fixed inputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sana_deploy.errors import ShapeError, fail
from sana_deploy.models.config import TEXT_MAX_LENGTH, VAE_SCALE

STAGES = ("text_encode", "step", "loop", "vae_decode", "e2e")
STAGE_LABELS = {
    "text_encode": "text encode",
    "step": "denoising step",
    "loop": "denoising loop",
    "vae_decode": "VAE decode",
    "e2e": "end to end",
}
PROMPT = "a cyberpunk cat with a neon sign that says Sana, ultra detailed, 8k"
NEGATIVE_PROMPT = ""


@dataclass(frozen=True)
class BenchCase:
    """One (model, resolution) point. Batch is one image; CFG doubles the transformer batch."""

    model: str
    height: int
    width: int
    steps: int = 20
    guidance_scale: float = 4.5
    precision: str = "fp32"
    device: str = "cpu"
    text_len: int = TEXT_MAX_LENGTH
    seed: int = 0
    text_encoder_layers: int | None = None  # None: the preset's full Gemma-2 depth
    stages: tuple[str, ...] = STAGES
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for side in (self.height, self.width):
            if side < VAE_SCALE * 2 or side % VAE_SCALE:
                fail(
                    f"Image size {self.height}x{self.width} must be a multiple of {VAE_SCALE} and at least 64.",
                    ShapeError,
                )
        if self.steps < 1:
            fail(f"--steps must be at least 1 (got {self.steps}).")

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // VAE_SCALE, self.width // VAE_SCALE

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def transformer_batch(self) -> int:
        return 2 if self.cfg else 1

    @property
    def label(self) -> str:
        return f"{self.model} {self.height}x{self.width}"


def parse_profiles(spec: str | list[str] | tuple[str, ...]) -> list[tuple[int, int]]:
    """``"1024,768x1344"`` -> [(1024, 1024), (768, 1344)] (height x width in pixels)."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
    if not items:
        fail("--profiles is empty; pass image sizes such as 512,1024 or 768x1344.", ShapeError)
    out = []
    for item in items:
        try:
            h, w = (int(v) for v in item.lower().split("x")) if "x" in item.lower() else (int(item), int(item))
        except ValueError:
            fail(f"Profile {item!r} is not an image size; use 1024 (square) or HEIGHTxWIDTH like 768x1344.", ShapeError)
        out.append((h, w))
    return out


def parse_stages(spec: str | None) -> tuple[str, ...]:
    if spec is None or spec.strip().lower() in ("", "all"):
        return STAGES
    items = [s.strip().lower().replace("-", "_") for s in spec.split(",") if s.strip()]
    bad = [s for s in items if s not in STAGES]
    if bad or not items:
        fail(f"Unknown stage(s) {bad or spec!r}; choose from {', '.join(STAGES)} (or all).")
    return tuple(s for s in STAGES if s in items)


@dataclass
class CaseInputs:
    """Seeded inputs shared by every backend of a case, so all of them do identical work."""

    latent: torch.Tensor  # (1, 32, h, w) initial noise
    step_latent: torch.Tensor  # (B_cfg, 32, h, w) transformer input for the single-step stage
    timestep: torch.Tensor  # (B_cfg,)
    prompt_embeds: torch.Tensor  # (B_cfg, L, caption_channels), [uncond, cond]
    attention_mask: torch.Tensor  # (B_cfg, L) int64
    decode_latent: torch.Tensor  # (1, 32, h, w) what the VAE stage decodes


def make_inputs(case: BenchCase, caption_channels: int, prompt_tokens: int = 40) -> CaseInputs:
    g = torch.Generator().manual_seed(case.seed)
    h, w = case.latent_hw
    b = case.transformer_batch
    mask = torch.zeros(b, case.text_len, dtype=torch.int64)
    mask[:, : min(prompt_tokens, case.text_len)] = 1
    mask[0, :1] = 1
    return CaseInputs(
        latent=torch.randn(1, 32, h, w, generator=g),
        step_latent=torch.randn(b, 32, h, w, generator=g),
        timestep=torch.full((b,), 999.0),
        prompt_embeds=torch.randn(b, case.text_len, caption_channels, generator=g),
        attention_mask=mask,
        decode_latent=torch.randn(1, 32, h, w, generator=g),
    )
