"""Runtime fixtures: a torch pipeline over the session's sana-tiny, and diffusers' SanaPipeline on the same weights."""

from __future__ import annotations

import pytest
import torch

from sana_deploy.runners import Runner


class RecordingEncoder(Runner):
    """Wraps a text-encoder runner and records the ``(batch, sequence length)`` of every call."""

    backend = "recording"

    def __init__(self, inner: Runner) -> None:
        super().__init__(inner.component, inner.input_names, inner.output_names, inner.precision)
        self.inner, self.shapes = inner, []

    @property
    def batches(self) -> list[int]:
        return [b for b, _ in self.shapes]

    @property
    def lengths(self) -> list[int]:
        return [n for _, n in self.shapes]

    def infer(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.shapes.append(tuple(inputs["input_ids"].shape))
        return self.inner.infer(inputs)


@pytest.fixture(scope="session")
def recording_encoder() -> type[RecordingEncoder]:
    """The :class:`RecordingEncoder` class (tests wrap their own runners in it)."""
    return RecordingEncoder


@pytest.fixture(scope="session")
def tiny_pipe(tiny):
    from sana_deploy.runtime.pipeline import SanaDeployPipeline

    return SanaDeployPipeline.from_components(tiny, backend="torch")


@pytest.fixture(scope="session")
def diffusers_pipe(tiny, tmp_path_factory):
    from diffusers import SanaPipeline

    from sana_deploy.models.loaders import save_diffusers_folder

    folder = save_diffusers_folder(tiny, tmp_path_factory.mktemp("diffusers") / "sana-tiny")
    pipe = SanaPipeline.from_pretrained(str(folder))  # every module and the tokenizer are diffusers' own reload
    pipe.set_progress_bar_config(disable=True)
    return pipe
