"""``SanaDeployPipeline``: prompt -> image over stage runners (torch, ONNX Runtime, AOTInductor, TensorRT).

The algorithm is diffusers' ``SanaPipeline.__call__`` (the golden reference of the end-to-end test): prompts
lower-cased, complex human instruction on the prompt, negative prompt "" with its own mask, CFG batch
``[uncond; cond]`` in one transformer call, Flow-DPM-Solver++ or Flow-Euler, ``latent / scaling_factor`` into
the DC-AE, ``(x / 2 + 0.5).clamp(0, 1)`` to images, resolution binning + resize back.

Thread safety: one pipeline may serve many threads. Everything a request changes (solver state, latents,
embeddings, timings) lives in the call; stage runners are either reentrant (torch modules in inference mode,
ONNX Runtime sessions) or serialised by their own lock (engine runners, which reuse device buffers); the
engine provider guards its runner table and fallback with a lock. The progress-bar setting is the only
pipeline attribute a call reads, and calls never write it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sana_deploy.errors import NonFiniteError, SanaDeployError, fail
from sana_deploy.models.components import SanaComponents
from sana_deploy.models.config import LATENT_CHANNELS, TEXT_MAX_LENGTH, SanaPreset
from sana_deploy.runners import OrtOptions
from sana_deploy.runners.winograd import winograd_for
from sana_deploy.runtime.assemble import (
    cast_components,
    check_fixed_backend,
    check_fixed_quantize,
    engine_provider,
    fixed_stages,
    load_model,
)
from sana_deploy.runtime.call_options import (
    DEFAULT_CHI,
    StepCallback,
    StepState,
    callback_outputs,
    check_chi,
    check_embeds,
    check_guidance_scale,
    check_max_sequence_length,
    check_sprint_guidance,
    check_unsupported,
    resolve_sampler,
    tensor_inputs,
)
from sana_deploy.runtime.denoiser import ControlNetDenoiser, Denoiser
from sana_deploy.runtime.exact_tiling import split_tiled_decode
from sana_deploy.runtime.images import postprocess
from sana_deploy.runtime.img2img import check_strength, image_size, load_image, prepare_images, start_step
from sana_deploy.runtime.lora import LoraMixin
from sana_deploy.runtime.providers import StageProvider
from sana_deploy.runtime.resolution import SizePlan, plan_size, resize_and_crop
from sana_deploy.runtime.solvers import DEFAULT, DEFAULT_STEPS, Solver, make_solver
from sana_deploy.runtime.text import (
    COMPLEX_HUMAN_INSTRUCTION,
    PROMPT_CACHE,
    PromptCache,
    encode_prompts,
)
from sana_deploy.runtime.tiling import TilingConfig, tiled_decode
from sana_deploy.runtime.variants import Guidance, check_variants

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
Callback = Callable[[int, float, torch.Tensor], None]  # (step index, timestep, latents)


@dataclass
class SanaDeployOutput:
    """``images``: list of PIL images, (B,H,W,3) float array in [0,1] (np), (B,3,H,W) tensor (pt) or latents."""

    images: list | np.ndarray | torch.Tensor
    height: int
    width: int
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage, and "total"
    backends: dict[str, str] = field(default_factory=dict)  # stage -> "backend/precision" as it ran
    tiled_decode: str = "off"  # "off", "exact" or "latent-tiles"
    step_seconds: list[float] = field(default_factory=list)  # wall time of each denoising step
    denoiser: str = ""  # "split" (caption K/V once per request) or "one-graph"


def _prompt_list(prompt: str | Sequence[str], what: str) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, Sequence) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    fail(f"{what} must be a string or a non-empty list of strings, got {prompt!r}.")


def _latents(shape: tuple[int, ...], generator, device: torch.device) -> torch.Tensor:
    """fp32 Gaussian latents drawn like diffusers' ``randn_tensor`` (one generator, or one per image)."""
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            fail(f"Got {len(generator)} generators for {shape[0]} images; pass one generator or one per image.")
        parts = [torch.randn((1, *shape[1:]), generator=g, device=g.device) for g in generator]
        return torch.cat(parts).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def require_finite(tensor: torch.Tensor, stage: str, label: str, plan: SizePlan, where: str = "") -> None:
    """Refuse a stage output with NaN or inf: a :class:`NonFiniteError` naming the stage, its backend and the size
    it ran at (one reduction over a tensor the pipeline holds anyway; no image is ever made from it)."""
    if bool(torch.isfinite(tensor).all()):
        return
    kind = "NaN" if bool(torch.isnan(tensor).any()) else "inf"
    size = f"{plan.width}x{plan.height}"
    raise NonFiniteError(
        f"The {stage} ({label}) returned {kind} at {size}{f' {where}' if where else ''}; no image was made. "
        f"Run the same request with --backend torch: if it is finite there, this engine or export does not compute "
        f"the model correctly (rebuild it; `sana-deploy export` prints the parity report), else the weights or the "
        f"precision overflow (try --precision fp32).",
        stage,
    )


class SanaDeployPipeline(LoraMixin):
    """Text-to-image over a :class:`StageProvider`. Build with :meth:`from_model` or :meth:`from_engines`.

    LoRA adapters (:class:`~sana_deploy.runtime.lora.LoraMixin`): ``load_lora_weights``, ``set_adapters``,
    ``fuse_lora`` / ``unfuse_lora``, ``unload_lora_weights``, as in diffusers; swapped without a rebuild.
    """

    def __init__(
        self,
        provider: StageProvider,
        tokenizer,
        preset: SanaPreset,
        model_id: str,
        device: torch.device | str = "cpu",
        tiling: TilingConfig | None = None,
        complex_human_instruction: Sequence[str] | None = COMPLEX_HUMAN_INSTRUCTION,
    ) -> None:
        self.provider = provider
        self.tokenizer = tokenizer
        self.preset = preset
        self.model_id = model_id
        self.device = torch.device(device)
        self.tiling = tiling or TilingConfig()
        self.complex_human_instruction = complex_human_instruction
        self.progress_bar = False
        self.sync_timings = False  # synchronise CUDA at stage and step edges so the timings are exact (bench)
        # encoded texts, shared by the process's pipelines (the "" negative is encoded once); None: always encode
        self.prompt_cache: PromptCache | None = PROMPT_CACHE

    # --- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_model(
        cls,
        model: str | Path = "sana-tiny",
        backend: str = "torch",
        precision: str = "fp32",
        export_dir: str | Path | None = None,
        random_weights: bool = False,
        preset: str | None = None,
        device: str = "cpu",
        kv_cache: bool = True,
        ort_options: OrtOptions | None = None,
        kernels: str | None = None,
        controlnet: str | Path | None = None,
        variants: tuple[str, ...] = (),
        quantize: str | None = None,
        vae_backend: str | None = None,
        **kwargs,
    ) -> SanaDeployPipeline:
        """Eager torch (``backend="torch"``) or ONNX Runtime over the ONNX exports (``backend="onnxruntime"``;
        exported into ``export_dir`` on first use). ``kv_cache``: the caption K/V once per request (the split) or
        the one-graph transformer. ``kernels``: torch's ``sana::`` op implementation (default: Triton on a GPU).
        ``controlnet``: a Sana ControlNet folder (diffusers layout) for ``control_image`` requests. ``variants``:
        onnxruntime exports these variant graphs up front too (``("transformer_pag",)`` for PAG requests), since it
        releases the transformer once its graphs are exported. ``quantize="fp8"`` (torch): FP8 transformer
        linear layers (docs/QUANTIZATION.md). ``vae_backend="torch"``: the DC-AE stages on eager PyTorch (Winograd
        convolutions on a CPU in fp32; measure against ONNX Runtime's decode on your CPU), whatever runs the rest."""
        check_fixed_backend(backend)
        check_fixed_quantize(backend, quantize)
        comps = load_model(model, precision, random_weights, preset, device, controlnet)
        provider = fixed_stages(
            comps,
            backend,
            precision,
            export_dir,
            own_modules=True,
            kv_cache=kv_cache,
            ort_options=ort_options,
            kernels=kernels,
            variants=variants,
            quantize=quantize,
            vae_backend=vae_backend,
        )
        return cls(provider, comps.tokenizer, comps.preset, comps.model_id, device=device, **kwargs)

    @classmethod
    def from_components(
        cls,
        components: SanaComponents,
        backend: str = "torch",
        precision: str = "fp32",
        export_dir: str | Path | None = None,
        device: str = "cpu",
        kv_cache: bool = True,
        ort_options: OrtOptions | None = None,
        kernels: str | None = None,
        variants: tuple[str, ...] = (),
        quantize: str | None = None,
        vae_backend: str | None = None,
        **kwargs,
    ) -> SanaDeployPipeline:
        """Over already loaded components (cast in place to the precision policy of ``precision``); a ControlNet in
        ``components.controlnet`` serves ``control_image`` requests. ``quantize="fp8"`` (torch) makes the
        transformer's block linear layers FP8 in place."""
        check_fixed_backend(backend)
        check_fixed_quantize(backend, quantize)
        comps = cast_components(components, precision, device)
        provider = fixed_stages(
            comps, backend, precision, export_dir, kv_cache=kv_cache, ort_options=ort_options, kernels=kernels,
            variants=variants, quantize=quantize, vae_backend=vae_backend,
        )  # fmt: skip
        return cls(provider, comps.tokenizer, comps.preset, comps.model_id, device=device, **kwargs)

    @classmethod
    def from_engines(
        cls,
        engine_dir: str | Path = "engines",
        model: str | Path = "sana-tiny",
        backend: str = "auto",
        precision: str | None = None,
        on_miss: str = "background",
        fallback: str = "torch",
        random_weights: bool = False,
        device: str = "cpu",
        build_kwargs: dict | None = None,
        kv_cache: bool = True,
        controlnet: str | Path | None = None,
        vae_backend: str | None = None,
        **kwargs,
    ) -> SanaDeployPipeline:
        """Engines from ``engine_dir`` (``sana-deploy build``); a request no engine covers follows ``on_miss``
        (``build``, ``background`` -- serve from ``fallback`` meanwhile -- or ``error``). ``build_kwargs`` go to
        ``build_engines`` on a miss (e.g. ``export_root``, ``static``). ``kv_cache``: run (and build on a miss) the
        caption K/V split, or the one-graph transformer. ``controlnet``: a Sana ControlNet folder, whose engines
        (``controlnet``, ``transformer_control``) are cached under its folder's name and built like any other.
        ``vae_backend="torch"``: the DC-AE stages run on eager PyTorch (Winograd convolutions on a CPU in fp32) instead
        of engines."""
        provider, tokenizer, preset_, model_id = engine_provider(
            engine_dir, model, backend, precision, on_miss, fallback, random_weights, device, build_kwargs, kv_cache,
            controlnet, vae_backend,
        )  # fmt: skip
        return cls(provider, tokenizer, preset_, model_id, device=device, **kwargs)

    def set_progress_bar(self, enabled: bool) -> None:
        self.progress_bar = enabled

    # --- one request ----------------------------------------------------------------------------------------
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = "",
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float = 4.5,
        generator: torch.Generator | list[torch.Generator] | int | None = None,
        num_images_per_prompt: int = 1,
        sampler: str | None = None,
        resolution_binning: bool = True,
        output_type: str = "pil",
        callback: Callback | None = None,
        latents: torch.Tensor | None = None,
        image=None,  # noqa: ANN001
        strength: float = 0.6,
        *,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        max_sequence_length: int = TEXT_MAX_LENGTH,
        complex_human_instruction: Sequence[str] | None = DEFAULT_CHI,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] | None = None,
        timesteps: Sequence[float] | torch.Tensor | None = None,
        sigmas: Sequence[float] | None = None,
        max_timesteps: float | None = DEFAULT,
        intermediate_timesteps: float | None = DEFAULT,
        eta: float = 0.0,
        use_resolution_binning: bool | None = None,
        return_dict: bool = True,
        clean_caption: bool = False,
        attention_kwargs: dict | None = None,
        control_image=None,  # noqa: ANN001
        controlnet_conditioning_scale: float = 1.0,
        pag_scale: float = 0.0,
        pag_adaptive_scale: float = 0.0,
        pag_applied_layers: int | str | Sequence[int | str] | None = None,
    ) -> SanaDeployOutput | tuple:
        """Generate images. Returns :class:`SanaDeployOutput` (``.images``, per-stage ``.seconds``).

        img2img (``image``: a path, PIL image, array or tensor, or one per prompt): the image is encoded by the DC-AE
        encoder and noised to the schedule entry ``strength`` (0, 1] starts at, as diffusers' img2img pipelines do;
        the size defaults to the image's.

        ControlNet (a pipeline made with ``controlnet=``): ``control_image`` (like ``image``) is encoded by the DC-AE
        encoder and steers every step through the ControlNet's block residuals, times
        ``controlnet_conditioning_scale`` (diffusers' ``SanaControlNetPipeline``). PAG (diffusers'
        ``SanaPAGPipeline``): ``pag_scale`` > 0 adds a perturbed branch whose self-attention is the identity on the
        blocks ``pag_applied_layers`` (indices or ``"transformer_blocks.N"``; default: NVlabs' block for 0.6B/1.6B,
        else block 0), ``pag_adaptive_scale`` lowers it with the timestep. docs/VARIANTS.md.
        """
        # diffusers' call options (docs/VARIANTS.md#diffusers-call-signature), checked before any stage runs
        check_unsupported(eta, clean_caption, attention_kwargs)
        guidance_scale = check_guidance_scale(guidance_scale)
        sprint = self.preset.sprint
        sampler = resolve_sampler(self.preset, sampler)
        check_sprint_guidance(self.preset, guidance_scale, negative_prompt, negative_prompt_embeds)
        cfg = guidance_scale > 1.0 and not sprint  # Sprint: guidance is a transformer input, never a CFG batch
        control_scale, pag, pag_adaptive, pag_layers = check_variants(
            sprint=sprint, controlnet_layers=self.provider.controlnet_layers, control_image=control_image,
            conditioning_scale=controlnet_conditioning_scale, pag_scale=pag_scale,
            pag_adaptive_scale=pag_adaptive_scale, pag_layers=pag_applied_layers,
            num_layers=self.preset.transformer.num_layers,
        )  # fmt: skip
        guide = Guidance(cfg, guidance_scale, pag, pag_adaptive, pag_layers)
        max_sequence_length = check_max_sequence_length(max_sequence_length)
        chi = self.complex_human_instruction if complex_human_instruction is DEFAULT_CHI else complex_human_instruction
        chi = check_chi(chi)
        step_inputs = tensor_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs, sprint)
        if use_resolution_binning is not None:
            resolution_binning = bool(use_resolution_binning)
        caption = self.preset.transformer.caption_channels
        if prompt_embeds is not None:
            if prompt is not None:
                fail("Pass prompt or prompt_embeds, not both (prompt_embeds are used as given).")
            prompt_embeds, prompt_attention_mask = check_embeds(
                prompt_embeds, prompt_attention_mask, "prompt_embeds", caption
            )
            prompts = [""] * prompt_embeds.shape[0]
        elif prompt is None:
            fail("Provide prompt or prompt_embeds (with prompt_attention_mask).")
        else:
            prompts = _prompt_list(prompt, "prompt")
        if negative_prompt_embeds is not None:
            if _prompt_list(negative_prompt or "", "negative_prompt") != [""]:
                fail("Pass negative_prompt or negative_prompt_embeds, not both.")
            if prompt_embeds is None:
                fail("negative_prompt_embeds go with prompt_embeds; pass both (or neither and the prompts as text).")
            negative_prompt_embeds, negative_prompt_attention_mask = check_embeds(
                negative_prompt_embeds, negative_prompt_attention_mask, "negative_prompt_embeds", caption, prompt_embeds
            )
        negatives = _prompt_list("" if negative_prompt is None else negative_prompt, "negative_prompt")
        if len(negatives) == 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            fail(f"Got {len(negatives)} negative prompts for {len(prompts)} prompts; pass one or one per prompt.")
        if isinstance(generator, int) and not isinstance(generator, bool):  # one generator for the whole call
            generator = torch.Generator().manual_seed(generator)
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            fail(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}.")
        if output_type not in OUTPUT_TYPES:
            fail(f"Unknown output_type {output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}.")
        init_images = None
        if image is not None:  # img2img: checked and read before any stage runs
            strength = check_strength(strength)
            init_images = [load_image(i, "image") for i in (image if isinstance(image, list | tuple) else [image])]
            if len(init_images) not in (1, len(prompts)):
                fail(f"Got {len(init_images)} images for {len(prompts)} prompts; pass one image or one per prompt.")
            if height is None and width is None:
                height, width = image_size(init_images[0])
        control_images = None
        if control_image is not None:  # ControlNet: read now, like the img2img image
            items = control_image if isinstance(control_image, list | tuple) else [control_image]
            control_images = [load_image(i, "control image") for i in items]
            if len(control_images) not in (1, len(prompts)):
                fail(f"Got {len(control_images)} control images for {len(prompts)} prompts; pass one, or one a prompt.")
            if height is None and width is None:
                height, width = image_size(control_images[0])
        plan = plan_size(height, width, self.preset, resolution_binning)
        solver = self._solver(
            sampler, num_inference_steps, generator, timesteps, sigmas, max_timesteps, intermediate_timesteps
        )
        n = num_images_per_prompt
        batch = len(prompts) * n
        seconds: dict[str, float] = {}
        backends: dict[str, str] = {}
        call_start = self._clock()

        # 1. text: each distinct text encoded once per request
        start = self._clock()
        if prompt_embeds is None:
            emb, mask, backends["text_encoder"] = self._encode(
                prompts, negatives if cfg else None, plan, len(prompts), chi, max_sequence_length
            )
        else:  # used as given; the negatives (with CFG) from negative_prompt_embeds or encoded from the text
            emb, mask, backends["text_encoder"] = prompt_embeds, prompt_attention_mask, "given (prompt_embeds)"
            if cfg and negative_prompt_embeds is None:
                neg, neg_mask, label = self._encode(negatives, None, plan, len(prompts), None, max_sequence_length)
                backends["text_encoder"] = f"{label} (negative prompt; prompt_embeds given)"
                negative_prompt_embeds, negative_prompt_attention_mask = check_embeds(
                    neg, neg_mask, "the encoded negative prompt", caption, prompt_embeds
                )
            if cfg:
                emb = torch.cat([negative_prompt_embeds, emb])
                mask = torch.cat([negative_prompt_attention_mask, mask])
        require_finite(emb, "text_encoder", backends["text_encoder"], plan)
        groups = 2 if cfg else 1  # [negatives; prompts] -> repeat each row n times, keeping the group order
        emb = emb.repeat_interleave(n, dim=0).to(self.device)
        mask = mask.repeat_interleave(n, dim=0).to(self.device)
        assert emb.shape[0] == groups * batch
        emb, mask = guide.text(emb, mask)  # PAG: the conditional rows once more, for the perturbed branch
        seconds["text_encoder"] = self._clock() - start
        image_latents = control = None
        if init_images is not None:  # img2img's start image through the DC-AE encoder
            image_latents = self._encode_images(init_images, plan, batch, "image", backends, seconds)
        if control_images is not None:  # the ControlNet's control latents, one copy per chunk of the step batch
            control = self._encode_images(control_images, plan, batch, "control image", backends, seconds)
            control = torch.cat([control] * guide.chunks)

        # 2. denoising loop: the text side of the transformer once, then one transformer call per step
        start = self._clock()
        lh, lw = plan.latent_size
        shape = (batch, LATENT_CHANNELS, lh, lw)
        x = _latents(shape, generator, self.device) if latents is None else latents.to(self.device, torch.float32)
        if tuple(x.shape) != shape:
            fail(f"latents must have shape {shape} for this request, got {tuple(x.shape)}.")
        if latents is not None and not bool(torch.isfinite(x).all()):
            fail("latents contain NaN or inf; pass finite latents (or none: they are drawn from the generator).")
        if image_latents is None:
            x = x * solver.init_noise_sigma  # Sprint: N(0, 1)·sigma_data (caller latents too, as diffusers)
        else:  # img2img: the schedule from `strength` on, from the image latents noised there (caller latents as given)
            solver.index = start_step(solver.steps, strength)
            x = x if latents is not None else solver.noised(image_latents, x)
        denoiser = self._denoiser(plan, guide.chunks * batch, control, control_scale, guide.pag)
        backends["transformer"] = denoiser.label
        cond = denoiser.prepare(emb, mask)
        require_finite(cond.text, "transformer", denoiser.label, plan, "in the caption K/V")
        extra = {}  # further step-graph inputs: Sprint's embedded guidance, per image; PAG's per-block identity
        if guide.pag:
            extra["pag_identity"] = guide.pag_identity(batch, self.preset.transformer.num_layers, self.device)
        if sprint:
            scale = self.preset.transformer.guidance_embeds_scale
            extra["guidance"] = torch.full((batch,), guidance_scale, dtype=torch.float32, device=self.device) * scale
        state = StepState(self, guidance_scale, solver.steps, cfg)
        step_seconds = []
        for i in self._steps(solver.steps - solver.index):
            if state.interrupt:  # a callback_on_step_end set pipe._interrupt: the remaining steps are skipped
                break
            step_start = self._clock()
            model_in = solver.model_input(x)
            model_in = torch.cat([model_in] * guide.chunks) if guide.chunks > 1 else model_in
            t = solver.model_timestep(model_in.shape[0], self.device)
            schedule_t = solver.schedule_timestep()
            v = denoiser(model_in, t, cond, **extra).float()
            require_finite(v, "transformer", denoiser.label, plan, f"at step {i + 1} of {solver.steps}")
            v = guide.combine(v, schedule_t)  # CFG and/or PAG
            x = solver.step(v, x)
            step_seconds.append(self._clock() - step_start)
            if callback_on_step_end is not None:  # diffusers' protocol: may edit the latents / embeddings, or stop
                current = {"latents": x, "prompt_embeds": emb}  # prompt_embeds: [negatives; prompts] with CFG
                if not sprint:  # diffusers hands the negatives too; returning them has no effect there either
                    current["negative_prompt_embeds"] = emb[:batch] if cfg else None
                kwargs = {k: current[k] for k in step_inputs}
                outputs = callback_on_step_end(state, i, schedule_t, kwargs)
                changed = callback_outputs(outputs, current, i, tuple(current))
                x = changed["latents"].to(self.device, torch.float32) if "latents" in changed else x
                if "prompt_embeds" in changed:  # new conditioning: the caption K/V again, for the next steps
                    emb = changed["prompt_embeds"].to(self.device, torch.float32)
                    cond = denoiser.prepare(emb, mask)
                    require_finite(cond.text, "transformer", denoiser.label, plan, "in the caption K/V")
            if callback is not None:
                callback(i, float(t[0]), x)
        seconds["denoise"] = self._clock() - start
        x = solver.result(x)  # Sprint: the last step's x0 / sigma_data
        require_finite(x, "denoising loop", f"{sampler} over {denoiser.label}", plan, "in the final latents")
        result = SanaDeployOutput(x, plan.height, plan.width, seconds, backends, "off", step_seconds, denoiser.kind)
        if output_type == "latent":
            seconds["total"] = self._clock() - call_start
            return result if return_dict else (result.images,)

        # 3. DC-AE decode (tiled above the threshold), resize back from the bucket, convert
        start = self._clock()
        image, result.tiled_decode = self._decode(x / self.preset.vae_scaling_factor, plan.height, plan.width, backends)
        require_finite(image, "vae", backends["vae"], plan)
        seconds["vae"] = self._clock() - start
        if plan.resized:
            image = resize_and_crop(image, plan.out_height, plan.out_width)
        result.images = postprocess(image, output_type)
        result.height, result.width = plan.out_height, plan.out_width
        seconds["total"] = self._clock() - call_start
        return result if return_dict else (result.images,)

    def _solver(
        self, sampler: str, steps: int | None, generator, timesteps, sigmas, max_timesteps, intermediate_timesteps
    ) -> Solver:  # noqa: ANN001
        """This request's solver; the step count defaults to the custom schedule's length, else the solver's."""
        if steps is None:
            custom = timesteps if timesteps is not None else sigmas
            if custom is not None and hasattr(custom, "__len__"):
                steps = len(custom) - (1 if sampler == "scm" and timesteps is not None else 0)
            else:
                steps = DEFAULT_STEPS[sampler]

        def noise(shape: tuple[int, ...]) -> torch.Tensor:  # the sCM solver's fresh noise, from the same generator
            return _latents(shape, generator, self.device)

        return make_solver(
            sampler, steps, self.preset.flow_shift, timesteps=timesteps, sigmas=sigmas, noise=noise,
            sigma_data=self.preset.sigma_data, max_timesteps=max_timesteps,
            intermediate_timesteps=intermediate_timesteps,
        )  # fmt: skip

    def _clock(self) -> float:
        """``perf_counter``, after a CUDA synchronise when the timings must be exact (``sync_timings``)."""
        if self.sync_timings and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _denoiser(
        self, plan: SizePlan, rows: int, control: torch.Tensor | None, control_scale: float, pag: bool
    ) -> Denoiser:
        """The request's denoiser: the base one, the split with the ControlNet's residuals, or the PAG step graph."""
        if control is not None:
            split = self.provider.step_denoiser("transformer_control", plan.height, plan.width, rows)
            controlnet = self.provider.runner("controlnet", plan.height, plan.width, rows)
            blocks = min(self.provider.controlnet_layers, self.preset.transformer.num_layers - 1)
            return ControlNetDenoiser(split, controlnet, control.to(self.device), control_scale, max(blocks, 1))
        if pag:
            return self.provider.step_denoiser("transformer_pag", plan.height, plan.width, rows)
        return self.provider.denoiser(plan.height, plan.width, rows)

    def _encode_images(
        self, images: list, plan: SizePlan, batch: int, what: str, backends: dict, seconds: dict
    ) -> torch.Tensor:
        """Input images (one, or one per prompt) -> DC-AE latents x ``scaling_factor``, (batch, 32, h, w) fp32: each
        distinct image encoded once (the ``vae_encoder`` stage), then repeated for every image made from it."""
        start = self._clock()
        pixels = prepare_images(images, plan.height, plan.width, what).to(self.device)
        encoder = self.provider.runner("vae_encoder", plan.height, plan.width, pixels.shape[0])
        backends["vae_encoder"] = encoder.label
        latents = encoder(image=pixels)["latent"].float() * self.preset.vae_scaling_factor
        require_finite(latents, "vae_encoder", encoder.label, plan, f"encoding the {what}")
        seconds["vae_encoder"] = seconds.get("vae_encoder", 0.0) + self._clock() - start
        return latents.repeat_interleave(batch // latents.shape[0], dim=0)

    def _encode(
        self,
        prompts: list[str],
        negatives: list[str] | None,
        plan: SizePlan,
        batch: int,
        chi: Sequence[str] | None | str = DEFAULT_CHI,
        max_sequence_length: int = TEXT_MAX_LENGTH,
    ) -> tuple[torch.Tensor, torch.Tensor, str]:
        te = self.provider.runner("text_encoder", plan.height, plan.width, batch)
        chi = self.complex_human_instruction if chi is DEFAULT_CHI else chi
        emb, mask = encode_prompts(
            te, self.tokenizer, prompts, negatives, chi, te.pad_seq_to,
            cache=self.prompt_cache, model_id=self.model_id, max_length=max_sequence_length,
        )  # fmt: skip
        return emb, mask, te.label

    def encode_prompt(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] = "",
        do_classifier_free_guidance: bool | None = None,
        height: int | None = None,
        width: int | None = None,
        *,
        max_sequence_length: int = TEXT_MAX_LENGTH,
        complex_human_instruction: Sequence[str] | None = DEFAULT_CHI,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The text embeddings and masks one request runs on: ``[negatives; prompts]`` with CFG, fp32 (B, L, C)
        and int64 (B, L) with L = ``max_sequence_length``, exactly as :meth:`__call__` computes them (and as it takes
        them back as ``prompt_embeds``). ``do_classifier_free_guidance``: default on, except for Sana-Sprint (which
        has no CFG)."""
        cfg = not self.preset.sprint if do_classifier_free_guidance is None else do_classifier_free_guidance
        if cfg and self.preset.sprint:
            fail(
                f"{self.preset.name} is a Sana-Sprint model: it has no classifier-free guidance, so no negative prompt "
                f"embeddings; call encode_prompt with do_classifier_free_guidance=False (the default for Sprint)."
            )
        prompts = _prompt_list(prompt, "prompt")
        negatives = _prompt_list(negative_prompt, "negative_prompt")
        negatives = negatives * len(prompts) if len(negatives) == 1 else negatives
        plan = plan_size(height, width, self.preset, True)
        chi = check_chi(
            self.complex_human_instruction if complex_human_instruction is DEFAULT_CHI else complex_human_instruction
        )
        length = check_max_sequence_length(max_sequence_length)
        emb, mask, _ = self._encode(prompts, negatives if cfg else None, plan, len(prompts), chi, length)
        return emb, mask

    def _steps(self, steps: int):
        if not self.progress_bar:
            return range(steps)
        from tqdm.auto import tqdm

        return tqdm(range(steps), desc="denoise", unit="step")

    def _decode(self, latent: torch.Tensor, height: int, width: int, backends: dict) -> tuple[torch.Tensor, str]:
        """(B,3,H,W) fp32 in about [-1, 1]; the exact split decode when a torch VAE is at hand."""
        if not self.tiling.use_tiling(height, width):
            vae = self.provider.runner("vae", height, width, latent.shape[0])
            backends["vae"] = vae.label
            return vae(latent=latent)["sample"].float(), "off"
        module = self.provider.torch_vae() if self.tiling.method != "latent" else None
        if self.tiling.method == "exact" and module is None:
            fail("Exact tiled decode needs the torch DC-AE; this pipeline has none loaded. Use method='latent'.")
        if module is not None:
            backends["vae"] = "torch (exact tiled)"
            with winograd_for(module):  # Winograd 3x3 convolutions on an fp32 CPU DC-AE, as its torch runner
                return split_tiled_decode(module, latent, self.tiling.tile), "exact"
        tile = self.tiling.tile
        vae = self.provider.runner("vae", min(tile, height), min(tile, width), latent.shape[0])
        backends["vae"] = f"{vae.label} (latent tiles)"

        def decode(z: torch.Tensor) -> torch.Tensor:
            return vae(latent=z)["sample"]

        return tiled_decode(decode, latent, tile, self.tiling.overlap), "latent-tiles"


__all__ = ["OUTPUT_TYPES", "SanaDeployError", "SanaDeployOutput", "SanaDeployPipeline"]
