"""PAG (perturbed-attention guidance) in the one loop, against diffusers' ``SanaPAGPipeline.from_pretrained`` (the
saved sana-tiny folder with its own tokenizer), on torch and onnxruntime (the ``transformer_pag`` graph with its
per-block identity input); engines; the bad inputs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from sana_deploy.errors import SanaDeployError
from sana_deploy.runtime.pipeline import SanaDeployPipeline
from sana_deploy.runtime.variants import Guidance, VariantError, parse_pag_layers

PROMPT = "a sailing boat at dawn"
SEED = 5
STEPS = 2
SIZE = (384, 640)
LATENT_TOL = 1e-4
IMAGE_TOL = 1 / 255
# (guidance_scale, pag_scale, pag_adaptive_scale, diffusers' layers, ours)
CASES = {
    "cfg+pag": (4.5, 3.0, 0.0, ["transformer_blocks.1"], "transformer_blocks.1"),
    "pag-only": (1.0, 2.0, 0.0, ["transformer_blocks.1"], [1]),
    "both-blocks-adaptive": (4.5, 3.0, 0.004, ["transformer_blocks.0", "transformer_blocks.1"], "0,1"),
}


def _err(a, b) -> float:  # noqa: ANN001
    return float((torch.as_tensor(np.asarray(a)).float() - torch.as_tensor(np.asarray(b)).float()).abs().max())


@pytest.fixture(scope="module")
def setup(tiny, tiny_export, tmp_path_factory):
    """(diffusers' SanaPAGPipeline from_pretrained per layer choice, an export root with the base graphs)."""
    from diffusers import SanaPAGPipeline

    from sana_deploy.models.loaders import save_diffusers_folder

    work = tmp_path_factory.mktemp("pag")
    folder = save_diffusers_folder(tiny, work / "sana-tiny")
    made: dict[tuple[str, ...], SanaPAGPipeline] = {}

    def reference(layers: list[str]) -> SanaPAGPipeline:
        # a new pipeline per choice: set_pag_applied_layers alone would swap in the generic (softmax) processors
        if tuple(layers) not in made:
            made[tuple(layers)] = SanaPAGPipeline.from_pretrained(str(folder), pag_applied_layers=layers)
            made[tuple(layers)].set_progress_bar_config(disable=True)
        return made[tuple(layers)]

    root = work / "export"
    shutil.copytree(tiny_export[0], root)  # the base graphs; transformer_pag is exported on first use
    return reference, root


@pytest.fixture(scope="module")
def pipes(tiny, setup):
    _, root = setup
    made: dict[str, SanaDeployPipeline] = {}

    def get(backend: str) -> SanaDeployPipeline:
        if backend not in made:
            made[backend] = SanaDeployPipeline.from_components(tiny, backend=backend, export_dir=root)
        return made[backend]

    return get


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_pag_matches_diffusers(setup, pipes, backend, case):
    references, _ = setup
    guidance, pag, adaptive, theirs_layers, our_layers = CASES[case]
    reference = references(theirs_layers)
    height, width = SIZE
    common = {"height": height, "width": width, "num_inference_steps": STEPS, "guidance_scale": guidance}
    pipe = pipes(backend)
    for output_type, tol in (("latent", LATENT_TOL), ("np", IMAGE_TOL)):
        theirs = reference(
            prompt=PROMPT, pag_scale=pag, pag_adaptive_scale=adaptive, generator=torch.Generator().manual_seed(SEED),
            use_resolution_binning=False, output_type=output_type, **common,
        ).images  # fmt: skip
        ours = pipe(
            PROMPT, pag_scale=pag, pag_adaptive_scale=adaptive, pag_applied_layers=our_layers,
            generator=torch.Generator().manual_seed(SEED), resolution_binning=False, output_type=output_type, **common,
        )  # fmt: skip
        assert ours.backends["transformer"].startswith(backend) and ours.denoiser == "split"
        err = _err(ours.images, theirs)
        print(f"pag {case} {backend} {output_type}: max abs err {err:.2e}")
        assert np.asarray(ours.images).shape == np.asarray(theirs).shape
        assert err <= tol


def test_pag_changes_the_result_and_zero_is_off(pipes):
    pipe = pipes("torch")
    kw = {"height": 256, "width": 256, "num_inference_steps": 2, "resolution_binning": False, "output_type": "latent"}
    base = pipe(PROMPT, generator=0, **kw)
    assert _err(pipe(PROMPT, pag_scale=3.0, pag_applied_layers=1, generator=0, **kw).images, base.images) > 1e-2
    assert _err(pipe(PROMPT, pag_scale=0.0, pag_applied_layers=1, generator=0, **kw).images, base.images) == 0


def test_pag_identity_input_selects_the_perturbed_rows_and_blocks():
    guide = Guidance(cfg=True, guidance_scale=4.5, pag_scale=2.0, pag_layers=(1, 3))
    identity = guide.pag_identity(rows=2, num_layers=4, device=torch.device("cpu"))
    assert identity.shape == (6, 4)
    assert identity[:4].sum() == 0 and identity[4:].tolist() == [[0, 1, 0, 1], [0, 1, 0, 1]]
    assert Guidance(cfg=False, guidance_scale=1.0, pag_scale=2.0, pag_layers=(0,)).chunks == 2


def test_pag_layers_parse_like_diffusers_names_and_out_of_range_is_refused():
    assert parse_pag_layers("transformer_blocks.8", 28) == (8,)
    assert parse_pag_layers(["transformer_blocks.14.attn1", "blocks.2", 3], 28) == (2, 3, 14)
    assert parse_pag_layers("8, 14", 28) == (8, 14)
    assert (
        parse_pag_layers(None, 28) == (14,) and parse_pag_layers(None, 20) == (8,) and parse_pag_layers(None, 2) == (0,)
    )
    with pytest.raises(
        VariantError, match=r"PAG layer 28 is out of range: this model has 28 transformer blocks \(0-27\)"
    ):
        parse_pag_layers(28, 28)
    with pytest.raises(VariantError, match="PAG layer -1 is out of range"):
        parse_pag_layers(-1, 28)
    with pytest.raises(VariantError, match="is not a block"):
        parse_pag_layers("attn2", 28)
    with pytest.raises(VariantError, match="block indices"):
        parse_pag_layers([], 28)


def test_pag_options_are_checked(tiny_pipe):
    with pytest.raises(VariantError, match="PAG layer 2 is out of range"):
        tiny_pipe("x", pag_scale=2.0, pag_applied_layers=2, num_inference_steps=1)
    with pytest.raises(SanaDeployError, match="pag_scale .* must be a finite number >= 0"):
        tiny_pipe("x", pag_scale=-1.0, num_inference_steps=1)
    with pytest.raises(SanaDeployError, match="pag_adaptive_scale"):
        tiny_pipe("x", pag_scale=1.0, pag_adaptive_scale=float("nan"), num_inference_steps=1)


def test_generate_cli_pag(tmp_path):
    from click.testing import CliRunner

    from sana_deploy.cli import main
    from sana_deploy.runtime import generate as gen

    out = tmp_path / "out.png"
    base = ["generate", "a fox", "-o", str(out), "--backend", "torch", "--steps", "2", "--no-progress"]
    base += ["--engine-dir", str(tmp_path / "none"), "--height", "128", "--width", "128", "--no-resolution-binning"]
    r = CliRunner().invoke(main, [*base, "--pag-scale", "3", "--pag-layers", "1"])
    assert r.exit_code == 0 and out.exists(), r.output
    out.unlink()
    original = gen.build_pipeline
    gen.build_pipeline = lambda req: (_ for _ in ()).throw(AssertionError("the model loaded first"))  # noqa: ARG005
    try:
        r = CliRunner().invoke(main, [*base, "--pag-scale", "3", "--pag-layers", "5"])
    finally:
        gen.build_pipeline = original
    assert r.exit_code == 2 and "PAG layer 5 is out of range" in r.output and not out.exists()


def test_onnxruntime_engine_for_pag(tiny, setup, tmp_path):
    """transformer_pag gets engines like any step graph; CFG + PAG runs three rows per image, so the miss builds a
    profile whose batch covers them."""
    _, root = setup
    pipe = SanaDeployPipeline.from_engines(
        tmp_path, "sana-tiny", backend="onnxruntime", on_miss="build", build_kwargs={"export_root": str(root)}
    )
    kw = {"height": 384, "width": 640, "num_inference_steps": 2, "resolution_binning": False, "output_type": "latent"}
    ours = pipe(PROMPT, pag_scale=3.0, pag_applied_layers=1, generator=torch.Generator().manual_seed(SEED), **kw)
    assert ours.backends["transformer"].startswith("onnxruntime")
    components = {e["component"] for e in pipe.provider.events if e["engine"] != "fallback"}
    assert "transformer_pag" in components
    torch_pipe = SanaDeployPipeline.from_components(tiny, backend="torch")
    ref = torch_pipe(PROMPT, pag_scale=3.0, pag_applied_layers=1, generator=torch.Generator().manual_seed(SEED), **kw)
    assert _err(ours.images, ref.images) <= LATENT_TOL
