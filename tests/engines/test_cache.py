"""The engine cache: hits, keys, concurrent builds, SIGKILL mid-build, corruption, miss policies."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from sana_deploy.engines import BuildOptions, CacheError, EngineCache, Profile, build_engines, load_runner
from sana_deploy.engines.backends import BACKENDS
from sana_deploy.engines.builder import Export, cache_key
from sana_deploy.engines.resolve import pending_builds, resolve
from sana_deploy.errors import SanaDeployError

ORT = dict(backend="onnxruntime", progress=False)


def _build(root, export_root, components="transformer", profiles="1024", **kw):
    return build_engines(
        "sana-tiny", profiles, components=components, engine_dir=root, export_root=export_root, **ORT, **kw
    )


def test_second_build_is_a_hit_and_rebuilds_nothing(tmp_path, export_root):
    first = _build(tmp_path, export_root, components="transformer,vae,text-encoder", profiles="512,1024")
    assert not any(e.hit for e in first)
    mtimes = {e.key: e.artifact.stat().st_mtime_ns for e in first}
    t0 = time.perf_counter()
    again = _build(tmp_path, export_root, components="transformer,vae,text-encoder", profiles="512,1024")
    total = time.perf_counter() - t0
    assert [e.key for e in again] == [e.key for e in first] and all(e.hit for e in again)
    assert all(e.lookup_seconds <= 0.05 for e in again), [e.lookup_seconds for e in again]
    assert {e.key: e.artifact.stat().st_mtime_ns for e in again} == mtimes  # nothing rewritten
    assert total < 5  # checksums included; no export, no build
    t0 = time.perf_counter()
    found = EngineCache(tmp_path).find("sana-tiny", "vae", 768, 1024, 2)
    assert found is not None and time.perf_counter() - t0 <= 0.05


def _export(export_root) -> Export:
    folder = Path(export_root) / "fp32" / "transformer"
    return Export("transformer", folder / "model.onnx", json.loads((folder / "manifest.json").read_text()))


def test_key_changes_with_onnx_precision_flags_profile_and_version(export_root):
    ort = BACKENDS["onnxruntime"]
    exp = _export(export_root)
    p1024, opts = Profile.from_base(1024), BuildOptions()
    base, _ = cache_key(ort, "sana-tiny", exp, "fp32", p1024, opts)
    again, _ = cache_key(ort, "sana-tiny", exp, "fp32", p1024, opts)
    assert base.digest == again.digest
    changed_onnx = Export(exp.component, exp.onnx_path, {**exp.manifest, "onnx_sha256": "0" * 64})
    variants = [
        cache_key(ort, "sana-tiny", changed_onnx, "fp32", p1024, opts),
        cache_key(ort, "sana-tiny", exp, "fp16", p1024, opts),
        cache_key(ort, "sana-tiny", exp, "fp32", p1024, BuildOptions(opt_level=5)),
        cache_key(ort, "sana-tiny", exp, "fp32", p1024, BuildOptions(strip_weights=True)),
        cache_key(ort, "sana-tiny", exp, "fp32", Profile.from_base(1024, static=True), opts),
        cache_key(ort, "sana-tiny", exp, "fp32", Profile.from_base(1024, max_batch=2), opts),
        cache_key(ort, "sana-tiny", exp, "fp32", Profile.from_base(2048), opts),
    ]
    digests = [k.digest for k, _ in variants]
    assert base.digest not in digests and len(set(digests)) == len(digests)
    assert replace(base, backend_version="0.0").digest != base.digest
    assert replace(base, device="sm90").digest != base.digest
    assert replace(base, plugins={"libsana_plugins.so": "ab"}).digest != base.digest


def test_changed_onnx_is_a_miss_and_a_stale_manifest_is_refused(tmp_path, export_root):
    src = Path(export_root) / "fp32" / "transformer"
    root = tmp_path / "export"
    dst = root / "fp32" / "transformer"
    shutil.copytree(src, dst)
    (first,) = _build(tmp_path / "engines", root)
    model = onnx.load(str(dst / "model.onnx"))
    model.producer_version = "edited"
    onnx.save(model, str(dst / "model.onnx"))
    with pytest.raises(SanaDeployError, match="does not match the onnx_sha256 in its manifest"):
        _build(tmp_path / "engines2", root)  # refuses to build from an ONNX its manifest does not describe
    from sana_deploy.export.exporter import _sha256_files

    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["onnx_sha256"] = _sha256_files(dst, manifest["files"])
    (dst / "manifest.json").write_text(json.dumps(manifest))  # what a re-export does
    (second,) = _build(tmp_path / "engines", root)
    assert not second.hit and second.key != first.key


def _spawn_build(root, export_root, fault: str | None = None) -> subprocess.Popen:
    code = (
        "import sys\n"
        "from sana_deploy.engines import build_engines\n"
        f"es = build_engines('sana-tiny', '1024', backend='onnxruntime', components='vae', engine_dir={str(root)!r},"
        f" export_root={str(export_root)!r}, progress=False, say=lambda m: None)\n"
        "print('RESULT', 'hit' if es[0].hit else 'built', es[0].key, flush=True)\n"
    )
    env = {**os.environ, **({"SANA_DEPLOY_FAULT": fault} if fault else {})}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)


def test_two_processes_build_one_key_once(tmp_path, export_root):
    # each build holds the key lock 4 s after writing its artifact, so the two processes overlap
    procs = [_spawn_build(tmp_path, export_root, "after-artifact:4") for _ in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    results = [line.split()[1:] for out in outs for line in out.splitlines() if line.startswith("RESULT")]
    assert sorted(r[0] for r in results) == ["built", "hit"], outs
    assert results[0][1] == results[1][1]
    assert sum("fault point" in out for out in outs) == 1  # only one process ever built
    entry = EngineCache(tmp_path).find("sana-tiny", "vae", 1024, 1024, 2)
    assert entry is not None and EngineCache(tmp_path).problems(entry, deep=True) == []


def test_sigkill_mid_build_leaves_nothing_loadable(tmp_path, export_root):
    proc = _spawn_build(tmp_path, export_root, "after-artifact:120")
    for line in proc.stdout:  # wait until the artifact is written and the build sits in the fault point
        if "fault point" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    cache = EngineCache(tmp_path)
    staged = list(tmp_path.glob("sana-tiny/vae/.tmp-*"))
    assert len(staged) == 1 and any(staged[0].iterdir())  # the half-built artifact exists…
    assert cache.find("sana-tiny", "vae", 1024, 1024, 2) is None  # …and is never found
    assert cache.entries() == []
    (entry,) = _build(tmp_path, export_root, components="vae")  # the lock died with the process
    assert not entry.hit and load_runner(entry) is not None
    assert not list(tmp_path.glob("sana-tiny/vae/.tmp-*"))  # the leftover was cleaned


@pytest.fixture
def one_entry(tmp_path, export_root):
    (entry,) = _build(tmp_path, export_root, components="vae")
    return tmp_path, entry


def test_corrupted_engine_is_detected_refused_and_rebuilt(one_entry, export_root):
    root, entry = one_entry
    data = bytearray(entry.artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    entry.artifact.write_bytes(bytes(data))
    cache = EngineCache(root)
    assert any("corrupt" in p for p in cache.problems(entry, deep=True))
    with pytest.raises(CacheError, match="Refusing to load .*corrupt"):
        load_runner(entry)
    bad = [(e, issues) for e, issues in cache.verify() if issues]
    assert len(bad) == 1
    (rebuilt,) = _build(root, export_root, components="vae")
    assert not rebuilt.hit and rebuilt.key == entry.key and cache.problems(rebuilt, deep=True) == []


def test_truncated_engine_is_a_miss(one_entry):
    root, entry = one_entry
    with open(entry.artifact, "r+b") as f:
        f.truncate(entry.size // 3)
    cache = EngineCache(root)
    assert cache.find("sana-tiny", "vae", 1024, 1024, 2) is None
    assert any("truncated" in p for p in cache.problems(entry))
    with pytest.raises(CacheError, match="truncated"):
        load_runner(entry)


def test_foreign_version_is_refused_and_pruned(one_entry):
    root, entry = one_entry
    meta = json.loads((entry.path / "meta.json").read_text())
    meta["backend_version"] = "0.1.0"
    (entry.path / "meta.json").write_text(json.dumps(meta))
    cache = EngineCache(root)
    assert cache.find("sana-tiny", "vae", 1024, 1024, 2) is None
    with pytest.raises(CacheError, match="foreign version: built with onnxruntime 0.1.0"):
        load_runner(entry)
    removed = cache.prune()
    assert [r for r in removed if "foreign version" in r[1]] and not entry.path.exists()
    assert cache.entries() == []


def test_manifest_is_rebuilt_from_the_folders(one_entry):
    root, entry = one_entry
    (root / "manifest.json").unlink()
    assert EngineCache(root).find("sana-tiny", "vae", 1024, 1024, 2).key == entry.key


def test_resolve_build_and_background(tmp_path, export_root):
    cache = EngineCache(tmp_path)
    kw = dict(backend="onnxruntime", export_root=str(export_root))
    entry = resolve(cache, "sana-tiny", "vae", 768, 1024, 2, policy="build", **kw)
    assert entry is not None and entry.profile.name == "1024"
    assert resolve(cache, "sana-tiny", "transformer", 512, 512, 1, policy="background", **kw) is None
    pending = pending_builds(tmp_path)
    assert len(pending) == 1 and pending[0]["request"]["profiles"] == [512]
    # a second miss while it runs does not start another build
    assert resolve(cache, "sana-tiny", "transformer", 512, 512, 1, policy="background", **kw) is None
    assert len(pending_builds(tmp_path)) == 1
    deadline = time.time() + 120
    while pending_builds(tmp_path) and time.time() < deadline:
        time.sleep(0.5)
    found = cache.find("sana-tiny", "transformer", 512, 512, 1)
    assert found is not None and found.profile.name == "512", Path(pending[0]["log"]).read_text()
    with pytest.raises(SanaDeployError, match="Unknown miss policy"):
        resolve(cache, "sana-tiny", "transformer", 4096, 4096, 1, policy="later")


def test_build_miss_retries_a_refused_dynamic_build_as_static(tmp_path, monkeypatch):
    """A backend that refuses the dynamic profile (aoti's DC-AE on the CPU) gets the static build for a request of
    exactly the base size; other sizes keep the error."""
    import sana_deploy.engines.resolve as resolve_module
    from sana_deploy.engines.backends import EngineBuildError

    calls = []

    def fake_build(**kwargs):
        calls.append(kwargs.get("static", False))
        if not kwargs.get("static"):
            raise EngineBuildError("AOTInductor miscompiled vae [512] with dynamic shapes.")
        return []

    monkeypatch.setattr(resolve_module, "build_engines", fake_build)
    cache = EngineCache(tmp_path)
    with pytest.raises(SanaDeployError, match="Built profile 512 but it does not run vae"):
        resolve(cache, "sana-tiny", "vae", 512, 512, 1, policy="build", backend="aoti")
    assert calls == [False, True]
    calls.clear()
    with pytest.raises(EngineBuildError, match="miscompiled"):
        resolve(cache, "sana-tiny", "vae", 384, 640, 1, policy="build", backend="aoti")
    assert calls == [False]
