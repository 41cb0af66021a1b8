"""Every export the product path runs is parity-checked first; one that fails is refused with the report, never run,
and never left on disk as a usable export."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

import sana_deploy.export.exporter as exporter
from sana_deploy.cli import main
from sana_deploy.errors import ExportError, ParityError
from sana_deploy.export import SPECS, ensure_export, export_component
from sana_deploy.models.random import random_components
from sana_deploy.runtime.pipeline import SanaDeployPipeline
from sana_deploy.serve.shared import load_pipeline


def _corrupt(path, factor: float) -> None:
    """Scale the graph's first output by ``factor`` (NaN: every value NaN): an export that computes the wrong thing."""
    model = onnx.load(str(path), load_external_data=False)
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_orig" if o == out else o for o in node.output]
        node.input[:] = [f"{i}_orig" if i == out else i for i in node.input]
    model.graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "corrupt_factor"))
    model.graph.node.append(helper.make_node("Mul", [f"{out}_orig", "corrupt_factor"], [out]))
    onnx.save_model(model, str(path))


@pytest.fixture
def broken_exports(monkeypatch):
    """Every export from here on writes a graph whose output is 1.5x PyTorch's (a wrong graph that runs fine)."""
    traced = exporter.trace_to_onnx
    calls = []

    def trace_then_corrupt(module, spec, inputs, path):
        model, files = traced(module, spec, inputs, path)
        _corrupt(path, 1.5)
        calls.append(spec.component)
        return model, files

    monkeypatch.setattr(exporter, "trace_to_onnx", trace_then_corrupt)
    return calls


def _no_usable_export(root) -> None:
    assert not [p for p in root.rglob("manifest.json")], "a refused export left a manifest behind"
    assert not [p for p in root.rglob("model.onnx")], "a refused export left a graph behind"
    assert not [p for p in root.rglob(".tmp-*")], "a refused export left its temporary folder"


def _is_report(text: str, component: str) -> None:
    assert f"Parity check failed for {component} of sana-tiny (fp32)" in text and "does not match PyTorch" in text
    assert "parity report" in text and "FAIL" in text and "max abs" in text and "tol 1e-05" in text


COMPONENT = "transformer_text"  # the quickest graph to export; every component goes through the same code


def test_ensure_export_refuses_a_graph_that_fails_parity(tiny, tmp_path, broken_exports):
    with pytest.raises(ParityError) as info:
        ensure_export(tiny, COMPONENT, "fp32", tmp_path)
    _is_report(str(info.value), COMPONENT)
    assert isinstance(info.value, ExportError) and info.value.results and not info.value.results[0].ok
    # the quick check: one size, the spec's smallest, which differs from the traced dummy
    spec = SPECS[COMPONENT](tiny)
    assert [r.sizes for r in info.value.results] == list(spec.quick_parity_sizes) != [spec.export_sizes]
    assert broken_exports == [COMPONENT]
    _no_usable_export(tmp_path)


def test_ensure_export_refuses_nan_with_the_report(tiny, tmp_path, monkeypatch):
    traced = exporter.trace_to_onnx

    def nan_graph(module, spec, inputs, path):
        result = traced(module, spec, inputs, path)
        _corrupt(path, float("nan"))
        return result

    monkeypatch.setattr(exporter, "trace_to_onnx", nan_graph)
    with pytest.raises(ParityError, match="NON-FINITE"):
        ensure_export(tiny, COMPONENT, "fp32", tmp_path)
    _no_usable_export(tmp_path)


def test_a_failed_export_keeps_the_checked_one(tiny, tmp_path, monkeypatch):
    """A refused re-export (other weights) leaves the previous, checked export as it was, and nothing half-made."""
    first = export_component(tiny, COMPONENT, "fp32", tmp_path, "quick")
    before = first.path.read_bytes()
    other = random_components("sana-tiny", ("transformer",), seed=7)
    traced = exporter.trace_to_onnx

    def wrong_graph(module, spec, inputs, path):
        result = traced(module, spec, inputs, path)
        _corrupt(path, 1.5)
        return result

    monkeypatch.setattr(exporter, "trace_to_onnx", wrong_graph)
    with pytest.raises(ParityError):
        ensure_export(other, COMPONENT, "fp32", tmp_path)
    assert first.path.read_bytes() == before
    assert json.loads(first.path.with_name("manifest.json").read_text())["parity_status"] == "passed"
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_parity_cannot_be_switched_off_by_accident(tiny, tmp_path):
    for bad in (False, None, "off", 0):
        with pytest.raises(TypeError, match="cannot be turned off"):
            ensure_export(tiny, COMPONENT, "fp32", tmp_path, parity=bad)
        with pytest.raises(TypeError, match="cannot be turned off"):
            export_component(tiny, COMPONENT, "fp32", tmp_path, parity=bad)
    assert not (tmp_path / "fp32").exists()


def test_only_a_checked_export_is_served(tiny, tmp_path):
    """``sana-deploy export --no-parity`` output is marked unchecked, and exports written before the check was always
    on (``"parity": []``, no status) or with an unreadable manifest are not served either: ensure_export exports
    them again, checked."""
    r = export_component(tiny, COMPONENT, "fp32", tmp_path, unsafe_skip_parity=True)
    manifest_path = r.path.with_name("manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["parity_status"] == "unchecked" and manifest["parity"] == [] and manifest["parity_level"] == "none"
    assert ensure_export(tiny, COMPONENT, "fp32", tmp_path) == (r.path, False)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["parity_status"] == "passed" and manifest["parity_level"] == "quick"
    assert len(manifest["parity"]) == 1 and manifest["parity"][0]["finite"]
    assert ensure_export(tiny, COMPONENT, "fp32", tmp_path) == (r.path, True)  # checked: served as it is

    del manifest["parity_status"]
    manifest["parity"] = []
    manifest_path.write_text(json.dumps(manifest))
    assert ensure_export(tiny, COMPONENT, "fp32", tmp_path) == (r.path, False)
    manifest_path.write_text("{not json")
    assert ensure_export(tiny, COMPONENT, "fp32", tmp_path) == (r.path, False)
    assert json.loads(manifest_path.read_text())["parity_status"] == "passed"


def test_from_model_onnxruntime_refuses_a_failing_export(tmp_path, broken_exports):
    with pytest.raises(ParityError) as info:
        SanaDeployPipeline.from_model("sana-tiny", backend="onnxruntime", export_dir=tmp_path)
    _is_report(str(info.value), broken_exports[0])
    assert len(broken_exports) == 1  # refused at the first graph: nothing else exported or loaded
    _no_usable_export(tmp_path)


def test_generate_refuses_a_failing_export(tmp_path, monkeypatch, broken_exports):
    monkeypatch.chdir(tmp_path)  # the engine build exports into ./export/<model>
    out = tmp_path / "x.png"
    args = ["generate", "a fox", "-o", str(out), "--backend", "onnxruntime", "--engine-dir", str(tmp_path / "eng")]
    r = CliRunner().invoke(main, [*args, "--steps", "1", "--no-progress", "--height", "256", "--width", "256"])
    assert r.exit_code == 2, r.output
    _is_report(r.output, broken_exports[0])
    assert "Traceback" not in r.output and not out.exists()
    _no_usable_export(tmp_path)
    assert not [p for p in (tmp_path / "eng").rglob("meta.json")]  # no engine built from it


def test_serve_pipeline_refuses_a_failing_export(tmp_path, monkeypatch, broken_exports):
    """serve loads its pipeline with ``load_pipeline`` (``build_pipeline``, as generate): a request that needs the
    failing export gets the refusal, not an image."""
    monkeypatch.chdir(tmp_path)
    pipe = load_pipeline("sana-tiny", tmp_path / "eng", miss_policy="build", backend="onnxruntime")
    with pytest.raises(ParityError) as info:
        pipe("a fox", height=256, width=256, num_inference_steps=1, guidance_scale=4.5)
    _is_report(str(info.value), broken_exports[0])
    _no_usable_export(tmp_path)
    assert not [p for p in (tmp_path / "eng").rglob("meta.json")]
