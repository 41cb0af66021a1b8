"""Runtime fixtures: a torch pipeline over the session's sana-tiny, and diffusers' SanaPipeline on the same weights."""

from __future__ import annotations

import pytest


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
