"""Shared fixtures: sana-tiny components built once per session (seeded, no downloads)."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def tiny():
    from sana_deploy.models.random import random_components

    return random_components("sana-tiny")


@pytest.fixture(scope="session")
def tiny_export(tiny, tmp_path_factory):
    """sana-tiny exported once (all components, the transformer split too, fp32) for the tests that read ONNX."""
    from sana_deploy.contract import BASE_GRAPHS
    from sana_deploy.export import export_model

    out = tmp_path_factory.mktemp("export") / "sana-tiny"
    results = export_model(tiny, BASE_GRAPHS, "fp32", out)
    return out, {r.component: r for r in results}
