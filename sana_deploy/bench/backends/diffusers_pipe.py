"""The two baselines users would otherwise pick: diffusers' ``SanaPipeline`` eager (``diffusers-eager``)
and the same pipeline with ``torch.compile`` on the transformer and the VAE decoder (``torch-compile``).

The pipeline is built from the benchmark's modules: diffusers' own ``SanaTransformer2DModel`` with our
transformer's weights (same parameter names), the same DC-AE, Gemma-2 and tokenizer, and the flow
DPM-Solver scheduler -- so it does the same work as every other backend.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sana_deploy.bench.backends.base import Backend, Prepared
from sana_deploy.bench.case import BenchCase, CaseInputs
from sana_deploy.bench.pipeline import flow_scheduler
from sana_deploy.errors import fail
from sana_deploy.models.components import SanaComponents


def diffusers_transformer(comps: SanaComponents, device: torch.device, dtype: torch.dtype):
    """diffusers' ``SanaTransformer2DModel`` holding a copy of ``comps.transformer``'s weights."""
    from diffusers import SanaTransformer2DModel

    model = SanaTransformer2DModel(**comps.preset.transformer.to_diffusers())
    missing, unexpected = model.load_state_dict(comps.transformer.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("pos_embed")]  # diffusers' fixed-size PE buffer
    if missing or unexpected:
        fail(f"diffusers transformer does not match ours: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device=device, dtype=dtype).eval()


class _Placeholder(torch.nn.Module):
    """Stands in for a component the case does not need (diffusers' pipeline insists on all of them)."""


def build_pipeline(comps: SanaComponents, case: BenchCase):
    from diffusers import SanaPipeline

    device = torch.device(case.device)
    dtype = comps.transformer.dtype if comps.transformer is not None else torch.float32
    transformer = diffusers_transformer(comps, device, dtype) if comps.transformer is not None else None
    pipe = SanaPipeline(
        tokenizer=comps.tokenizer,
        text_encoder=comps.text_encoder,
        vae=comps.vae,
        transformer=transformer,
        scheduler=flow_scheduler(comps.preset.flow_shift),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class DiffusersBackend(Backend):
    name = "diffusers-eager"
    description = "diffusers SanaPipeline, eager"
    compile = False

    def prepare(self, comps: SanaComponents, case: BenchCase, inputs: CaseInputs, workdir: Path) -> Prepared:
        pipe = build_pipeline(comps, case)
        notes = ["diffusers SanaPipeline (eager)"]
        if self.compile:
            mode = self.options.get("mode", "default")
            if pipe.transformer is not None:
                pipe.transformer = torch.compile(pipe.transformer, mode=mode, dynamic=False)
            if pipe.vae is not None:
                pipe.vae.decoder = torch.compile(pipe.vae.decoder, mode=mode, dynamic=False)
            notes = [f"torch.compile(mode={mode}) on transformer and VAE decoder; compile time is in first call"]
        return Prepared(_stages(pipe, comps, case, inputs), notes, release=lambda: _free(pipe))


def _free(pipe) -> None:
    pipe.transformer = None


def _stages(pipe, comps: SanaComponents, case: BenchCase, inputs: CaseInputs) -> dict:
    from sana_deploy.bench.case import NEGATIVE_PROMPT, PROMPT

    dev = torch.device(case.device)
    step_latent, timestep = inputs.step_latent.to(dev), inputs.timestep.to(dev)
    embeds, mask = inputs.prompt_embeds.to(dev), inputs.attention_mask.to(dev)
    latent, decode_latent = inputs.latent.to(dev), inputs.decode_latent.to(dev)
    tdtype = pipe.transformer.dtype if pipe.transformer is not None else torch.float32
    common = dict(
        height=case.height,
        width=case.width,
        num_inference_steps=case.steps,
        guidance_scale=case.guidance_scale,
        use_resolution_binning=False,
        max_sequence_length=case.text_len,
        complex_human_instruction=None,
    )
    n = 1 if case.cfg else 0

    @torch.inference_mode()
    def text_encode():
        return pipe.encode_prompt(
            PROMPT,
            do_classifier_free_guidance=case.cfg,
            negative_prompt=NEGATIVE_PROMPT,
            device=dev,
            max_sequence_length=case.text_len,
            complex_human_instruction=None,
        )

    @torch.inference_mode()
    def step():
        return pipe.transformer(
            step_latent.to(tdtype),
            encoder_hidden_states=embeds.to(tdtype),
            encoder_attention_mask=mask,
            timestep=timestep,
            return_dict=False,
        )[0]

    @torch.inference_mode()
    def loop():
        return pipe(
            prompt_embeds=embeds[n:].to(tdtype),
            prompt_attention_mask=mask[n:],
            negative_prompt_embeds=embeds[:n].to(tdtype) if n else None,
            negative_prompt_attention_mask=mask[:n] if n else None,
            negative_prompt=None,
            latents=latent.to(tdtype),
            output_type="latent",
            **common,
        ).images

    @torch.inference_mode()
    def vae_decode():
        scaled = decode_latent / comps.preset.vae_scaling_factor
        image = pipe.vae.decode(scaled.to(pipe.vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="np")

    @torch.inference_mode()
    def e2e():
        return pipe(
            PROMPT, negative_prompt=NEGATIVE_PROMPT, latents=latent.to(tdtype), output_type="np", **common
        ).images

    stages = {"text_encode": text_encode, "step": step, "loop": loop, "vae_decode": vae_decode, "e2e": e2e}
    return {k: v for k, v in stages.items() if k in case.stages}


class TorchCompileBackend(DiffusersBackend):
    name = "torch-compile"
    description = "diffusers SanaPipeline with torch.compile (transformer, VAE decoder)"
    compile = True
    option_names = ("mode",)
