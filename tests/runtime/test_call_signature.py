"""diffusers' call signature on ``SanaDeployPipeline.__call__``: golden tests against diffusers' ``SanaPipeline``
(loaded with ``from_pretrained`` from the saved sana-tiny folder with its own tokenizer) with ``prompt_embeds``,
``max_sequence_length=120``, ``complex_human_instruction=None`` and ``callback_on_step_end`` callbacks that edit the
latents or the embeddings or stop the loop, on torch and onnxruntime; custom schedules against diffusers'
schedulers; and the bad inputs, each a clear ``SanaDeployError``.

Same request on both sides: seed (``torch.Generator().manual_seed``), 3 steps, guidance 4.5 (CFG), binning off,
384x640 (non-square). Latents agree to 1e-4, images to 1/255.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sana_deploy.errors import SanaDeployError
from sana_deploy.runtime.call_options import CallbackError
from sana_deploy.runtime.pipeline import SanaDeployPipeline
from sana_deploy.runtime.solvers import make_solver
from sana_deploy.runtime.text import COMPLEX_HUMAN_INSTRUCTION

PROMPT = "  A Red Fox in the SNOW, watercolour "
SEED = 5
STEPS = 3
HEIGHT, WIDTH = 384, 640
LATENT_TOL = 1e-4
IMAGE_TOL = 1 / 255


def _err(a, b) -> float:  # noqa: ANN001
    return float((torch.as_tensor(np.asarray(a)).float() - torch.as_tensor(np.asarray(b)).float()).abs().max())


def _request(**kwargs) -> dict:
    return {
        "num_inference_steps": STEPS, "guidance_scale": 4.5, "height": HEIGHT, "width": WIDTH,
        "generator": torch.Generator().manual_seed(SEED), "use_resolution_binning": False, **kwargs,
    }  # fmt: skip


def edit_latents(pipe, i, t, kwargs):  # noqa: ANN001, ANN201
    """A diffusers-style callback that edits the latents after the first step."""
    if i == 0:
        kwargs["latents"] = kwargs["latents"] * 0.9 + 0.05
    return kwargs


def edit_embeds(pipe, i, t, kwargs):  # noqa: ANN001, ANN201
    """Edits the (CFG-batched) prompt embeddings after the first step: the next steps see them."""
    if i == 0:
        kwargs["prompt_embeds"] = kwargs["prompt_embeds"] * 1.5
    return kwargs


def stop_after_first(pipe, i, t, kwargs):  # noqa: ANN001, ANN201
    """diffusers' documented way to stop early."""
    if i == 0:
        pipe._interrupt = True
    return kwargs


@pytest.fixture(scope="module")
def ort_pipe(tiny, tiny_export):
    return SanaDeployPipeline.from_components(tiny, backend="onnxruntime", export_dir=tiny_export[0])


@pytest.fixture(scope="module")
def embeds(diffusers_pipe):
    """diffusers' own encode_prompt at max_sequence_length=120 (with the pipeline's default CHI)."""
    pe, pm, ne, nm = diffusers_pipe.encode_prompt(
        PROMPT, True, negative_prompt="", max_sequence_length=120, complex_human_instruction=COMPLEX_HUMAN_INSTRUCTION
    )
    assert pe.shape[1] == 120 and ne.shape == pe.shape
    return pe, pm, ne, nm


def _both(pipe: SanaDeployPipeline, diffusers_pipe, output_type: str, **kwargs):  # noqa: ANN001
    ours = pipe(**_request(output_type=output_type, **kwargs))
    theirs = diffusers_pipe(**_request(output_type=output_type, **kwargs)).images
    return ours, np.asarray(theirs.float() if isinstance(theirs, torch.Tensor) else theirs)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_prompt_embeds_120_tokens_and_an_editing_callback(tiny_pipe, ort_pipe, diffusers_pipe, embeds, backend):
    pipe = tiny_pipe if backend == "torch" else ort_pipe
    pe, pm, ne, nm = embeds
    call = {
        "prompt_embeds": pe, "prompt_attention_mask": pm, "negative_prompt_embeds": ne,
        "negative_prompt_attention_mask": nm, "negative_prompt": None, "max_sequence_length": 120,
        "callback_on_step_end": edit_latents, "callback_on_step_end_tensor_inputs": ["latents"],
    }  # fmt: skip
    ours, theirs = _both(pipe, diffusers_pipe, "latent", **call)
    assert ours.backends["transformer"].startswith(backend)
    err = _err(ours.images, theirs)
    print(f"{backend} prompt_embeds(120) + editing callback: latents max abs err {err:.2e}")
    assert err <= LATENT_TOL
    unedited = pipe(**_request(output_type="latent", **{**call, "callback_on_step_end": None}))
    assert _err(unedited.images, ours.images) > 1e-3  # the edit reached the later steps
    ours, theirs = _both(pipe, diffusers_pipe, "np", **call)
    err = _err(ours.images, theirs)
    print(f"{backend} prompt_embeds(120) + editing callback: image max abs err {err * 255:.3f}/255")
    assert err <= IMAGE_TOL


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_text_at_max_sequence_length_120(tiny_pipe, ort_pipe, diffusers_pipe, backend):
    """Our own encoding at 120 tokens (CHI on; BOS + the last 119 positions) and the negatives encoded for given
    prompt embeddings, as diffusers encodes them."""
    pipe = tiny_pipe if backend == "torch" else ort_pipe
    ours, theirs = _both(pipe, diffusers_pipe, "latent", prompt=PROMPT, max_sequence_length=120)
    assert _err(ours.images, theirs) <= LATENT_TOL
    emb, mask = pipe.encode_prompt(PROMPT, max_sequence_length=120)  # [negative; prompt]
    assert emb.shape[:2] == (2, 120)
    ours = pipe(**_request(output_type="latent", prompt_embeds=emb[1:], prompt_attention_mask=mask[1:],
                           max_sequence_length=120))  # fmt: skip
    assert _err(ours.images, theirs) <= LATENT_TOL


def test_complex_human_instruction_off(tiny_pipe, diffusers_pipe):
    ours, theirs = _both(tiny_pipe, diffusers_pipe, "latent", prompt=PROMPT, complex_human_instruction=None)
    assert _err(ours.images, theirs) <= LATENT_TOL
    with_chi = tiny_pipe(**_request(output_type="latent", prompt=PROMPT))
    assert _err(with_chi.images, ours.images) > 1e-3


def test_callback_editing_prompt_embeds(tiny_pipe, diffusers_pipe):
    """The returned prompt_embeds (the [negatives; prompts] batch) condition the next steps: the caption K/V is
    computed again from them."""
    call = {"prompt": PROMPT, "callback_on_step_end": edit_embeds,
            "callback_on_step_end_tensor_inputs": ["latents", "prompt_embeds"]}  # fmt: skip
    ours, theirs = _both(tiny_pipe, diffusers_pipe, "latent", **call)
    assert _err(ours.images, theirs) <= LATENT_TOL


def test_interrupt_stops_like_diffusers(tiny_pipe, diffusers_pipe):
    seen = []
    ours, theirs = _both(tiny_pipe, diffusers_pipe, "latent", prompt=PROMPT, callback_on_step_end=stop_after_first)
    assert len(ours.step_seconds) == 1  # the remaining steps were skipped
    assert _err(ours.images, theirs) <= LATENT_TOL
    assert "_interrupt" not in vars(tiny_pipe)  # per call: another call (or thread) is not stopped
    out = tiny_pipe(**_request(output_type="latent", prompt=PROMPT, callback=lambda i, t, x: seen.append(i)))
    assert seen == [0, 1, 2] and len(out.step_seconds) == STEPS


def test_callback_arguments_and_legacy_callback(tiny_pipe):
    """callback_on_step_end(pipe, i, t, kwargs) with diffusers' arguments; the old callback(step, t, latents) still
    runs after it and sees the edited latents; return_dict=False gives a tuple."""
    record, legacy = [], []

    def cb(pipe, i, t, kwargs):  # noqa: ANN001, ANN202
        record.append((i, t.clone(), pipe.num_timesteps, pipe.do_classifier_free_guidance, sorted(kwargs)))
        assert pipe.model_id == tiny_pipe.model_id  # other attributes read through to the pipeline
        kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    out = tiny_pipe(
        **_request(prompt="x", num_inference_steps=2, output_type="latent", callback_on_step_end=cb,
                   callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "negative_prompt_embeds"],
                   callback=lambda i, t, x: legacy.append(float(x.abs().max()))),
        return_dict=False,
    )  # fmt: skip
    assert isinstance(out, tuple) and out[0].shape == (1, 32, HEIGHT // 32, WIDTH // 32)
    assert [r[0] for r in record] == [0, 1] and record[0][1].dtype == torch.int64 and int(record[0][1]) == 999
    assert record[0][2:] == (2, True, ["latents", "negative_prompt_embeds", "prompt_embeds"])
    assert legacy == [0.0, 0.0]


def test_custom_sigmas_and_timesteps_match_diffusers_schedulers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sigmas = [1.0, 0.8, 0.55, 0.3, 0.1]
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.set_timesteps(sigmas=sigmas)
    ours = make_solver("flow-euler", 5, 3.0, sigmas=sigmas)
    assert torch.allclose(ours.sigmas, ref.sigmas) and torch.allclose(ours.timesteps, ref.timesteps)
    x_ref = x = torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(0))
    for i, t in enumerate(ref.timesteps):
        v = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        x_ref = ref.step(v, t, x_ref, return_dict=False)[0]
        x = ours.step(v, x)
    assert (x - x_ref).abs().max() <= 1e-6
    dpm = make_solver("flow-dpm-solver", 4, 3.0, timesteps=[999, 750, 400, 120])
    assert dpm.timesteps.tolist() == [999, 750, 400, 120] and dpm.timesteps.dtype == torch.int64
    assert torch.allclose(dpm.sigmas, torch.tensor([0.999, 0.75, 0.4, 0.12, 0.0]))


def test_custom_schedule_through_the_pipeline(tiny_pipe):
    base = tiny_pipe(**_request(prompt="x", output_type="latent", num_inference_steps=None, sampler="flow-euler",
                                sigmas=[1.0, 0.6, 0.2]))  # fmt: skip
    assert len(base.step_seconds) == 3
    with pytest.raises(SanaDeployError, match="Got 3 sigmas for 4 steps"):
        tiny_pipe(**_request(prompt="x", num_inference_steps=4, sampler="flow-euler", sigmas=[1.0, 0.6, 0.2]))
    with pytest.raises(SanaDeployError, match="sigmas outside \\(0, 1\\)"):
        tiny_pipe(**_request(prompt="x", num_inference_steps=None, sigmas=[1.0, 0.5]))  # DPM needs sigma < 1
    with pytest.raises(SanaDeployError, match="not both"):
        tiny_pipe(**_request(prompt="x", num_inference_steps=None, sigmas=[0.9], timesteps=[900]))


def _bad(pipe: SanaDeployPipeline, match: str, kind: type[Exception] = SanaDeployError, **kwargs) -> None:
    with pytest.raises(kind, match=match):
        pipe(**_request(num_inference_steps=1, height=128, width=128, output_type="latent", **kwargs))


def test_bad_inputs_are_clear_errors(tiny_pipe):
    emb, mask = tiny_pipe.encode_prompt("x", do_classifier_free_guidance=False)
    wide = torch.zeros(1, 300, 96)
    _bad(tiny_pipe, "prompt_embeds has width 96, but this model's transformer takes 64-wide", prompt_embeds=wide,
         prompt_attention_mask=torch.ones(1, 300, dtype=torch.long))  # fmt: skip
    _bad(tiny_pipe, "needs its prompt_attention_mask", prompt_embeds=emb)
    _bad(tiny_pipe, "must have shape \\(1, 300\\)", prompt_embeds=emb, prompt_attention_mask=mask[:, :10])
    _bad(tiny_pipe, "Pass prompt or prompt_embeds, not both", prompt="x", prompt_embeds=emb, prompt_attention_mask=mask)
    _bad(tiny_pipe, "Provide prompt or prompt_embeds")
    _bad(tiny_pipe, "must match", prompt_embeds=emb, prompt_attention_mask=mask, negative_prompt_embeds=emb[:, :50],
         negative_prompt_attention_mask=mask[:, :50])  # fmt: skip
    _bad(
        tiny_pipe,
        "encoded negative prompt has shape .*max_sequence_length=120",
        prompt_embeds=emb[:, :120],
        prompt_attention_mask=mask[:, :120],
    )
    _bad(tiny_pipe, "eta=0.3", prompt="x", eta=0.3)
    _bad(tiny_pipe, "clean_caption", prompt="x", clean_caption=True)
    _bad(tiny_pipe, "set_adapters", prompt="x", attention_kwargs={"scale": 0.5})
    _bad(tiny_pipe, "max_sequence_length must be an integer from 2", prompt="x", max_sequence_length=0)
    _bad(tiny_pipe, "complex_human_instruction must be a list of strings", prompt="x", complex_human_instruction="hi")
    _bad(tiny_pipe, "has to be in \\['latents', 'prompt_embeds', 'negative_prompt_embeds'\\], but found \\['noise'\\]",
         prompt="x", callback_on_step_end_tensor_inputs=["noise"])  # fmt: skip


@pytest.mark.parametrize(
    "returned, match",
    [
        (None, "returned NoneType, not a dict"),
        ([1], "returned list, not a dict"),
        ({"latents": torch.zeros(1, 32, 2, 2)}, "must keep the shape \\(1, 32, 4, 4\\)"),
        ({"latents": "x"}, "returned latents as str"),
        ({"latents": torch.full((1, 32, 4, 4), float("nan"))}, "not a finite floating-point tensor"),
        ({"step": 3}, "returned keys \\['step'\\] the pipeline does not read"),
    ],
    ids=["none", "list", "shape", "not-tensor", "nan", "unknown-key"],
)
def test_unexpected_callback_returns_are_errors(tiny_pipe, returned, match):
    _bad(tiny_pipe, match, CallbackError, prompt="x", callback_on_step_end=lambda pipe, i, t, kw: returned)
