"""ONNX export of sana-tiny: dynamic shapes, sana local functions, parity, manifests, atomic writes."""

import json
import os

import numpy as np
import onnx
import pytest
import torch

from sana_deploy.errors import ExportError, SanaDeployError
from sana_deploy.export import SPECS, export_component
from sana_deploy.export.onnx_functions import DOMAIN, sana_nodes
from sana_deploy.export.parity import cpu_session
from sana_deploy.models.random import random_components


def test_all_components_match_pytorch(tiny_export):
    _, results = tiny_export
    graphs = {"transformer", "vae", "vae_encoder", "text_encoder", "transformer_text", "transformer_cached"}
    assert set(results) == graphs
    for comp, r in results.items():
        assert len(r.parity) >= 3, comp
        for p in r.parity:
            assert not p.skipped and p.finite and p.rel <= 1e-5, (comp, str(p))
        # parity ran at shapes that differ from the dummy the graph was traced with
        spec = SPECS[comp](random_components("sana-tiny", ()))
        assert all(p.sizes != spec.export_sizes for p in r.parity)


def test_dynamic_axes_are_named(tiny_export):
    out, _ = tiny_export
    model = onnx.load(str(out / "fp32" / "transformer" / "model.onnx"), load_external_data=False)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["latent"] == ["batch", 32, "latent_h", "latent_w"]
    assert dims["encoder_hidden_states"] == ["batch", "text_len", 64]
    assert dims["encoder_attention_mask"] == ["batch", "text_len"]


def test_graph_has_sana_local_functions_with_plugin_attributes(tiny_export):
    out, _ = tiny_export
    model = onnx.load(str(out / "fp32" / "transformer" / "model.onnx"))
    assert {(f.domain, f.name) for f in model.functions} == {(DOMAIN, "LinearAttention"), (DOMAIN, "MixFFN")}
    nodes = sana_nodes(model)
    depth = 2
    assert sorted(n.op_type for n in nodes) == ["LinearAttention"] * depth + ["MixFFN"] * depth
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["plugin_namespace"] == b"sana" and attrs["plugin_version"] == b"1"
    la = next(f for f in model.functions if f.name == "LinearAttention")
    ops = [n.op_type for n in la.node]
    assert ops.count("Cast") == 3 and "Clip" in ops  # fp32 island and the fp16-range clamp live in the body


def test_manifest(tiny_export, tiny):
    out, results = tiny_export
    m = json.loads((out / "fp32" / "transformer" / "manifest.json").read_text())
    assert m["component"] == "transformer" and m["precision"] == "fp32" and m["opset"] == 18
    assert m["weights_sha256"] == tiny.content_hash("transformer")
    assert m["sana_functions"] == ["LinearAttention", "MixFFN"]
    assert m["inputs"][0]["shape"] == ["batch", 32, "latent_h", "latent_w"]
    assert "torch" in m["versions"] and "onnxruntime" in m["versions"]
    assert len(m["onnx_sha256"]) == 64 and all(r.ok for r in results["transformer"].parity)
    assert not [p for p in out.rglob(".tmp-*")]  # nothing half-written left behind


def test_pe_preset_matches_at_two_resolutions(tmp_path):
    c = random_components("sana-tiny-pe", ("transformer",))
    r = export_component(c, "transformer", "fp32", tmp_path)
    sizes = {(p.sizes["latent_h"], p.sizes["latent_w"]) for p in r.parity}
    assert {(32, 32), (48, 64)} <= sizes
    assert all(p.rel <= 1e-5 for p in r.parity)


def test_fp16_export_is_finite(tmp_path):
    c = random_components("sana-tiny", ("transformer",))
    r = export_component(c, "transformer", "fp16", tmp_path)
    assert all(p.finite and p.ok for p in r.parity)
    assert c.transformer.dtype == torch.float32  # the caller's modules are not cast in place
    model = onnx.load(str(r.path))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    # a large latent with large activations: no inf/NaN thanks to fp32 attention and the clamp
    spec = SPECS["transformer"](c)
    inputs = spec.dummy_inputs(c, {"batch": 1, "latent_h": 64, "latent_w": 64, "text_len": 300})
    inputs["latent"] = inputs["latent"] * 50
    out = cpu_session(r.path).run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    assert np.isfinite(out).all()


def test_failed_parity_leaves_no_files(tmp_path, monkeypatch):
    c = random_components("sana-tiny", ("transformer",))
    import sana_deploy.export.specs as specs

    original = specs.transformer_spec

    def strict(components):
        s = original(components)
        return specs.ExportSpec(**{**s.__dict__, "tolerance": {"fp32": 0.0}})

    monkeypatch.setitem(specs.SPECS, "transformer", strict)
    with pytest.raises(ExportError, match="Parity check failed"):
        export_component(c, "transformer", "fp32", tmp_path)
    assert not (tmp_path / "fp32" / "transformer").exists()
    assert not list(tmp_path.rglob("*.onnx"))


def test_unwritable_output_dir(tmp_path):
    """A folder under a regular file is unwritable for every user (root too); a read-only folder for non-root."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    outs = [blocker / "out"]
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        outs.append(ro / "out")
    c = random_components("sana-tiny", ("transformer",))
    for out in outs:
        with pytest.raises(SanaDeployError, match="Cannot write"):
            export_component(c, "transformer", "fp32", out)
    assert blocker.read_text() == "not a folder" and not list(tmp_path.rglob("*.onnx"))


def test_output_path_that_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    c = random_components("sana-tiny", ("transformer",))
    with pytest.raises(SanaDeployError, match="Cannot write"):
        export_component(c, "transformer", "fp32", blocker / "out")


def test_bad_component_and_precision():
    from sana_deploy.export import export_model

    c = random_components("sana-tiny", ("transformer",))
    with pytest.raises(SanaDeployError, match="Unknown component"):
        export_model(c, "unet")
    with pytest.raises(SanaDeployError, match="Unknown precision"):
        export_model(c, "transformer", "int3")


def test_ort_runs_graph_at_unseen_size(tiny_export, tiny):
    """A batch/size/text length combination none of the export or parity inputs had."""
    out, _ = tiny_export
    spec = SPECS["transformer"](tiny)
    inputs = spec.dummy_inputs(tiny, {"batch": 3, "latent_h": 8, "latent_w": 40, "text_len": 5}, seed=7)
    got = cpu_session(out / "fp32" / "transformer" / "model.onnx").run(None, {k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        want = tiny.transformer(*inputs.values()).numpy()
    assert got[0].shape == (3, 32, 8, 40)
    assert np.abs(got[0] - want).max() / np.abs(want).max() < 1e-5


def test_split_transformer_caches_caption_kv(tmp_path, tiny):
    """transformer_text once per prompt + transformer_cached per step == the one-graph transformer."""
    from sana_deploy.export import export_model

    results = {r.component: r for r in export_model(tiny, "transformer-text,transformer-cached", "fp32", tmp_path)}
    assert all(p.rel <= 1e-5 for r in results.values() for p in r.parity)
    spec = SPECS["transformer"](tiny)
    inputs = spec.dummy_inputs(tiny, {"batch": 2, "latent_h": 16, "latent_w": 24, "text_len": 300}, seed=5)
    kv = cpu_session(results["transformer_text"].path).run(
        None, {"encoder_hidden_states": inputs["encoder_hidden_states"].numpy()}
    )[0]
    assert kv.shape == (2, 2, 2, 300, 64)
    feeds = {k: v.numpy() for k, v in inputs.items() if k != "encoder_hidden_states"} | {"text_kv": kv}
    got = cpu_session(results["transformer_cached"].path).run(None, feeds)[0]
    with torch.no_grad():
        want = tiny.transformer(*inputs.values()).numpy()
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5


def test_external_data_for_large_models(tmp_path, monkeypatch):
    """Over protobuf's 2 GiB limit the weights go to model.onnx.data (threshold lowered to test it)."""
    import sana_deploy.export.exporter as exporter

    monkeypatch.setattr(exporter, "EXTERNAL_DATA_THRESHOLD", 1024)
    c = random_components("sana-tiny", ("transformer",))
    r = export_component(c, "transformer", "fp32", tmp_path)
    files = r.manifest["files"]
    data_size = (r.path.parent / files[1]).stat().st_size
    assert len(files) == 2 and files[0] == "model.onnx" and data_size > 500_000
    graph = onnx.load(str(r.path), load_external_data=False).graph
    inline = [i.name for i in graph.initializer if i.data_location != onnx.TensorProto.EXTERNAL and i.ByteSize() > 4096]
    constants = [n.output[0] for n in graph.node if n.op_type == "Constant" and n.ByteSize() > 4096]
    assert not inline and not constants  # the graph file has no weights: only the graph and tiny constants
    assert all(p.rel <= 1e-5 for p in r.parity)  # ORT found the external weights
    assert sana_nodes(onnx.load(str(r.path), load_external_data=False))


@pytest.mark.parametrize("external", [False, True])
def test_export_releases_the_weights(tmp_path, monkeypatch, external):
    """After an export, dropping the module frees its parameters (the exporter's IR must not pin them): at real
    size the ONNX Runtime backend frees the exported modules before its sessions load their own copy."""
    import gc
    import weakref

    import sana_deploy.export.exporter as exporter

    if external:  # the > 2 GiB path (weights in model.onnx.data)
        monkeypatch.setattr(exporter, "EXTERNAL_DATA_THRESHOLD", 0)
    c = random_components("sana-tiny", ("text_encoder",))
    refs = [weakref.ref(p) for p in c.text_encoder.parameters()]
    result = export_component(c, "text_encoder", "fp32", tmp_path, unsafe_skip_parity=True)
    assert (result.path.parent / "model.onnx.data").exists() == external
    c.text_encoder = None
    gc.collect()
    alive = sum(r() is not None for r in refs)
    assert alive == 0, f"{alive} of {len(refs)} parameters still referenced after the export"
