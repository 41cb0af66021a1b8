"""The Sana-Sprint transformer graphs: the guidance input with a dynamic batch, the caption K/V split as for the base
model, and ONNX Runtime equal to PyTorch at square and non-square sizes and batches no dummy input had."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from sana_deploy.export import SPECS, export_model
from sana_deploy.export.parity import cpu_session, relative_error

GRAPHS = ("transformer", "transformer_text", "transformer_cached")
# (batch, latent_h, latent_w, text_len): square and non-square, batch 1 and 3; the dummy was 2 x 20x28 x 40
SIZES = [(1, 32, 32, 300), (3, 24, 40, 77), (1, 40, 24, 120)]


@pytest.fixture(scope="module")
def sprint():
    from sana_deploy.models.random import random_components

    return random_components("sana-sprint-tiny")


@pytest.fixture(scope="module")
def exported(sprint, tmp_path_factory):
    root = tmp_path_factory.mktemp("sprint-export")
    results = export_model(sprint, GRAPHS, "fp32", root, parity="quick")
    return {r.component: r for r in results}


def _dim_names(model: onnx.ModelProto) -> dict[str, list[str | int]]:
    out = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        out[value.name] = [d.dim_param or d.dim_value for d in dims]
    return out


@pytest.mark.parametrize("component", ["transformer", "transformer_cached"])
def test_step_graphs_take_guidance_with_a_dynamic_batch(exported, sprint, component):
    model = onnx.load(str(exported[component].path), load_external_data=False)
    dims = _dim_names(model)
    assert list(dims)[-1] == "guidance" and len(dims["guidance"]) == 1
    assert dims["guidance"][0] == dims["latent"][0] == dims["timestep"][0]
    assert isinstance(dims["guidance"][0], str)  # a named, dynamic axis
    assert [t.name for t in SPECS[component](sprint).inputs][-1] == "guidance"


def test_text_graph_has_no_guidance(exported):
    model = onnx.load(str(exported["transformer_text"].path), load_external_data=False)
    assert list(_dim_names(model)) == ["encoder_hidden_states"]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_onnxruntime_matches_pytorch(exported, sprint, size):
    batch, h, w, text_len = size
    sizes = {"batch": batch, "latent_h": h, "latent_w": w, "text_len": text_len}
    g = torch.Generator().manual_seed(sum(size))
    inputs = SPECS["transformer"](sprint).dummy_inputs(sprint, sizes, seed=sum(size))
    inputs["timestep"] = torch.rand(batch, generator=g)  # Sprint's TrigFlow time t in [0, 1]
    inputs["guidance"] = torch.tensor([0.45, 0.3, 0.5][:batch])
    model = sprint.transformer
    with torch.no_grad():
        expected = model(*inputs.values()).numpy()
        text_kv = model.text_kv(inputs["encoder_hidden_states"]).numpy()
    runs = {
        "transformer": {k: v.numpy() for k, v in inputs.items()},
        "transformer_cached": {
            "latent": inputs["latent"].numpy(), "timestep": inputs["timestep"].numpy(), "text_kv": text_kv,
            "encoder_attention_mask": inputs["encoder_attention_mask"].numpy(), "guidance": inputs["guidance"].numpy(),
        },
    }  # fmt: skip
    for component, feed in runs.items():
        actual = cpu_session(exported[component].path).run(None, feed)[0]
        max_abs, rel = relative_error(actual, expected)
        print(f"{component} {size}: max abs {max_abs:.2e}, rel {rel:.2e}")
        assert actual.shape == expected.shape and rel <= 1e-5, (component, size, max_abs, rel)
    kv = cpu_session(exported["transformer_text"].path).run(None, {"encoder_hidden_states": runs["transformer"][
        "encoder_hidden_states"]})[0]  # fmt: skip
    assert relative_error(kv, text_kv)[1] <= 1e-5
    # the guidance input is live: another guidance changes the prediction
    other = dict(runs["transformer"], guidance=np.full((batch,), 0.1, dtype=np.float32))
    assert np.abs(cpu_session(exported["transformer"].path).run(None, other)[0] - expected).max() > 1e-4
