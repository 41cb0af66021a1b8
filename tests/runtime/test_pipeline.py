"""End to end on sana-tiny: our pipeline vs diffusers' SanaPipeline on the same modules, and across backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sana_deploy.runners import Runner

PROMPT = "  A Red Fox in the SNOW "  # diffusers lower-cases and strips; so must we


def _ours(pipe, prompt=PROMPT, **kw):
    args = dict(height=256, width=256, num_inference_steps=3, guidance_scale=4.5, resolution_binning=False)
    args.update(kw)
    return pipe(prompt, generator=torch.Generator().manual_seed(0), **args)


def _theirs(pipe, prompt=PROMPT, **kw):
    args = dict(height=256, width=256, num_inference_steps=3, guidance_scale=4.5, use_resolution_binning=False)
    args.update(kw)
    return pipe(prompt, generator=torch.Generator().manual_seed(0), **args).images


def _err(a, b) -> float:
    return float((torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max())


def test_latents_match_diffusers_dpm(tiny_pipe, diffusers_pipe):
    ours = _ours(tiny_pipe, output_type="latent").images
    theirs = _theirs(diffusers_pipe, output_type="latent")
    err = _err(ours, theirs)
    print(f"flow-dpm-solver latents vs diffusers: max abs err {err:.2e}")
    assert ours.shape == theirs.shape == (1, 32, 8, 8)
    assert err <= 1e-4


def test_latents_match_diffusers_euler_batch(tiny_pipe, diffusers_pipe):
    from diffusers import FlowMatchEulerDiscreteScheduler

    dpm = diffusers_pipe.scheduler
    diffusers_pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=tiny_pipe.preset.flow_shift)
    try:
        kw = dict(prompt=["a cat", "a dog"], negative_prompt="blurry", num_images_per_prompt=2, output_type="latent")
        kw.update(height=192, width=320)
        theirs = _theirs(diffusers_pipe, **kw)
        ours = _ours(tiny_pipe, sampler="flow-euler", **kw).images
    finally:
        diffusers_pipe.scheduler = dpm
    err = _err(ours, theirs)
    print(f"flow-euler batch 2x2 latents vs diffusers: max abs err {err:.2e}")
    assert ours.shape == (4, 32, 6, 10)
    assert err <= 1e-4


def test_images_match_diffusers_with_binning(tiny_pipe, diffusers_pipe):
    """960x720 is not a multiple of 32: binned to the 1024-tier bucket, generated, resized back."""
    ours = _ours(tiny_pipe, height=960, width=720, num_inference_steps=2, resolution_binning=True, output_type="np")
    theirs = _theirs(
        diffusers_pipe, height=960, width=720, num_inference_steps=2, use_resolution_binning=True, output_type="np"
    )
    assert ours.images.shape == theirs.shape == (1, 960, 720, 3)
    err = float(np.abs(ours.images - theirs).max())
    print(f"binned 960x720 image vs diffusers: max abs err {err:.2e}")
    assert err <= 1e-3


def test_onnxruntime_matches_torch(tiny, tiny_export, tiny_pipe):
    from sana_deploy.runtime.pipeline import SanaDeployPipeline

    root, _ = tiny_export
    ort = SanaDeployPipeline.from_components(tiny, backend="onnxruntime", export_dir=root)
    assert ort.provider.runner("transformer_cached", 64, 64, 2).backend == "onnxruntime"
    a = _ours(tiny_pipe, output_type="latent").images
    b = _ours(ort, output_type="latent").images
    err = _err(a, b)
    print(f"onnxruntime vs torch latents: max abs err {err:.2e}")
    assert err <= 1e-3
    ia, ib = _ours(tiny_pipe, output_type="np").images, _ours(ort, output_type="np").images
    assert float(np.abs(ia - ib).max()) <= 1e-3
    assert tiny.transformer is not None and tiny.text_encoder is not None  # the caller's modules are left alone


def test_onnxruntime_from_model_frees_exported_modules(tiny_export, tiny_pipe):
    """from_model owns its modules: once exported, the transformer and text encoder are not kept next to the
    sessions (only the DC-AE, for the exact tiled decode), and the images are unchanged."""
    from sana_deploy.models.random import random_components
    from sana_deploy.runtime.assemble import fixed_stages

    root, _ = tiny_export
    comps = random_components("sana-tiny")
    provider = fixed_stages(comps, "onnxruntime", "fp32", root, own_modules=True)
    assert comps.transformer is None and comps.text_encoder is None and provider.torch_vae() is comps.vae
    loaded = {c: r for c, r in provider.runners.items() if isinstance(r, Runner)}
    assert {r.backend for r in loaded.values()} == {"onnxruntime"}
    assert set(loaded) == {"text_encoder", "transformer_text", "transformer_cached", "vae"}  # others: on first use
    ort = type(tiny_pipe)(provider, comps.tokenizer, comps.preset, comps.model_id)
    a, b = _ours(tiny_pipe, output_type="latent").images, _ours(ort, output_type="latent").images
    assert _err(a, b) <= 1e-3


def test_callback_and_generator_list(tiny_pipe):
    seen = []
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    out = tiny_pipe(
        ["x", "y"],
        height=128,
        width=128,
        num_inference_steps=2,
        generator=gens,
        resolution_binning=False,
        output_type="latent",
        callback=lambda i, t, x: seen.append((i, t, tuple(x.shape))),
    )
    assert [s[0] for s in seen] == [0, 1] and seen[0][1] == 999.0 and seen[0][2] == (2, 32, 4, 4)
    single = tiny_pipe(
        "y",
        height=128,
        width=128,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(2),
        resolution_binning=False,
        output_type="latent",
    )
    assert _err(out.images[1:], single.images) <= 1e-5  # per-image generators: image 2 does not depend on image 1


def test_bad_requests_are_clear_errors(tiny_pipe):
    from sana_deploy.errors import SanaDeployError

    with pytest.raises(SanaDeployError, match="output_type"):
        tiny_pipe("x", output_type="jpeg")
    with pytest.raises(SanaDeployError, match="negative prompts"):
        tiny_pipe(["a", "b"], negative_prompt=["x", "y", "z"])
    with pytest.raises(SanaDeployError, match="prompt must be"):
        tiny_pipe([])
