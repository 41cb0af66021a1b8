"""serve's defaults come from the model, whether it is named by preset or given as a diffusers folder."""

from __future__ import annotations

from sana_deploy.models.loaders import save_diffusers_folder
from sana_deploy.models.random import random_components
from sana_deploy.serve.settings import default_settings


def test_a_sprint_folder_serves_two_steps_like_its_preset(tmp_path):
    folder = save_diffusers_folder(random_components("sana-sprint-tiny"), tmp_path / "my-sprint")
    by_folder, by_name = default_settings(str(folder)), default_settings("sana-sprint-tiny")
    assert by_folder.sprint and by_folder.num_inference_steps == 2
    assert (by_folder.sprint, by_folder.num_inference_steps, by_folder.num_layers) == (
        by_name.sprint, by_name.num_inference_steps, by_name.num_layers,
    )  # fmt: skip
    assert default_settings(str(folder), num_inference_steps=4).num_inference_steps == 4
    base = save_diffusers_folder(random_components("sana-tiny"), tmp_path / "my-base")
    assert not default_settings(str(base)).sprint and default_settings(str(base)).num_inference_steps == 20
    assert default_settings(str(tmp_path / "not-a-model")).num_inference_steps == 20  # the loader reports it later
