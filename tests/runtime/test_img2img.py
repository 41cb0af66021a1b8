"""img2img through the one pipeline: the DC-AE encoder stage, the schedule cut by ``strength``, input images.

Golden: diffusers has no img2img pipeline for base Sana, so the reference is built from the diffusers components of
``SanaPipeline.from_pretrained`` (the saved sana-tiny folder, its own tokenizer), exactly as diffusers' img2img
pipelines use them: ``image_processor.preprocess`` -> ``vae.encode(...).latent * scaling_factor``; the scheduler's
timesteps from ``int(steps - steps·strength)`` on (``set_begin_index``), ``scheduler.add_noise`` at the first one,
then SanaPipeline's loop (CFG batch, transformer, ``scheduler.step``) and decode. Latents <= 1e-4, images <= 1/255, on
torch and onnxruntime, square and non-square, with an input image at half the generated size (resized).
"""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
import torch
from PIL import Image

from sana_deploy.errors import SanaDeployError
from sana_deploy.runtime.img2img import ImageInputError, check_strength, prepare_images, start_step
from sana_deploy.runtime.pipeline import SanaDeployPipeline

PROMPT = "a lighthouse on a cliff, oil painting"
SEED = 3
STEPS = 4
STRENGTH = 0.6  # int(4 - 2.4) = 1: three of the four steps run, the first from the noised image
SIZES = [(512, 512), (384, 640)]
LATENT_TOL = 1e-4
IMAGE_TOL = 1 / 255


def _picture(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A smooth seeded picture (gradients + blobs), so resizing it is meaningful."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    chans = [np.sin(6 * xx + rng.rand() * 6) * np.cos(5 * yy + rng.rand() * 6) for _ in range(3)]
    array = ((np.stack(chans, -1) * 0.5 + 0.5) * 255).astype(np.uint8)
    return Image.fromarray(array, "RGB").convert(mode)


def _err(a, b) -> float:  # noqa: ANN001
    return float((torch.as_tensor(np.asarray(a)).float() - torch.as_tensor(np.asarray(b)).float()).abs().max())


@pytest.fixture(scope="module")
def reference(diffusers_pipe):
    """diffusers-components img2img per (height, width, output_type)."""
    from diffusers import SanaPipeline
    from diffusers.utils.torch_utils import randn_tensor

    pipe = diffusers_pipe
    chi = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
    cache: dict = {}

    @torch.no_grad()
    def get(height: int, width: int, output_type: str) -> np.ndarray:
        key = (height, width, output_type)
        if key in cache:
            return cache[key]
        emb, mask, neg, neg_mask = pipe.encode_prompt(
            PROMPT, True, negative_prompt="", device="cpu", complex_human_instruction=chi
        )
        emb, mask = torch.cat([neg, emb]), torch.cat([neg_mask, mask])
        image = pipe.image_processor.preprocess(_picture(height // 2, width // 2), height=height, width=width)
        image_latents = pipe.vae.encode(image).latent * pipe.vae.config.scaling_factor
        sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
        sched.set_timesteps(STEPS)
        t_start = int(max(STEPS - min(STEPS * STRENGTH, STEPS), 0))  # diffusers' get_timesteps
        timesteps = sched.timesteps[t_start:]
        sched.set_begin_index(t_start)
        shape = (1, 32, height // 32, width // 32)
        noise = randn_tensor(shape, generator=torch.Generator().manual_seed(SEED), dtype=torch.float32)
        latents = sched.add_noise(image_latents, noise, timesteps[:1])
        for t in timesteps:
            model_in = torch.cat([latents] * 2)
            v = pipe.transformer(
                model_in, encoder_hidden_states=emb, encoder_attention_mask=mask, timestep=t.expand(2),
                return_dict=False,
            )[0].float()  # fmt: skip
            v_uncond, v_cond = v.chunk(2)
            latents = sched.step(v_uncond + 4.5 * (v_cond - v_uncond), t, latents, return_dict=False)[0]
        if output_type == "latent":
            out = latents
        else:
            decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
            out = pipe.image_processor.postprocess(decoded, output_type="np")
        cache[key] = np.asarray(out)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def pipes(tiny, tiny_export):
    root, _ = tiny_export
    made: dict[str, SanaDeployPipeline] = {}

    def get(backend: str) -> SanaDeployPipeline:
        if backend not in made:
            made[backend] = SanaDeployPipeline.from_components(tiny, backend=backend, export_dir=root)
        return made[backend]

    return get


def _ours(pipe: SanaDeployPipeline, height: int, width: int, output_type: str):  # noqa: ANN202
    return pipe(
        PROMPT, height=height, width=width, num_inference_steps=STEPS, guidance_scale=4.5,
        generator=torch.Generator().manual_seed(SEED), resolution_binning=False, output_type=output_type,
        image=_picture(height // 2, width // 2), strength=STRENGTH,
    )  # fmt: skip


@pytest.mark.parametrize("height, width", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_img2img_matches_diffusers_components(pipes, reference, backend, height, width):
    pipe = pipes(backend)
    ours = _ours(pipe, height, width, "latent")
    assert ours.backends["vae_encoder"].startswith(backend), ours.backends
    assert len(ours.step_seconds) == STEPS - start_step(STEPS, STRENGTH) == 3
    err = _err(ours.images, reference(height, width, "latent"))
    print(f"img2img {backend} {height}x{width}: latents max abs err {err:.2e}")
    assert err <= LATENT_TOL
    ours = _ours(pipe, height, width, "np")
    theirs = reference(height, width, "np")
    assert ours.images.shape == theirs.shape == (1, height, width, 3)
    err = _err(ours.images, theirs)
    print(f"img2img {backend} {height}x{width}: image max abs err {err:.2e}")
    assert err <= IMAGE_TOL


def test_strength_one_starts_from_noise_and_small_strength_keeps_the_image(tiny_pipe):
    """strength 1 runs every step from pure noise (the image has no weight); a small strength stays near the image."""
    picture = _picture(256, 256)
    kw = {"height": 256, "width": 256, "num_inference_steps": 10, "guidance_scale": 1.0, "output_type": "latent"}
    kw["resolution_binning"] = False
    full = tiny_pipe("x", image=picture, strength=1.0, generator=torch.Generator().manual_seed(1), **kw)
    t2i = tiny_pipe("x", generator=torch.Generator().manual_seed(1), **kw)
    assert len(full.step_seconds) == 10
    # dpm flow sigmas start just below 1: the image still has a weight of 1 - sigma_0 ~ 1e-3
    assert _err(full.images, t2i.images) < 5e-2
    light = tiny_pipe("x", image=picture, strength=0.1, generator=torch.Generator().manual_seed(1), **kw)
    assert len(light.step_seconds) == 1
    encoded = tiny_pipe.provider.runner("vae_encoder", 256, 256, 1)(image=prepare_images(picture, 256, 256))
    target = encoded["latent"] * tiny_pipe.preset.vae_scaling_factor
    assert _err(light.images, target) < _err(t2i.images, target)


@pytest.mark.parametrize("strength", [0, -0.1, 1.5, float("nan"), float("inf"), True, "0.5", None])
def test_strength_outside_zero_one_is_refused(tiny_pipe, strength):
    with pytest.raises(SanaDeployError, match=r"strength must be a number in \(0, 1\]"):
        tiny_pipe("x", image=_picture(64, 64), strength=strength, num_inference_steps=1, output_type="latent")
    with pytest.raises(SanaDeployError, match="strength"):
        check_strength(strength)


def test_start_step_is_diffusers_get_timesteps():
    assert [start_step(4, s) for s in (1.0, 0.75, 0.6, 0.5, 0.26, 0.01)] == [0, 1, 1, 2, 2, 3]
    assert start_step(20, 0.6) == 8 and start_step(1, 0.01) == 0  # at least one step always runs


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK", "1"])
def test_any_pil_mode_becomes_rgb_in_minus_one_one(mode, tmp_path):
    path = tmp_path / f"in.{'tiff' if mode in ('CMYK', 'I;16') else 'png'}"
    _picture(37, 53, "RGB").convert(mode).save(path)
    pixels = prepare_images(path, 96, 64)
    assert pixels.shape == (1, 3, 96, 64) and pixels.dtype == torch.float32
    assert -1 <= float(pixels.min()) and float(pixels.max()) <= 1


def test_resize_keeps_aspect_and_center_crops():
    """A wide input is scaled to cover the size and cropped in the middle; the same aspect ratio is resized as
    diffusers' image processor resizes (Lanczos to the exact size)."""
    from diffusers.image_processor import VaeImageProcessor

    same = _picture(160, 96)
    ours = prepare_images(same, 320, 192)
    theirs = VaeImageProcessor(vae_scale_factor=32).preprocess(same, height=320, width=192)
    assert _err(ours, theirs) <= 1e-6
    wide = Image.new("RGB", (300, 100), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 100, 100))  # left third blue: cropped away at a square output
    out = prepare_images(wide, 64, 64)
    assert out.shape == (1, 3, 64, 64) and float(out[0, 2].max()) < 0  # no blue left


def test_arrays_and_tensors(tmp_path):
    gray = np.linspace(0, 1, 45 * 70, dtype=np.float32).reshape(45, 70)
    assert prepare_images(gray, 64, 96).shape == (1, 3, 64, 96)
    rgba = (np.random.RandomState(0).rand(50, 50, 4) * 255).astype(np.uint8)
    assert prepare_images(rgba, 64, 64).shape == (1, 3, 64, 64)
    pt = torch.rand(1, 3, 64, 64)
    assert _err(prepare_images(pt, 64, 64), pt * 2 - 1) == 0
    with pytest.raises(ImageInputError, match=r"\[0, 1\]"):
        prepare_images(torch.full((3, 8, 8), 2.0), 64, 64)
    with pytest.raises(ImageInputError, match="numpy image"):
        prepare_images(np.zeros((2, 3, 4, 5)), 64, 64)


def test_non_image_files_are_clear_errors(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(ImageInputError, match="is not an image PIL can read"):
        prepare_images(text, 64, 64)
    truncated = tmp_path / "cut.png"
    _picture(64, 64).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:80])
    with pytest.raises(ImageInputError, match="is not an image"):
        prepare_images(truncated, 64, 64)
    with pytest.raises(ImageInputError, match="no such file"):
        prepare_images(tmp_path / "missing.png", 64, 64)
    with pytest.raises(ImageInputError, match="must be an image file path"):
        prepare_images(3.5, 64, 64)


def test_odd_sized_image_sets_the_size_and_comes_back_at_it(tiny_pipe):
    """No height/width: the image's own size, binned to a bucket for generation and resized back."""
    out = tiny_pipe(
        "x", image=_picture(333, 517, "RGBA"), strength=0.5, num_inference_steps=2, guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert out.images[0].size == (517, 333)
    assert out.seconds["vae_encoder"] > 0 and out.backends["vae_encoder"] == "torch/fp32"


def test_one_image_per_prompt_or_one_for_all(tiny_pipe):
    kw = {"height": 192, "width": 192, "num_inference_steps": 2, "guidance_scale": 1.0, "output_type": "latent"}
    kw["resolution_binning"] = False
    images = [_picture(192, 192, seed=1), _picture(192, 192, seed=2)]
    both = tiny_pipe(["a", "b"], image=images, num_images_per_prompt=2, **kw, generator=1)
    assert both.images.shape[0] == 4
    with pytest.raises(SanaDeployError, match="3 images for 2 prompts"):
        tiny_pipe(["a", "b"], image=images + images[:1], **kw)


def test_generate_cli_img2img(tmp_path):
    from click.testing import CliRunner

    from sana_deploy.cli import main

    src, out = tmp_path / "in.png", tmp_path / "out.png"
    _picture(200, 328, "L").save(src)
    base = ["generate", "a fox", "-o", str(out), "--backend", "torch", "--steps", "4", "--no-progress"]
    base += ["--engine-dir", str(tmp_path / "none")]
    r = CliRunner().invoke(main, [*base, "--image", str(src), "--strength", "0.6"])
    assert r.exit_code == 0, r.output
    assert "vae_encoder=torch/fp32" in r.output
    with Image.open(out) as im:
        assert im.size == (328, 200) and im.mode == "RGB"  # the image's own size by default


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--strength", "0"], r"strength must be a number in \(0, 1\]"),
        (["--strength", "1.5"], r"strength must be a number in \(0, 1\]"),
        (["--strength", "nan"], r"strength must be a number in \(0, 1\]"),
        (["--image", "{bad}"], "is not an image PIL can read"),
        (["--image", "{missing}"], "no such file"),
    ],
    ids=["zero", "above-one", "nan", "not-an-image", "missing"],
)
def test_generate_cli_img2img_errors_before_the_model_loads(tmp_path, monkeypatch, extra, message):
    from click.testing import CliRunner

    from sana_deploy.cli import main
    from sana_deploy.runtime import generate as gen

    src, bad = tmp_path / "in.png", tmp_path / "bad.png"
    _picture(64, 64).save(src)
    bad.write_bytes(b"GIF89a but not really")
    extra = [e.format(bad=bad, missing=tmp_path / "missing.png") for e in extra]
    image = [] if "--image" in extra else ["--image", str(src)]

    def no_model(req):  # noqa: ANN001, ANN202
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(gen, "build_pipeline", no_model)
    args = ["generate", "x", "-o", str(tmp_path / "o.png"), "--backend", "torch", *image, *extra]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert re.search(message, r.output), r.output
    assert not (tmp_path / "o.png").exists()
    r = CliRunner().invoke(main, ["generate", "x", "-o", str(tmp_path / "o.png"), "--strength", "0.5"])
    assert r.exit_code == 2 and "pass --image too" in r.output


def test_onnxruntime_engines_run_img2img(tiny, tiny_export, tmp_path):
    """The encoder gets an engine per profile like every other stage; a from_engines pipeline runs img2img on it."""
    from sana_deploy.engines import EngineCache, build_engines, load_runner

    root, _ = tiny_export
    entries = build_engines(
        "sana-tiny", "512", backend="onnxruntime", engine_dir=tmp_path, export_root=root, components=("vae_encoder",),
        progress=False,
    )  # fmt: skip
    assert [e.component for e in entries] == ["vae_encoder"]
    entry = EngineCache(tmp_path).find("sana-tiny", "vae_encoder", 384, 640, 1)
    assert entry is not None
    pixels = prepare_images(_picture(384, 640), 384, 640)
    out = load_runner(entry)(image=pixels)["latent"]
    with torch.no_grad():
        ref = tiny.vae.encode(pixels).latent
    assert out.shape == (1, 32, 12, 20) and _err(out, ref) <= 1e-5 * float(ref.abs().max())
    pipe = SanaDeployPipeline.from_engines(
        tmp_path, "sana-tiny", backend="onnxruntime", on_miss="build", build_kwargs={"export_root": str(root)}
    )
    result = pipe(
        "x", image=_picture(384, 640), height=384, width=640, num_inference_steps=2, output_type="latent",
        resolution_binning=False, generator=0,
    )  # fmt: skip
    assert result.backends["vae_encoder"] == "onnxruntime/fp32" and result.images.shape == (1, 32, 12, 20)


# --- Sana-Sprint img2img: diffusers' SanaSprintImg2ImgPipeline is the golden reference ---
SPRINT_SIZE = (256, 320)


@pytest.fixture(scope="module")
def sprint(tiny_export, tmp_path_factory):
    """sana-sprint-tiny, its diffusers folder, and an export folder that shares the base export's DC-AE and text
    encoder graphs (same seeded weights, so ensure_export reuses them; only the Sprint step graphs are exported)."""
    import shutil

    from diffusers import SanaSprintImg2ImgPipeline

    from sana_deploy.models.loaders import save_diffusers_folder
    from sana_deploy.models.random import random_components

    comps = random_components("sana-sprint-tiny")
    folder = save_diffusers_folder(comps, tmp_path_factory.mktemp("sprint") / "sana-sprint-tiny")
    reference = SanaSprintImg2ImgPipeline.from_pretrained(str(folder))
    reference.set_progress_bar_config(disable=True)
    root = tmp_path_factory.mktemp("sprint-export") / "sana-sprint-tiny"
    for component in ("vae", "vae_encoder", "text_encoder"):
        shutil.copytree(tiny_export[0] / "fp32" / component, root / "fp32" / component)
    return comps, reference, root


@pytest.mark.parametrize(
    "steps, strength", [(2, 0.6), (2, 0.4), (4, 0.5)], ids=["2-steps-0.6", "2-steps-0.4", "4-steps-0.5"]
)
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_sprint_img2img_matches_diffusers(sprint, backend, steps, strength):
    comps, reference, root = sprint
    pipe = SanaDeployPipeline.from_components(comps, backend=backend, export_dir=root)
    height, width = SPRINT_SIZE
    picture = _picture(height // 2, width // 2, seed=5)
    extra = {} if steps == 2 else {"intermediate_timesteps": None}  # diffusers' check_inputs wants it off
    kw = {"num_inference_steps": steps, "height": height, "width": width, "guidance_scale": 4.5}
    for output_type, tol in (("latent", LATENT_TOL), ("np", IMAGE_TOL)):
        theirs = reference(
            prompt=PROMPT, image=picture, strength=strength, generator=torch.Generator().manual_seed(SEED),
            use_resolution_binning=False, output_type=output_type, **kw, **extra,
        ).images  # fmt: skip
        ours = pipe(
            PROMPT, image=picture, strength=strength, generator=torch.Generator().manual_seed(SEED),
            resolution_binning=False, output_type=output_type, **kw,
        )  # fmt: skip
        assert ours.backends["vae_encoder"].startswith(backend) and ours.backends["transformer"].startswith(backend)
        assert len(ours.step_seconds) == steps - start_step(steps, strength)
        err = _err(ours.images, theirs)
        print(f"sprint img2img {backend} {steps} steps strength {strength} {output_type}: max abs err {err:.2e}")
        assert np.asarray(ours.images).shape == np.asarray(theirs).shape
        assert err <= tol
