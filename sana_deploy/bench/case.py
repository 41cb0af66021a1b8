"""What one benchmark measures (model, profile, steps, CFG, precision, device) and the fixed request it times."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from sana_deploy.contract import (
    CONTROLNET,
    SPLIT_TRANSFORMER,
    TRANSFORMER_CONTROL,
    TRANSFORMER_PAG,
    VAE_ENCODER,
    check_base,
    parse_profiles,
)
from sana_deploy.errors import fail
from sana_deploy.models.config import PRESETS, TEXT_MAX_LENGTH, VAE_SCALE
from sana_deploy.runtime.generate import MAX_STEPS, check_variant_options
from sana_deploy.runtime.img2img import prepare_images

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
DEFAULT_STRENGTH = 0.6  # img2img without --strength, as generate
PROMPT = "a cyberpunk cat with a neon sign that says Sana, ultra detailed, 8k"
NEGATIVE_PROMPT = ""


@dataclass(frozen=True)
class BenchCase:
    """One (model, profile) point: a request of one ``profile``×``profile`` image (resolution binning off, so
    every backend generates exactly that size); CFG doubles the transformer batch, PAG adds one row.

    The variant options are ``generate``'s: img2img (``image``, ``strength``), ControlNet (``controlnet`` folder,
    ``control_image``, ``control_scale``) and PAG (``pag_scale``, ``pag_layers``); every backend passes them to its
    one pipeline call."""

    model: str
    profile: int
    steps: int | None = None  # None: the model's default (20 for Flow-DPM-Solver++, 2 for Sana-Sprint's sCM)
    guidance_scale: float = 4.5  # CFG for base Sana; Sana-Sprint's embedded guidance (no CFG batch)
    precision: str = "fp32"
    device: str = "cpu"
    seed: int = 0
    text_encoder_layers: int | None = None  # None: the preset's full Gemma-2 depth
    stages: tuple[str, ...] = STAGES
    image: Path | None = None  # img2img: the start image (resized to the profile by the pipeline)
    strength: float | None = None  # img2img: share of the schedule run from the noised image [0.6]
    controlnet: Path | None = None  # a Sana ControlNet folder (diffusers layout)
    control_image: Path | None = None  # the ControlNet's control image
    control_scale: float = 1.0  # the ControlNet's residuals are scaled by this
    pag_scale: float = 0.0  # perturbed-attention guidance (0: off)
    pag_layers: str | None = None  # PAG's blocks, e.g. "8" or "8,14" [the model's default]

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
        preset = PRESETS.get(str(self.model).lower()) if not Path(self.model).exists() else None
        if self.controlnet is not None and self.control_image is None:
            fail("--controlnet benchmarks ControlNet requests: pass --control-image too (the control image).")
        check_variant_options(
            preset, image=self.image, strength=self.strength, controlnet=self.controlnet,
            control_image=self.control_image, control_scale=self.control_scale, pag_scale=self.pag_scale,
            pag_layers=self.pag_layers,
        )  # fmt: skip

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
    def img2img(self) -> bool:
        return self.image is not None

    @property
    def pag(self) -> bool:
        return self.pag_scale > 0

    @property
    def modes(self) -> tuple[str, ...]:
        """The variant's request modes: ``img2img``, ``controlnet``, ``pag`` (none: text to image)."""
        flags = (("img2img", self.img2img), ("controlnet", self.control_image is not None), ("pag", self.pag))
        return tuple(name for name, on in flags if on)

    @property
    def variant(self) -> str:
        """What the case times, e.g. ``sana text-to-image``, ``sana pag``, ``sprint img2img``."""
        return f"{'sprint' if self.sprint else 'sana'} {'+'.join(self.modes) or 'text-to-image'}"

    @property
    def transformer_batch(self) -> int:
        """Rows of one transformer call: the conditional one, CFG's unconditional one, PAG's perturbed one."""
        return (2 if self.cfg else 1) + (1 if self.pag else 0)

    def variant_graphs(self, kv_cache: bool = True) -> tuple[str, ...]:
        """The graphs the variant runs besides the pipeline's own (the DC-AE encoder for img2img and control
        images, the ControlNet's two and PAG's step graph, with the caption K/V graph they take)."""
        names: list[str] = []
        if self.img2img or self.control_image is not None:
            names.append(VAE_ENCODER)
        if self.control_image is not None:
            names += [SPLIT_TRANSFORMER[0], TRANSFORMER_CONTROL, CONTROLNET]
        if self.pag:
            names += [SPLIT_TRANSFORMER[0], TRANSFORMER_PAG]
        return tuple(dict.fromkeys(names))

    def fitted_image(self, path: Path, what: str) -> Image.Image:
        """``path`` as an RGB image of the case's size, resized to cover it and center-cropped as the pipeline
        prepares images. Every backend gets these pixels, so all start from the same image: diffusers' image
        processor would stretch an image of another aspect ratio instead (docs/VARIANTS.md)."""
        pixels = (prepare_images(path, self.height, self.width, what)[0] + 1) / 2
        array = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return Image.fromarray(array, "RGB")

    def variant_request(self) -> dict:
        """The variant's arguments of ``SanaDeployPipeline.__call__`` (images read and fitted to the case's size
        here, before the call)."""
        out: dict = {}
        if self.img2img:
            out.update(image=self.fitted_image(self.image, "--image"), strength=self.effective_strength)
        if self.control_image is not None:
            out["control_image"] = self.fitted_image(self.control_image, "--control-image")
            out["controlnet_conditioning_scale"] = self.control_scale
        if self.pag or self.pag_layers is not None:
            out.update(pag_scale=self.pag_scale, pag_applied_layers=self.pag_layers)
        return out

    @property
    def effective_strength(self) -> float | None:
        if not self.img2img:
            return None
        return DEFAULT_STRENGTH if self.strength is None else self.strength

    @property
    def decodes(self) -> bool:
        """Whether the timed request runs the DC-AE (else it returns latents: ``output_type="latent"``)."""
        return bool(set(self.stages) & set(DECODE_STAGES))

    @property
    def output_type(self) -> str:
        return "np" if self.decodes else "latent"

    @property
    def label(self) -> str:
        return f"{self.model} {self.height}x{self.width} ({self.variant})"

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
            "variant": self.variant,
            "image": None if self.image is None else str(self.image),
            "strength": self.effective_strength,
            "controlnet": None if self.controlnet is None else str(self.controlnet),
            "control_image": None if self.control_image is None else str(self.control_image),
            "control_scale": self.control_scale if self.control_image is not None else None,
            "pag_scale": self.pag_scale,
            "pag_layers": self.pag_layers,
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
