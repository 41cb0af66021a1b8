"""The benchmark's own denoising pipeline over a backend's stage runners.

Used for every backend except the diffusers baselines (which run diffusers' ``SanaPipeline``). It is the
same algorithm as ``SanaPipeline.__call__``: prompt + empty negative prompt tokenised to 300 tokens, CFG
batch [uncond, cond], diffusers' ``DPMSolverMultistepScheduler`` configured as Sana's flow DPM-Solver
(shared/reference/sana-model.md §4), then the DC-AE decode. When a backend has the transformer split,
the caption K/V are computed once per request and every step runs the cached step graph.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from sana_deploy.bench.case import NEGATIVE_PROMPT, PROMPT, BenchCase


class Runners(Protocol):
    """What a backend runs; float tensors in and out are fp32 on ``device``."""

    device: torch.device

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...

    def text_kv(self, prompt_embeds: torch.Tensor) -> torch.Tensor | None:
        """Caption K/V for the cached step graph, or None when the backend runs the one-graph transformer."""
        ...

    def step(
        self, latent: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor: ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor: ...


def flow_scheduler(flow_shift: float):
    """diffusers' multistep DPM-Solver++ configured as Sana's flow DPM-Solver (reference §4)."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        use_flow_sigmas=True,
        flow_shift=flow_shift,
        prediction_type="flow_prediction",
        num_train_timesteps=1000,
    )


def tokenize(tokenizer, case: BenchCase) -> tuple[torch.Tensor, torch.Tensor]:
    """[negative, prompt] token ids and mask, padded to ``case.text_len`` as ``SanaPipeline.encode_prompt``."""
    prompts = [NEGATIVE_PROMPT, PROMPT] if case.cfg else [PROMPT]
    tok = tokenizer(
        prompts,
        padding="max_length",
        max_length=case.text_len,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    return tok.input_ids, tok.attention_mask


def encode_prompt(runners: Runners, tokenizer, case: BenchCase) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = tokenize(tokenizer, case)
    ids, mask = ids.to(runners.device), mask.to(runners.device)
    return runners.encode(ids, mask), mask


def denoise(
    runners: Runners,
    case: BenchCase,
    prompt_embeds: torch.Tensor,
    mask: torch.Tensor,
    latent: torch.Tensor,
    flow_shift: float,
) -> torch.Tensor:
    """``case.steps`` flow DPM-Solver steps from ``latent``; returns the final latent."""
    scheduler = flow_scheduler(flow_shift)
    scheduler.set_timesteps(case.steps, device=runners.device)
    kv = runners.text_kv(prompt_embeds)
    text = kv if kv is not None else prompt_embeds
    x = latent
    for t in scheduler.timesteps:
        model_in = torch.cat([x, x]) if case.cfg else x
        v = runners.step(model_in, t.expand(model_in.shape[0]).float(), text, mask)
        if case.cfg:
            v_uncond, v_cond = v.chunk(2)
            v = v_uncond + case.guidance_scale * (v_cond - v_uncond)
        x = scheduler.step(v, t, x, return_dict=False)[0]
    return x


def decode(runners: Runners, latent: torch.Tensor, scaling_factor: float) -> np.ndarray:
    """DC-AE decode and the image post-processing to float HWC in [0, 1] (diffusers' ``output_type="np"``)."""
    image = runners.decode(latent / scaling_factor)
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()


def generate(runners: Runners, tokenizer, case: BenchCase, latent: torch.Tensor, flow_shift: float, scaling: float):
    """End to end: prompt -> image."""
    embeds, mask = encode_prompt(runners, tokenizer, case)
    return decode(runners, denoise(runners, case, embeds, mask, latent, flow_shift), scaling)
