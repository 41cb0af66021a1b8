"""``sana-deploy export --controlnet``: the ControlNet's graph and the step graph that takes its residuals are written
next to the others, each parity-checked (ONNX Runtime vs PyTorch), and they are the exports the runtime reuses for
the same weights; a controlnet graph without the ControlNet folder is refused."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from sana_deploy.cli import main
from sana_deploy.export import ensure_export
from sana_deploy.models.controlnet import load_controlnet, random_controlnet, save_controlnet


@pytest.fixture(scope="module")
def controlnet_export(tiny, tmp_path_factory):
    """One CLI export of a 2-block random ControlNet on sana-tiny (``--components controlnet``: the two ControlNet
    graphs only, to keep it short)."""
    work = tmp_path_factory.mktemp("export-cn")
    folder = save_controlnet(random_controlnet(tiny.preset, num_layers=2, seed=5), work / "sana-tiny-controlnet")
    out = work / "out"
    r = CliRunner().invoke(
        main,
        [
            "export",
            "--model",
            "sana-tiny",
            "--components",
            "controlnet",
            "--controlnet",
            str(folder),
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    return r.output, folder, out


def test_writes_both_controlnet_graphs_and_they_pass_parity(controlnet_export):
    output, _, out = controlnet_export
    for name in ("controlnet", "transformer_control"):
        folder = out / "fp32" / name
        assert (folder / "model.onnx").is_file(), name
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["parity_status"] == "passed", name
        assert len(manifest["parity"]) >= 3
        for p in manifest["parity"]:
            assert p["finite"] and p["rel"] <= p["tolerance"], (name, p)
        assert f"{name} [fp32] -> {folder / 'model.onnx'}" in output
    # only what was asked for, and the ControlNet's two
    assert sorted(p.name for p in (out / "fp32").iterdir() if p.is_dir()) == ["controlnet", "transformer_control"]


def test_the_runtime_reuses_the_cli_exports(tiny, controlnet_export):
    """The same weights (sana-tiny's seeded ones, the folder's ControlNet) find the CLI's exports: no re-export."""
    _, folder, out = controlnet_export
    comps = dataclasses.replace(tiny, _hashes={}, controlnet=load_controlnet(folder, tiny.preset))
    for name in ("controlnet", "transformer_control"):
        path, found = ensure_export(comps, name, "fp32", out)
        assert found, name
        assert path == out / "fp32" / name / "model.onnx"


def test_controlnet_graph_without_the_folder_is_refused(tmp_path):
    r = CliRunner().invoke(
        main, ["export", "--model", "sana-tiny", "--components", "controlnet", "--out", str(tmp_path)]
    )
    assert r.exit_code == 2, r.output
    assert "pass --controlnet FOLDER" in r.output
    assert not any(tmp_path.iterdir())


def test_a_folder_that_is_not_a_controlnet_is_refused_before_loading(tmp_path):
    (tmp_path / "cn").mkdir()
    r = CliRunner().invoke(
        main, ["export", "--model", "sana-tiny", "--controlnet", str(tmp_path / "cn"), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 2, r.output
    assert "not a diffusers Sana ControlNet folder" in r.output
    assert not (tmp_path / "o").exists()
