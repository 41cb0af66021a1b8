"""A damaged or unusable engine folder is a one-line message (a ``SanaDeployError``: exit 2), never a traceback:
an engine dir that is a file, a read-only one, meta.json files with wrong types."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from sana_deploy.cli import main
from sana_deploy.engines import CacheError, EngineCache, build_engines, load_runner


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)  # the CLI prints every error


def _commands(folder: Path, export_root: Path) -> list[list[str]]:
    return [
        ["build", "--backend", "onnxruntime", "--components", "vae", "--export-dir", str(export_root)],
        ["engines", "list"],
        ["engines", "inspect"],
        ["engines", "verify"],
        ["engines", "prune"],
        ["engines", "prune", "--all"],
        ["generate", "a fox", "--backend", "onnxruntime", "--on-miss", "error", "-o", str(folder / "out.png")],
    ]


def test_an_engine_dir_that_is_a_file(tmp_path, export_root):
    file = tmp_path / "engines"
    file.write_text("not a folder")
    for args in _commands(tmp_path, export_root):
        res = _cli(*args, "--engine-dir", str(file))
        assert res.exit_code == 2 and "is not a folder" in res.output, (args, res.output)
    assert file.read_text() == "not a folder"
    with pytest.raises(CacheError, match="is not a folder"):
        EngineCache(file)


@pytest.fixture
def read_only_dir(tmp_path):
    """An empty folder this process cannot write: mode 0555, or (as root, which ignores modes) immutable."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if os.access(folder, os.W_OK):  # root
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if not immutable:
            folder.chmod(0o755)
            pytest.skip("cannot make a read-only folder here (root without chattr)")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def test_a_read_only_empty_engine_dir(read_only_dir, tmp_path, export_root):
    for args in _commands(tmp_path, export_root):
        res = _cli(*args, "--engine-dir", str(read_only_dir))
        assert "Traceback" not in res.output, (args, res.output)
        if args[0] == "build":  # refused before the model is loaded or exported
            assert res.exit_code == 2 and "Cannot write in the engine cache" in res.output, res.output
            assert "Use a writable --engine-dir" in res.output
        elif args[0] == "generate":
            assert res.exit_code == 2 and "No engine in" in res.output, res.output
        elif args[1] == "inspect":
            assert res.exit_code == 2 and "No cached engine" in res.output, res.output
        else:
            assert res.exit_code == 0, (args, res.output)
    res = _cli("generate", "a fox", "--backend", "onnxruntime", "--on-miss", "build", "--engine-dir",
               str(read_only_dir), "-o", str(tmp_path / "out.png"))  # fmt: skip
    assert res.exit_code == 2 and "Cannot write in the engine cache" in res.output, res.output
    assert list(read_only_dir.iterdir()) == []


@pytest.fixture(scope="module")
def template(tmp_path_factory, export_root) -> Path:
    root = tmp_path_factory.mktemp("errors-template") / "cache"
    build_engines("sana-tiny", "1024", components="vae", backend="onnxruntime", engine_dir=root,
                  export_root=export_root, progress=False, say=lambda m: None)  # fmt: skip
    return root


def _set(field: str, value: object):  # noqa: ANN202
    return lambda meta: {**meta, field: value}


@pytest.mark.parametrize(
    "edit, problem",
    [
        (_set("artifact_bytes", "123"), "artifact_bytes is not a byte count"),
        (_set("artifact_sha256", 5), "must be strings"),
        (_set("profile", "1024"), "profile is not {name, axes}"),
        (_set("profile", {"name": "1024", "axes": {"batch": [1, 2]}}), "profile lacks the axes"),
        (_set("info", []), "wrong type of ['info']"),
        (_set("key", "f" * 24), "is not its folder's name"),
        (_set("artifact", ".last_used"), "is not a file name inside the entry's folder"),
        (_set("component", "unet"), "unknown component"),
        (_set("created", "yesterday"), "created is not a UTC time stamp"),
        (lambda meta: [meta], "meta.json is missing or unreadable"),
        (lambda meta: None, "meta.json is missing or unreadable"),
    ],
    ids=[
        "bytes-str",
        "sha-int",
        "profile-str",
        "profile-axes",
        "info-list",
        "key",
        "hidden-artifact",
        "component",
        "created",
        "list",
        "fifo",
    ],  # fmt: skip
)
def test_a_meta_json_with_wrong_types_is_a_bad_entry(tmp_path, template, edit, problem):
    root = tmp_path / "cache"
    shutil.copytree(template, root)
    (entry,) = [p.parent for p in root.glob("sana-tiny/vae/*/meta.json")]
    meta = json.loads((entry / "meta.json").read_text())
    (entry / "meta.json").unlink()
    new = edit(meta)
    if new is None:
        os.mkfifo(entry / "meta.json")  # reading it would block: it is never opened for reading
    else:
        (entry / "meta.json").write_text(json.dumps(new))
    res = _cli("engines", "verify", "--engine-dir", str(root))
    assert res.exit_code == 1 and problem in res.output, res.output
    res = _cli("engines", "list", "--engine-dir", str(root))
    assert res.exit_code == 0 and entry.name[:12] in res.output, res.output
    res = _cli("engines", "inspect", "--engine-dir", str(root))
    assert res.exit_code == 0 and problem in res.output, res.output
    assert EngineCache(root).find("sana-tiny", "vae", 1024, 1024, 1) is None
    with pytest.raises(CacheError, match="Refusing to load"):
        load_runner(entry)
    res = _cli("engines", "prune", "--engine-dir", str(root))
    assert res.exit_code == 0 and not entry.exists(), res.output


def test_an_entry_folder_path_outside_a_cache_layout(tmp_path):
    with pytest.raises(CacheError, match="is not an engine cache entry"):
        load_runner(Path("x"))
    with pytest.raises(CacheError, match="is not an engine cache key"):
        EngineCache(tmp_path).entry_dir("sana-tiny", "vae", "../../x")
    with pytest.raises(CacheError, match="cannot name a folder of the engine cache"):
        EngineCache(tmp_path).entry_dir("models/..", "vae", "a" * 24)
    with pytest.raises(CacheError, match="is not an engine component"):
        EngineCache(tmp_path).entry_dir("sana-tiny", "../vae", "a" * 24)
    assert not list(tmp_path.iterdir())


def test_a_weight_stripped_entry_refits_only_from_its_own_copy(tmp_path, export_root):
    """The TensorRT refit source is the ONNX kept in the entry (``refit/``), checked against ``onnx_sha256``; the
    ``onnx_path`` recorded in meta.json is never used (the runner itself needs CUDA: unverified here)."""
    from sana_deploy.engines.builder import Export, _stage_refit
    from sana_deploy.engines.lazy import _refit_onnx
    from sana_deploy.engines.records import EngineEntry

    folder = Path(export_root) / "fp32" / "transformer_text"
    export = Export("transformer_text", folder / "model.onnx", json.loads((folder / "manifest.json").read_text()))
    entry_dir = tmp_path / "sana-tiny" / "transformer_text" / ("a" * 24)
    entry_dir.mkdir(parents=True)
    files = _stage_refit(export, entry_dir)
    assert files == export.manifest["files"] and (entry_dir / "refit" / "model.onnx").is_file()
    # copies, not hard links: onnx refuses external data with several links, so the export must stay loadable
    assert all((folder / name).stat().st_nlink == 1 for name in files)
    onnx.load(str(folder / "model.onnx"), load_external_data=True)
    meta = {"flags": {"strip_weights": True}, "refit_files": files, "onnx_sha256": export.manifest["onnx_sha256"],
            "onnx_path": "/elsewhere/model.onnx"}  # fmt: skip
    assert EngineCache._refit_problems(entry_dir, meta) == []
    assert _refit_onnx(EngineEntry(entry_dir, meta)) == entry_dir / "refit" / "model.onnx"
    (entry_dir / "refit" / "model.onnx").unlink()
    (entry_dir / "refit" / "model.onnx").write_bytes(b"edited")
    assert "does not match the onnx_sha256" in EngineCache._refit_problems(entry_dir, meta)[0]
    assert "without its refit ONNX" in EngineCache._refit_problems(entry_dir, {**meta, "refit_files": []})[0]


def test_tensorrt_plugin_libraries_come_from_the_configuration_not_meta(tmp_path, monkeypatch):
    """A TensorRT entry's C++ plugin libraries are the ones this process is configured with, checked against the
    key's sha256; the paths recorded in meta.json are never loaded (the runner itself needs CUDA)."""
    import hashlib

    from sana_deploy.engines.lazy import QDP_PLUGINS, _plugin_libraries
    from sana_deploy.engines.records import EngineEntry

    lib = tmp_path / "libsana_plugins.so"
    lib.write_bytes(b"plugin code")
    recorded = {"libsana_plugins.so": hashlib.sha256(b"plugin code").hexdigest(), QDP_PLUGINS: "x"}
    meta = {"plugins": recorded, "info": {"plugin_libraries": ["/elsewhere/libsana_plugins.so"]}}
    entry = EngineEntry(tmp_path / "e", meta)
    monkeypatch.delenv("SANA_DEPLOY_PLUGIN_LIBS", raising=False)
    with pytest.raises(CacheError, match="list that library .* in SANA_DEPLOY_PLUGIN_LIBS"):
        _plugin_libraries(entry)
    monkeypatch.setenv("SANA_DEPLOY_PLUGIN_LIBS", str(lib))
    assert _plugin_libraries(entry) == (str(lib.resolve()),)
    lib.write_bytes(b"other code")  # not the library the engine was built with
    with pytest.raises(CacheError, match="the same file"):
        _plugin_libraries(entry)
    assert _plugin_libraries(EngineEntry(tmp_path / "e", {"plugins": {QDP_PLUGINS: "x"}})) == ()
