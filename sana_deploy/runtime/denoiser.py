"""The transformer as the denoising loop sees it: prepared once per request, then called once per step.

Two forms, chosen in one place (:meth:`StageProvider.denoiser`) for every backend:

* :class:`SplitDenoiser` (the default): the ``transformer_text`` graph turns the caption embeddings into every
  block's cross-attention K/V once per request, and each step runs the ``transformer_cached`` graph on them.
  The K/V stay where the text graph left them (on the device) between steps.
* :class:`OneGraphDenoiser`: the one-graph ``transformer``, which recomputes the caption K/V at every step
  (``kv_cache=False``, or a cache / export folder that has no split).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from sana_deploy.runners import Runner


@dataclass
class Conditioning:
    """What one request's steps share: the text side of the transformer, computed once."""

    text: torch.Tensor  # caption embeddings (B, L, C_text), or the caption K/V (layers, 2, B, L, C)
    mask: torch.Tensor  # (B, L) int64
    embeds: torch.Tensor | None = None  # the caption embeddings themselves, when a ControlNet needs them too


class Denoiser(ABC):
    @abstractmethod
    def prepare(self, prompt_embeds: torch.Tensor, attention_mask: torch.Tensor) -> Conditioning:
        """Once per request: the text side of the transformer."""

    @abstractmethod
    def __call__(
        self, latent: torch.Tensor, timestep: torch.Tensor, cond: Conditioning, **extra: torch.Tensor
    ) -> torch.Tensor:
        """One step: the flow prediction ``noise_pred`` (B, 32, h, w), fp32. ``extra``: further step-graph inputs
        (Sana-Sprint's ``guidance``)."""

    @property
    @abstractmethod
    def label(self) -> str:
        """``backend/precision`` of the step graph."""

    @property
    @abstractmethod
    def kind(self) -> str:
        """``"split"`` or ``"one-graph"``."""


class OneGraphDenoiser(Denoiser):
    def __init__(self, transformer: Runner) -> None:
        self.transformer = transformer

    def prepare(self, prompt_embeds: torch.Tensor, attention_mask: torch.Tensor) -> Conditioning:
        return Conditioning(prompt_embeds, attention_mask)

    def __call__(
        self, latent: torch.Tensor, timestep: torch.Tensor, cond: Conditioning, **extra: torch.Tensor
    ) -> torch.Tensor:
        out = self.transformer(
            latent=latent, timestep=timestep, encoder_hidden_states=cond.text, encoder_attention_mask=cond.mask,
            **extra,
        )  # fmt: skip
        return out["noise_pred"]

    @property
    def label(self) -> str:
        return self.transformer.label

    @property
    def kind(self) -> str:
        return "one-graph"


class SplitDenoiser(Denoiser):
    def __init__(self, text: Runner, cached: Runner) -> None:
        self.text, self.cached = text, cached

    def prepare(self, prompt_embeds: torch.Tensor, attention_mask: torch.Tensor) -> Conditioning:
        return Conditioning(self.text(encoder_hidden_states=prompt_embeds)["text_kv"], attention_mask)

    def __call__(
        self, latent: torch.Tensor, timestep: torch.Tensor, cond: Conditioning, **extra: torch.Tensor
    ) -> torch.Tensor:
        out = self.cached(
            latent=latent, timestep=timestep, text_kv=cond.text, encoder_attention_mask=cond.mask, **extra
        )
        return out["noise_pred"]

    @property
    def label(self) -> str:
        return f"{self.cached.label} (caption K/V once: {self.text.label})"

    @property
    def kind(self) -> str:
        return "split"


class ControlNetDenoiser(Denoiser):
    """A ControlNet in the step: each step runs the ``controlnet`` graph on the step's latents, timestep and caption
    (and the request's control latents and scale), then the split's ``transformer_control`` step graph with its
    block residuals (the first ``blocks`` of them: diffusers adds sample k after block k + 1 and drops the rest)."""

    def __init__(self, split: SplitDenoiser, controlnet: Runner, control: torch.Tensor, scale: float, blocks: int):
        self.split, self.controlnet, self.blocks = split, controlnet, blocks
        self.control = control  # (B, 32, h, w): control image latents x scaling_factor, in the step's batch order
        self.scale = torch.tensor([float(scale)], dtype=torch.float32, device=control.device)

    def prepare(self, prompt_embeds: torch.Tensor, attention_mask: torch.Tensor) -> Conditioning:
        cond = self.split.prepare(prompt_embeds, attention_mask)
        cond.embeds = prompt_embeds
        return cond

    def __call__(
        self, latent: torch.Tensor, timestep: torch.Tensor, cond: Conditioning, **extra: torch.Tensor
    ) -> torch.Tensor:
        residuals = self.controlnet(
            latent=latent, timestep=timestep, encoder_hidden_states=cond.embeds, encoder_attention_mask=cond.mask,
            controlnet_cond=self.control, conditioning_scale=self.scale,
        )["controlnet_residuals"]  # fmt: skip
        return self.split(latent, timestep, cond, controlnet_residuals=residuals[: self.blocks], **extra)

    @property
    def label(self) -> str:
        return f"{self.split.label} + ControlNet {self.controlnet.label}"

    @property
    def kind(self) -> str:
        return "split+controlnet"
