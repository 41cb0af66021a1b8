"""A stage that returns NaN or inf is an error naming the stage, its backend and the size; never an image."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from sana_deploy.cli import main
from sana_deploy.errors import NonFiniteError, SanaDeployError
from sana_deploy.runners.torch_module import TorchRunner
from sana_deploy.runtime.pipeline import SanaDeployPipeline


class _Poisoned:
    """A runner whose outputs carry one ``value`` (NaN or inf); everything else is the real runner's."""

    def __init__(self, inner, value: float) -> None:
        self.inner, self.value = inner, value

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {k: v.contiguous().clone() for k, v in self.inner(**inputs).items()}
        for v in out.values():
            v.view(-1)[v.numel() // 2] = self.value
        return out


@pytest.fixture
def pipe(tiny):
    return SanaDeployPipeline.from_components(tiny, backend="torch")


def _poison(monkeypatch, pipe, component: str, value: float = float("nan")) -> None:
    real = pipe.provider.runner

    def runner(name, height, width, batch):
        r = real(name, height, width, batch)
        return _Poisoned(r, value) if name == component else r

    monkeypatch.setattr(pipe.provider, "runner", runner)


def _run(pipe, **kw):
    args = dict(height=192, width=256, num_inference_steps=2, guidance_scale=4.5, resolution_binning=False)
    return pipe("a fox", generator=torch.Generator().manual_seed(0), **{**args, **kw})


@pytest.mark.parametrize(
    ("component", "value", "stage", "words"),
    [
        ("vae", float("nan"), "vae", "The vae (torch/fp32) returned NaN at 256x192;"),
        ("transformer_cached", float("nan"), "transformer", "returned NaN at 256x192 at step 1 of 2"),
        ("transformer_cached", float("inf"), "transformer", "returned inf at 256x192 at step 1 of 2"),
        ("transformer_text", float("-inf"), "transformer", "returned inf at 256x192 in the caption K/V"),
        ("text_encoder", float("nan"), "text_encoder", "The text_encoder (torch/fp32) returned NaN at 256x192"),
    ],
)
def test_a_non_finite_stage_is_an_error_naming_it(monkeypatch, pipe, component, value, stage, words):
    _poison(monkeypatch, pipe, component, value)
    with pytest.raises(NonFiniteError) as info:
        _run(pipe, output_type="np")
    assert info.value.stage == stage
    assert words in str(info.value) and "no image was made" in str(info.value)
    assert "--backend torch" in str(info.value)  # and what to do about it


def test_latent_output_is_checked_too(monkeypatch, pipe):
    _poison(monkeypatch, pipe, "transformer_cached")
    with pytest.raises(NonFiniteError, match="transformer"):
        _run(pipe, output_type="latent")


def test_finite_stages_still_make_images(pipe):
    out = _run(pipe, output_type="np")
    assert out.images.shape == (1, 192, 256, 3)


def test_non_finite_latents_from_the_caller_are_refused(pipe):
    latents = torch.zeros(1, 32, 6, 8)
    latents[0, 0, 0, 0] = float("nan")
    with pytest.raises(SanaDeployError, match="latents contain NaN or inf"):
        _run(pipe, latents=latents)


def test_generate_writes_no_image_when_the_vae_returns_nan(tmp_path, monkeypatch):
    infer = TorchRunner.infer

    def nan_vae(self, inputs):
        out = infer(self, inputs)
        return {k: torch.full_like(v, float("nan")) for k, v in out.items()} if self.component == "vae" else out

    monkeypatch.setattr(TorchRunner, "infer", nan_vae)
    out = tmp_path / "x.png"
    args = ["generate", "a fox", "-o", str(out), "--backend", "torch", "--steps", "1", "--no-progress"]
    r = CliRunner().invoke(main, [*args, "--height", "192", "--width", "256", "--no-resolution-binning"])
    assert r.exit_code == 2, r.output
    assert "The vae (torch/fp32) returned NaN at 256x192" in r.output
    assert "Traceback" not in r.output and not out.exists()
