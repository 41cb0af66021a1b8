"""ControlNet in the one loop: a seeded random-weight Sana ControlNet (saved in diffusers' layout) against diffusers'
``SanaControlNetPipeline.from_pretrained`` (the saved sana-tiny folder with its own tokenizer, and
``SanaControlNetModel.from_pretrained`` of the saved ControlNet), on torch and onnxruntime; engines per profile; the
bad inputs.

The ControlNet has two blocks and sana-tiny two: diffusers adds sample k after block k + 1, so only the first
residual reaches the transformer (the second is dropped, as diffusers drops it) -- the graph takes exactly that one.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sana_deploy.errors import CheckpointError, SanaDeployError
from sana_deploy.models.controlnet import load_controlnet, random_controlnet, save_controlnet
from sana_deploy.runtime.pipeline import SanaDeployPipeline
from sana_deploy.runtime.variants import VariantError

PROMPT = "a house by a lake, ink drawing"
SEED = 11
STEPS = 2
SCALE = 0.8
SIZES = [(512, 512), (384, 640)]
LATENT_TOL = 1e-4
IMAGE_TOL = 1 / 255


def _edges(height: int, width: int) -> Image.Image:
    """A seeded line drawing (white strokes on black), the kind of image a ControlNet is conditioned on."""
    rng = np.random.RandomState(height + width)
    array = np.zeros((height, width), np.uint8)
    for _ in range(12):
        r, c = rng.randint(0, height), rng.randint(0, width)
        array[r, :] = 255 if rng.rand() < 0.5 else array[r, :]
        array[:, c] = 255 if rng.rand() < 0.5 else array[:, c]
    return Image.fromarray(array, "L")


def _err(a, b) -> float:  # noqa: ANN001
    return float((torch.as_tensor(np.asarray(a)).float() - torch.as_tensor(np.asarray(b)).float()).abs().max())


@pytest.fixture(scope="module")
def setup(tiny, tiny_export, tmp_path_factory):
    """(components with the ControlNet, its folder, diffusers' pipeline, an export root with the base graphs)."""
    from diffusers import SanaControlNetModel, SanaControlNetPipeline

    from sana_deploy.models.loaders import save_diffusers_folder

    work = tmp_path_factory.mktemp("controlnet")
    cn_folder = save_controlnet(random_controlnet(tiny.preset, num_layers=2, seed=4), work / "sana-tiny-controlnet")
    comps = dataclasses.replace(tiny, _hashes={}, controlnet=load_controlnet(cn_folder, tiny.preset))
    folder = save_diffusers_folder(tiny, work / "sana-tiny")
    reference = SanaControlNetPipeline.from_pretrained(
        str(folder), controlnet=SanaControlNetModel.from_pretrained(str(cn_folder))
    )
    reference.set_progress_bar_config(disable=True)
    root = work / "export"
    shutil.copytree(tiny_export[0], root)  # the base graphs; the ControlNet's two are exported on top
    return comps, cn_folder, reference, root


@pytest.fixture(scope="module")
def reference(setup):
    _, _, pipe, _ = setup
    cache: dict = {}

    def get(height: int, width: int, output_type: str) -> np.ndarray:
        key = (height, width, output_type)
        if key not in cache:
            out = pipe(
                prompt=PROMPT,
                control_image=_edges(height, width).convert("RGB"),
                controlnet_conditioning_scale=SCALE,
                height=height,
                width=width,
                num_inference_steps=STEPS,
                guidance_scale=4.5,
                generator=torch.Generator().manual_seed(SEED),
                use_resolution_binning=False,
                output_type=output_type,
            ).images  # fmt: skip  (diffusers reads grayscale as one channel: it gets the RGB copy, ours the L image)
            cache[key] = np.asarray(out)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def pipes(setup):
    comps, _, _, root = setup
    made: dict[str, SanaDeployPipeline] = {}

    def get(backend: str) -> SanaDeployPipeline:
        if backend not in made:
            made[backend] = SanaDeployPipeline.from_components(comps, backend=backend, export_dir=root)
        return made[backend]

    return get


def _ours(pipe: SanaDeployPipeline, height: int, width: int, output_type: str):  # noqa: ANN202
    return pipe(
        PROMPT, control_image=_edges(height, width), controlnet_conditioning_scale=SCALE, height=height, width=width,
        num_inference_steps=STEPS, guidance_scale=4.5, generator=torch.Generator().manual_seed(SEED),
        resolution_binning=False, output_type=output_type,
    )  # fmt: skip


@pytest.mark.parametrize("height, width", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_controlnet_matches_diffusers(pipes, reference, backend, height, width):
    pipe = pipes(backend)
    ours = _ours(pipe, height, width, "latent")
    assert ours.denoiser == "split+controlnet"
    assert "ControlNet" in ours.backends["transformer"] and ours.backends["vae_encoder"].startswith(backend)
    assert all(b.startswith(backend) for b in ours.backends.values()), ours.backends
    err = _err(ours.images, reference(height, width, "latent"))
    print(f"controlnet {backend} {height}x{width}: latents max abs err {err:.2e}")
    assert err <= LATENT_TOL
    ours = _ours(pipe, height, width, "np")
    theirs = reference(height, width, "np")
    assert ours.images.shape == theirs.shape == (1, height, width, 3)
    err = _err(ours.images, theirs)
    print(f"controlnet {backend} {height}x{width}: image max abs err {err:.2e}")
    assert err <= IMAGE_TOL


def test_the_control_image_steers_and_the_scale_counts(pipes):
    """Without the control image the same pipeline is the base model; scale 0 is the base model too."""
    pipe = pipes("torch")
    kw = {"height": 256, "width": 256, "num_inference_steps": 2, "resolution_binning": False, "output_type": "latent"}
    base = pipe(PROMPT, generator=0, **kw)
    assert base.denoiser == "split"
    steered = pipe(PROMPT, control_image=_edges(256, 256), generator=0, **kw)
    off = pipe(PROMPT, control_image=_edges(256, 256), controlnet_conditioning_scale=0.0, generator=0, **kw)
    assert _err(steered.images, base.images) > 1e-2
    assert _err(off.images, base.images) <= 1e-5


def test_control_image_without_a_controlnet_is_refused(tiny_pipe):
    with pytest.raises(VariantError, match="no ControlNet: load one with --controlnet"):
        tiny_pipe("x", control_image=_edges(64, 64), num_inference_steps=1, output_type="latent")


def test_controlnet_for_another_model_size_is_refused(tiny, tmp_path):
    from sana_deploy.models.config import get_preset

    wider = get_preset("sana-tiny").replace(
        transformer=dataclasses.replace(get_preset("sana-tiny").transformer, hidden_size=96)
    )
    folder = save_controlnet(random_controlnet(wider, num_layers=1), tmp_path / "wide")
    with pytest.raises(CheckpointError, match="is for another model size: hidden size 96.*has 64"):
        load_controlnet(folder, tiny.preset)
    with pytest.raises(CheckpointError, match="not a diffusers Sana ControlNet folder"):
        load_controlnet(tmp_path, tiny.preset)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"_class_name": "SanaTransformer2DModel"}')
    with pytest.raises(CheckpointError, match="not a SanaControlNetModel"):
        load_controlnet(tmp_path / "bad", tiny.preset)


def test_controlnet_options_are_checked(pipes):
    pipe = pipes("torch")
    with pytest.raises(SanaDeployError, match="controlnet_conditioning_scale"):
        pipe("x", control_image=_edges(64, 64), controlnet_conditioning_scale=float("nan"), num_inference_steps=1)
    with pytest.raises(SanaDeployError, match="ControlNet and PAG together"):
        pipe("x", control_image=_edges(64, 64), pag_scale=2.0, num_inference_steps=1)
    with pytest.raises(SanaDeployError, match="control image"):
        pipe("x", control_image=__file__, num_inference_steps=1)


def test_generate_cli_controlnet(setup, tmp_path):
    from click.testing import CliRunner

    from sana_deploy.cli import main

    _, cn_folder, _, _ = setup
    edges, out = tmp_path / "edges.png", tmp_path / "out.png"
    _edges(192, 256).save(edges)
    base = ["generate", "a fox", "-o", str(out), "--backend", "torch", "--steps", "2", "--no-progress"]
    base += ["--engine-dir", str(tmp_path / "none"), "--no-resolution-binning", "--height", "192", "--width", "256"]
    r = CliRunner().invoke(main, [*base, "--controlnet", str(cn_folder), "--control-image", str(edges)])
    assert r.exit_code == 0, r.output
    assert "ControlNet torch/fp32" in r.output
    with Image.open(out) as im:
        assert im.size == (256, 192)
    out.unlink()
    r = CliRunner().invoke(main, [*base, "--control-image", str(edges)])
    assert r.exit_code == 2 and "no ControlNet: load one with --controlnet" in r.output and not out.exists()
    r = CliRunner().invoke(main, [*base, "--controlnet", str(tmp_path), "--control-image", str(edges)])
    assert r.exit_code == 2 and "not a diffusers Sana ControlNet folder" in r.output


def test_onnxruntime_engines_for_the_controlnet(setup, tmp_path):
    """build --controlnet: the ControlNet's graph (cached under the ControlNet's folder name), the step graph that
    takes its residuals and the encoder get engines per profile; a from_engines pipeline runs on them alone."""
    from sana_deploy.engines import EngineCache, build_engines

    comps, cn_folder, _, root = setup
    entries = build_engines(
        "sana-tiny", "512", backend="onnxruntime", engine_dir=tmp_path, export_root=root, controlnet=cn_folder,
        progress=False,
    )  # fmt: skip
    built = {(e.meta["model"], e.component) for e in entries}
    assert ("sana-tiny-controlnet", "controlnet") in built and ("sana-tiny", "transformer_control") in built
    assert ("sana-tiny", "vae_encoder") in built
    cache = EngineCache(tmp_path)
    assert cache.find("sana-tiny-controlnet", "controlnet", 384, 640, 2) is not None
    pipe = SanaDeployPipeline.from_engines(
        tmp_path, "sana-tiny", backend="onnxruntime", on_miss="error", controlnet=cn_folder,
        build_kwargs={"export_root": str(root)},
    )  # fmt: skip
    ours = _ours(pipe, 384, 640, "latent")
    assert "ControlNet onnxruntime" in ours.backends["transformer"]
    torch_pipe = SanaDeployPipeline.from_components(comps, backend="torch")
    assert _err(ours.images, _ours(torch_pipe, 384, 640, "latent").images) <= LATENT_TOL
