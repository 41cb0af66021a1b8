"""diffusers' call options on ``SanaDeployPipeline.__call__``: their checks, and the step-callback protocol.

The pipeline's loop uses these; they hold no state between calls. docs/VARIANTS.md#diffusers-call-signature says
what each option does and where it differs from diffusers.

* ``prompt_embeds`` / ``prompt_attention_mask`` (and the negative ones): used as given, as diffusers does; the width
  must be the transformer's ``caption_channels``, the mask (B, L) with the embeddings' B and L.
* ``callback_on_step_end(pipe, step, timestep, callback_kwargs) -> dict``: called after each solver step with the
  tensors named in ``callback_on_step_end_tensor_inputs``. The first argument is a :class:`StepState`, a per-call
  view of the pipeline (attributes read through to it), so that ``pipe._interrupt = True`` stops this call only and
  two threads sharing one pipeline never stop each other. The returned dict's ``latents`` replace the latents and
  its ``prompt_embeds`` the conditioning of the next steps; anything else is an error naming what came back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from sana_deploy.errors import SanaDeployError, fail
from sana_deploy.models.config import SanaPreset
from sana_deploy.runtime.solvers import FLOW_SAMPLERS, canonical_sampler

DEFAULT_CHI: Any = "default"  # complex_human_instruction left out: the pipeline's own (diffusers' default text)
MAX_SEQUENCE_LENGTH = 1024  # the transformer graphs' text_len axis (export/specs.py)
# What callback_on_step_end may ask for (diffusers' ``_callback_tensor_inputs``), base Sana and Sana-Sprint.
CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "negative_prompt_embeds")
SPRINT_CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds")

StepCallback = Callable[[Any, int, torch.Tensor, dict[str, torch.Tensor]], Mapping[str, Any]]


class CallbackError(SanaDeployError):
    """A ``callback_on_step_end`` returned something the pipeline cannot use."""


def resolve_sampler(preset: SanaPreset, sampler: str | None) -> str:
    """The solver a request runs: the model's own by default (``scm`` for Sana-Sprint, else Flow-DPM-Solver++);
    a solver the model was not trained for is an error."""
    key = preset.default_sampler if sampler is None else canonical_sampler(sampler)
    if preset.sprint and key != "scm":
        fail(
            f"{preset.name} is a Sana-Sprint model: it runs the sCM solver (sampler='scm', 1 to 4 steps), not "
            f"{key}. Leave sampler out, or pass sampler='scm'."
        )
    if not preset.sprint and key == "scm":
        fail(
            f"The sCM solver is Sana-Sprint's; {preset.name} is not a Sprint model (no guidance embedding). Use one "
            f"of {', '.join(FLOW_SAMPLERS)}."
        )
    return key


def _given(negative_prompt: str | Sequence[str] | None) -> bool:
    if negative_prompt is None:
        return False
    texts = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
    return any(t.strip() for t in texts if isinstance(t, str)) or any(not isinstance(t, str) for t in texts)


def check_sprint_guidance(
    preset: SanaPreset, guidance_scale: float, negative_prompt: str | Sequence[str] | None, negative_embeds: object
) -> None:
    """Sana-Sprint has no classifier-free guidance: ``guidance_scale`` is the transformer's embedded guidance input
    (one call per step, batch 1 per image). CFG-only inputs are refused: a non-empty ``negative_prompt`` or
    ``negative_prompt_embeds``/``negative_prompt_attention_mask``."""
    if not preset.sprint:
        return
    if _given(negative_prompt) or negative_embeds is not None:
        what = "negative_prompt_embeds" if negative_embeds is not None else f"negative_prompt={negative_prompt!r}"
        fail(
            f"{preset.name} is a Sana-Sprint model: guidance_scale={guidance_scale:g} is its embedded guidance (a "
            f"transformer input, one call per step), not classifier-free guidance, so there is no negative prompt. "
            f"Drop {what}."
        )


def check_guidance_scale(guidance_scale: object) -> float:
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, int | float):
        fail(f"guidance_scale must be a number, got {guidance_scale!r}.")
    if not math.isfinite(guidance_scale):
        fail(f"guidance_scale must be finite, got {guidance_scale!r}.")
    return float(guidance_scale)


def check_max_sequence_length(length: object) -> int:
    if isinstance(length, bool) or not isinstance(length, int) or not 2 <= length <= MAX_SEQUENCE_LENGTH:
        fail(
            f"max_sequence_length must be an integer from 2 to {MAX_SEQUENCE_LENGTH} (caption tokens kept per prompt; "
            f"Sana's is 300), got {length!r}."
        )
    return length


def check_chi(chi: object) -> tuple[str, ...] | None:
    """``complex_human_instruction`` of one call: lines of text, or None/[] (off)."""
    if chi is None:
        return None
    if isinstance(chi, str) or not isinstance(chi, Sequence) or not all(isinstance(line, str) for line in chi):
        fail(
            "complex_human_instruction must be a list of strings (lines joined with newlines before the prompt), or "
            f"None to turn it off; got {chi!r}."
        )
    return tuple(chi) or None


def check_unsupported(eta: object, clean_caption: object, attention_kwargs: object) -> None:
    """diffusers options whose only supported value is the default, refused with what to do instead."""
    if isinstance(eta, bool) or not isinstance(eta, int | float) or eta != 0:
        fail(
            f"eta={eta!r}: none of sana-deploy's solvers (flow-dpm-solver, flow-euler, scm) takes eta (diffusers "
            f"ignores it for them too); leave it at 0."
        )
    if clean_caption:
        fail(
            "clean_caption=True is not supported (diffusers' caption cleaning needs bs4 and ftfy); clean the prompt "
            "before the call and pass clean_caption=False."
        )
    if attention_kwargs:
        fail(
            f"attention_kwargs={attention_kwargs!r} is not supported per call; set a LoRA's scale with "
            f"pipe.set_adapters(names, weights) or pipe.fuse_lora(lora_scale=...) before the call."
        )


def check_embeds(
    embeds: object, mask: object, what: str, caption_channels: int, like: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``prompt_embeds``-style input (B, L, caption_channels) with its (B, L) mask, as fp32 and int64."""
    mask_name = what.replace("embeds", "attention_mask")
    if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3:
        shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        fail(f"{what} must be a (batch, tokens, {caption_channels}) tensor, got {shape}.")
    if embeds.shape[-1] != caption_channels:
        fail(
            f"{what} has width {embeds.shape[-1]}, but this model's transformer takes {caption_channels}-wide caption "
            f"embeddings (its text encoder's hidden size): pass embeddings from this model's text encoder "
            f"(pipe.encode_prompt)."
        )
    if not 2 <= embeds.shape[1] <= MAX_SEQUENCE_LENGTH or embeds.shape[0] < 1:
        fail(f"{what} has shape {tuple(embeds.shape)}; it needs 1+ rows of 2 to {MAX_SEQUENCE_LENGTH} tokens.")
    if mask is None:
        fail(f"{what} needs its {mask_name} (batch, tokens; 1 = keep), as in diffusers.")
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(embeds.shape[:2]):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        fail(f"{mask_name} must have shape {tuple(embeds.shape[:2])} to match {what}, got {shape}.")
    if like is not None and tuple(embeds.shape) != tuple(like.shape):
        fail(
            f"{what} has shape {tuple(embeds.shape)} but prompt_embeds has {tuple(like.shape)}; they must match "
            f"(pass max_sequence_length={like.shape[1]}, or embeddings of the same length)."
        )
    if embeds.is_floating_point() is False:
        fail(f"{what} must be a floating-point tensor, got {embeds.dtype}.")
    return embeds.float(), mask.long()


def tensor_inputs(callback: object, names: Sequence[str] | None, sprint: bool) -> tuple[str, ...]:
    """The validated ``callback_on_step_end_tensor_inputs`` (a diffusers ``PipelineCallback`` brings its own)."""
    if callback is not None and not callable(callback):
        fail(
            f"callback_on_step_end must be callable (pipe, step, timestep, callback_kwargs) -> dict, got {callback!r}."
        )
    own = getattr(callback, "tensor_inputs", None) if callback is not None else None
    if isinstance(own, list | tuple):
        names = own
    names = ("latents",) if names is None else names
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        fail(f"callback_on_step_end_tensor_inputs must be a list of names, got {names!r}.")
    allowed = SPRINT_CALLBACK_TENSOR_INPUTS if sprint else CALLBACK_TENSOR_INPUTS
    bad = [n for n in names if n not in allowed]
    if bad:
        fail(f"callback_on_step_end_tensor_inputs has to be in {list(allowed)}, but found {bad}.")
    return tuple(names)


class StepState:
    """The first argument of ``callback_on_step_end``: this call's view of the pipeline.

    Attributes not set here read through to the pipeline; ``_interrupt = True`` (diffusers' way to stop) ends this
    call's loop after the current step; ``interrupt``, ``guidance_scale``, ``num_timesteps`` and
    ``do_classifier_free_guidance`` read as diffusers' pipeline properties do.
    """

    def __init__(self, pipe: object, guidance_scale: float, num_timesteps: int, cfg: bool) -> None:
        self._pipe = pipe
        self._interrupt = False
        self._guidance_scale = guidance_scale
        self._num_timesteps = num_timesteps
        self._cfg = cfg

    def __getattr__(self, name: str) -> Any:  # only for names not found on the view itself
        return getattr(self.__dict__["_pipe"], name)

    @property
    def interrupt(self) -> bool:
        return bool(self._interrupt)

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._cfg


def callback_outputs(
    outputs: object, current: Mapping[str, torch.Tensor], step: int, allowed: Sequence[str]
) -> dict[str, torch.Tensor]:
    """What a ``callback_on_step_end`` returned, checked: a dict whose keys are tensor inputs the pipeline reads
    back (``latents``, ``prompt_embeds``; ``negative_prompt_embeds`` is accepted and, as in diffusers, has no
    effect), each a finite tensor of the shape it replaces. Returns the replacements that change something."""
    where = f"callback_on_step_end at step {step}"
    if not isinstance(outputs, Mapping):
        fail(
            f"{where} returned {type(outputs).__name__}, not a dict: return callback_kwargs (possibly edited), e.g. "
            f"`return callback_kwargs` or `return {{'latents': latents}}`.",
            CallbackError,
        )
    unknown = [k for k in outputs if k not in allowed]
    if unknown:
        fail(f"{where} returned keys {unknown} the pipeline does not read; it reads {list(allowed)}.", CallbackError)
    out = {}
    for key, value in outputs.items():
        ref = current.get(key)
        if value is ref:
            continue
        if not isinstance(value, torch.Tensor):
            fail(
                f"{where} returned {key} as {type(value).__name__}; return a tensor (or leave the key out).",
                CallbackError,
            )
        if ref is not None and tuple(value.shape) != tuple(ref.shape):
            fail(
                f"{where} returned {key} of shape {tuple(value.shape)}; it must keep the shape {tuple(ref.shape)}.",
                CallbackError,
            )
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            fail(f"{where} returned {key} that is not a finite floating-point tensor.", CallbackError)
        out[key] = value
    return out
