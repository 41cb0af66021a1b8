"""The DC-AE encoder graph, the ControlNet graphs and PAG's step graph match PyTorch in ONNX Runtime at sizes no
dummy or parity input had, square and non-square; the encoder's derived image axes resolve in engine profiles."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch

from sana_deploy.engines.profiles import Profile
from sana_deploy.export.specs import SPECS

# latent sizes unlike the export dummy (10x14) and every parity size (8x8, 6x8, 8x6, 12x16)
UNSEEN = [(1, 7, 7), (1, 7, 11), (3, 13, 9)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def encoder_session(tiny_export):
    _root, results = tiny_export
    result = results["vae_encoder"]
    assert result.manifest["parity_status"] == "passed"
    return ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]), result


@pytest.mark.parametrize("batch, h, w", UNSEEN, ids=lambda v: str(v))
def test_vae_encoder_matches_pytorch_at_unseen_sizes(tiny, encoder_session, batch, h, w):
    session, _ = encoder_session
    image = torch.rand(batch, 3, 32 * h, 32 * w, generator=torch.Generator().manual_seed(h * w)) * 2 - 1
    (out,) = session.run(None, {"image": image.numpy()})
    with torch.no_grad():
        ref = tiny.vae.encode(image).latent
    assert out.shape == (batch, 32, h, w)
    assert _rel(torch.from_numpy(out), ref) <= 1e-5


def test_vae_encoder_manifest_has_derived_image_axes(encoder_session):
    _, result = encoder_session
    (image,) = result.manifest["inputs"]
    assert image["shape"] == ["batch", 3, "32*latent_h", "32*latent_w"]
    assert result.manifest["outputs"][0]["shape"] == ["batch", 32, "latent_h", "latent_w"]
    sizes = [(p["sizes"]["latent_h"], p["sizes"]["latent_w"]) for p in result.manifest["parity"]]
    assert (6, 8) in sizes and (8, 6) in sizes  # non-square both ways


def test_profile_resolves_derived_axes(tiny):
    spec = SPECS["vae_encoder"](tiny)
    inputs = [t.to_json() for t in spec.inputs]
    shapes = Profile.from_base(1024, max_batch=2).input_shapes(inputs)
    lo, opt, hi = shapes["image"].min, shapes["image"].opt, shapes["image"].max
    assert opt == (4, 3, 1024, 1024)
    assert lo[2] == 32 * Profile.from_base(1024).axes["latent_h"].min and hi[3] % 32 == 0
    static = Profile.exact(512, 768, 2).input_shapes(inputs)["image"]
    assert static.min == (1, 3, 512, 768) and static.max == (2, 3, 512, 768)


@pytest.fixture(scope="module")
def controlnet_exports(tiny, tmp_path_factory):
    """The ControlNet graph, the step graph that takes its residuals and PAG's step graph, exported (parity-checked)
    for a 2-block random ControlNet on sana-tiny."""
    import dataclasses

    from sana_deploy.export import export_component
    from sana_deploy.models.controlnet import random_controlnet

    comps = dataclasses.replace(tiny, _hashes={}, controlnet=random_controlnet(tiny.preset, num_layers=2, seed=9))
    out = tmp_path_factory.mktemp("cn-export")
    names = ("controlnet", "transformer_control", "transformer_pag")
    results = {c: export_component(comps, c, "fp32", out) for c in names}
    for r in results.values():
        assert r.manifest["parity_status"] == "passed"
    return comps, results


def _feeds(comps, component: str, batch: int, h: int, w: int) -> dict[str, torch.Tensor]:  # noqa: ANN001
    sizes = {"batch": batch, "latent_h": h, "latent_w": w, "text_len": 33}
    feeds = SPECS[component](comps).dummy_inputs(comps, sizes, seed=h * 31 + w)
    if "pag_identity" in feeds:  # PAG's 0/1 per row and block: the last row perturbed in block 1
        feeds["pag_identity"] = torch.zeros_like(feeds["pag_identity"])
        feeds["pag_identity"][-1, 1] = 1.0
    return feeds


@pytest.mark.parametrize("batch, h, w", UNSEEN, ids=lambda v: str(v))
@pytest.mark.parametrize("component", ["controlnet", "transformer_control", "transformer_pag"])
def test_variant_graphs_match_pytorch_at_unseen_sizes(controlnet_exports, component, batch, h, w):
    comps, results = controlnet_exports
    session = ort.InferenceSession(str(results[component].path), providers=["CPUExecutionProvider"])
    feeds = _feeds(comps, component, batch, h, w)
    (out,) = session.run(None, {k: v.numpy() for k, v in feeds.items()})
    with torch.no_grad():
        ref = SPECS[component](comps).wrap(comps)(*feeds.values())
    assert out.shape == tuple(ref.shape)
    assert _rel(torch.from_numpy(out), ref) <= 1e-5


def test_controlnet_graph_io(controlnet_exports):
    _, results = controlnet_exports
    cn, step = results["controlnet"].manifest, results["transformer_control"].manifest
    assert cn["outputs"][0]["shape"] == [2, "batch", "latent_h", "latent_w", 64]
    # sana-tiny has 2 blocks: only one residual can be added (after block 1), so the step graph takes one
    assert step["inputs"][-1] == {"name": "controlnet_residuals", "shape": [1, "batch", "latent_h", "latent_w", 64],
                                  "dtype": "float32"}  # fmt: skip
    assert "controlnet_cond" in [i["name"] for i in cn["inputs"]]
