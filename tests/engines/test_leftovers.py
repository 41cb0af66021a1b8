"""Failed, killed and background builds leave nothing behind once the next build or ``engines prune`` runs: no
``.tmp-*`` staging folder, no ``.pending`` record or log. Reading commands create nothing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from sana_deploy.cli import main
from sana_deploy.engines import EngineCache, build_engines, pending_builds
from sana_deploy.engines.backends import BACKENDS, EngineBuildError
from sana_deploy.engines.resolve import resolve, start_background

DEAD_PID = 2**22 + 12345  # above the default pid_max: never a live process


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _build(root: Path, export_root: Path, components: str = "vae", profiles: str = "1024"):
    return build_engines("sana-tiny", profiles, components=components, backend="onnxruntime", engine_dir=root,
                         export_root=export_root, progress=False, say=lambda m: None)  # fmt: skip


def _leftovers(root: Path) -> list[str]:
    found = [*root.rglob(".tmp-*"), *root.rglob(".old-*"), *root.glob(".pending")]
    return sorted(str(p.relative_to(root)) for p in found)


def _wait(predicate, seconds: float = 180) -> None:  # noqa: ANN001
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.3)


@pytest.mark.parametrize("error", [EngineBuildError, KeyboardInterrupt])
def test_a_failed_build_removes_its_staging_folder(tmp_path, export_root, monkeypatch, error):
    def failing(self, job):  # noqa: ANN001, ANN202
        (job.out_dir / "model.opt.onnx").write_bytes(b"half an artifact")
        raise error("simulated failure")

    monkeypatch.setattr(type(BACKENDS["onnxruntime"]), "build", failing)
    with pytest.raises(error, match="simulated failure"):
        _build(tmp_path, export_root)
    assert _leftovers(tmp_path) == []
    assert EngineCache(tmp_path).entries() == []
    monkeypatch.undo()
    (entry,) = _build(tmp_path, export_root)
    assert not entry.hit and _leftovers(tmp_path) == []


def _spawn_build(root: Path, export_root: Path) -> subprocess.Popen:
    code = (
        "from sana_deploy.engines import build_engines\n"
        f"build_engines('sana-tiny', '1024', backend='onnxruntime', components='vae', engine_dir={str(root)!r},"
        f" export_root={str(export_root)!r}, progress=False, say=lambda m: None)\n"
    )
    env = {**os.environ, "SANA_DEPLOY_FAULT": "after-artifact:120"}  # parks after writing the artifact
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("then", ["build", "prune"])
def test_a_killed_build_is_cleaned_by_the_next_build_or_prune(tmp_path, export_root, then):
    proc = _spawn_build(tmp_path, export_root)
    for line in proc.stdout:
        if "fault point" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (staged,) = tmp_path.glob("sana-tiny/vae/.tmp-*")
    assert any(staged.iterdir())
    if then == "build":  # another key: the leftover is not its own, and it is still removed
        (entry,) = _build(tmp_path, export_root, components="text_encoder")
        assert entry.component == "text_encoder"
    else:
        res = _cli("engines", "prune", "--engine-dir", str(tmp_path))
        assert res.exit_code == 0 and "leftover of an interrupted build" in res.output, res.output
    assert _leftovers(tmp_path) == []


def test_leftovers_of_dead_builds_go_and_a_live_builds_stay(tmp_path, export_root):
    dead, live = "ab" * 12, "cd" * 12
    folder = tmp_path / "sana-tiny" / "vae"
    (folder / f".tmp-{dead}-{DEAD_PID}-x1").mkdir(parents=True)
    (folder / f".tmp-{dead}-{DEAD_PID}-x1" / "model.opt.onnx").write_bytes(b"partial")
    (folder / f".old-{dead}-{DEAD_PID}").mkdir()
    (tmp_path / ".tmp-manifest.json-x1.json").write_text("{")  # a killed manifest update
    (folder / f".tmp-{live}-{os.getpid()}-x2").mkdir()
    cache = EngineCache(tmp_path)
    with cache.key_lock(live):  # a build of `live` is running: its staging folder is left alone
        res = _cli("engines", "prune", "--dry-run", "--engine-dir", str(tmp_path))
        assert res.exit_code == 0 and "3 to remove" in res.output, res.output
        assert len(_leftovers(tmp_path)) == 4  # a dry run removes nothing
        _build(tmp_path, export_root, components="text_encoder")
        assert _leftovers(tmp_path) == [f"sana-tiny/vae/.tmp-{live}-{os.getpid()}-x2"]
    res = _cli("engines", "prune", "--engine-dir", str(tmp_path))
    assert res.exit_code == 0 and _leftovers(tmp_path) == [], res.output


def test_a_background_build_removes_its_record_when_it_ends(tmp_path, export_root):
    cache = EngineCache(tmp_path)
    kw = dict(backend="onnxruntime", export_root=str(export_root))
    assert resolve(cache, "sana-tiny", "vae", 512, 512, 1, policy="background", **kw) is None
    (record,) = pending_builds(tmp_path)
    assert Path(record["log"]).parent == tmp_path / ".pending"
    _wait(lambda: not pending_builds(tmp_path))
    assert cache.find("sana-tiny", "vae", 512, 512, 1) is not None
    assert _leftovers(tmp_path) == []  # record and log removed by the build itself

    # a failed one removes its record and keeps its log (the error) until the next build or prune
    assert resolve(cache, "sana-tiny", "vae", 512, 512, 1, policy="background", precision="fp8", **kw) is None
    _wait(lambda: not list((tmp_path / ".pending").glob("*.json")))
    (log,) = (tmp_path / ".pending").glob("*.log")
    assert "error:" in log.read_text()
    res = _cli("engines", "prune", "--engine-dir", str(tmp_path))
    assert res.exit_code == 0 and "finished background build" in res.output, res.output
    assert _leftovers(tmp_path) == []


def test_a_killed_background_build_is_cleaned_by_the_next_build(tmp_path, export_root, monkeypatch):
    monkeypatch.setenv("SANA_DEPLOY_FAULT", "after-artifact:120")  # the child parks after writing the artifact
    req = {"model": "sana-tiny", "profiles": [512], "components": ["vae"], "max_batch": 1, "backend": "onnxruntime",
           "export_root": str(export_root)}  # fmt: skip
    record = start_background(tmp_path, req)
    monkeypatch.delenv("SANA_DEPLOY_FAULT")
    _wait(lambda: "fault point" in Path(record["log"]).read_text())
    os.kill(record["pid"], signal.SIGKILL)
    _wait(lambda: not pending_builds(tmp_path))  # reaps it
    assert list((tmp_path / ".pending").glob("*.json")) and list(tmp_path.rglob(".tmp-*"))
    _build(tmp_path, export_root, components="text_encoder")
    assert _leftovers(tmp_path) == []


def test_a_truncated_background_record_is_no_record(tmp_path, export_root):
    req = {"model": "sana-tiny", "profiles": [512], "components": ["vae"], "max_batch": 1, "precision": "fp8",
           "export_root": str(export_root)}  # fmt: skip
    tag = hashlib.sha256(json.dumps(req, sort_keys=True, default=str).encode()).hexdigest()[:16]
    (tmp_path / ".pending").mkdir()
    (tmp_path / ".pending" / f"{tag}.json").write_text('{"pid": 12')  # cut short
    (tmp_path / ".pending" / f"{'0' * 16}.json").write_text(json.dumps({"pid": "x", "tag": "0" * 16}))
    assert pending_builds(tmp_path) == []
    record = start_background(tmp_path, req)  # replaces the truncated record instead of failing on it
    assert record["tag"] == tag and isinstance(record["pid"], int)
    _wait(lambda: not (tmp_path / ".pending" / f"{tag}.json").exists())
    res = _cli("engines", "prune", "--engine-dir", str(tmp_path))
    assert res.exit_code == 0 and _leftovers(tmp_path) == [], res.output


@pytest.mark.parametrize("command", [["list"], ["verify"], ["inspect"], ["prune"], ["prune", "--dry-run"]])
def test_reading_commands_create_nothing(tmp_path, command):
    missing = tmp_path / "missing"
    res = _cli("engines", *command, "--engine-dir", str(missing))
    assert res.exit_code in (0, 2) and "Traceback" not in res.output, res.output
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _cli("engines", *command, "--engine-dir", str(empty))
    assert res.exit_code in (0, 2) and "Traceback" not in res.output, res.output
    assert list(empty.iterdir()) == []
