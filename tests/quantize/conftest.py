"""Quantization fixtures: calibration recorded once from the pipeline, int8 (nncf) and fp8 recipes written once
into the session's export folder, and held-out transformer inputs (another prompt and seed) to judge them on."""

from __future__ import annotations

import pytest

CALIB_PROMPTS = ["a red fox in the snow", "a city street at night"]
CALIB = dict(steps=4, size=256, components="transformer-text,transformer-cached")  # the caption graph too


@pytest.fixture(scope="session")
def held_out(tiny):
    """Every transformer input of a request the calibration never saw (prompt, seed), at each solver step."""
    from sana_deploy.quantize.calibrate import record_calibration

    return record_calibration(tiny, ["a bowl of fruit on a wooden table"], steps=6, size=256, seed=123)


@pytest.fixture(scope="session")
def int8_recipe(tiny, export_root):
    from sana_deploy.quantize import quantize_model

    return quantize_model(
        "sana-tiny", "int8", "nncf", CALIB_PROMPTS, export_root=export_root, loaded=tiny, say=print, **CALIB
    )


@pytest.fixture(scope="session")
def fp8_recipe(tiny, export_root):
    from sana_deploy.quantize import quantize_model

    return quantize_model("sana-tiny", "fp8", None, CALIB_PROMPTS, export_root=export_root, loaded=tiny, say=print,
                          **CALIB)  # fmt: skip


@pytest.fixture(scope="session")
def export_root(tiny_export):
    out, _ = tiny_export
    return out
