"""A hostile engine cache: whatever manifest.json, meta.json and links inside the folder say, nothing outside it
is read, written, locked or deleted.

Each test puts a read-only sentinel (a folder shaped like an engine entry, with the real artifact's bytes) next
to the cache, runs the commands and library paths that read the cache, and asserts that the sentinel and the
rest of the surrounding folder are unchanged (same files, bytes, modes, mtimes; no new file such as a lock) and
that no file or folder inside the sentinel was opened or listed (``open``/``os.open``/``os.scandir``/
``os.listdir`` are watched).
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from sana_deploy.cli import main
from sana_deploy.engines import CacheError, EngineCache, build_engines, load_runner
from sana_deploy.errors import ShapeError

KEY = "0123456789abcdef01234567"  # well-formed, listed by no entry


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def template(tmp_path_factory, export_root) -> Path:
    """A cache with one real onnxruntime entry (vae, profile 1024), copied by every test."""
    root = tmp_path_factory.mktemp("attack-template") / "cache"
    build_engines("sana-tiny", "1024", components="vae", backend="onnxruntime", engine_dir=root,
                  export_root=export_root, progress=False, say=lambda m: None)  # fmt: skip
    return root


def _snapshot(base: Path, skip: Path) -> dict:
    """Every path under ``base`` except ``skip``: type, mode, size, mtime and content hash (or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for path in [Path(dirpath)] + [Path(dirpath, n) for n in dirnames + filenames]:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = None
            out[str(path.relative_to(base))] = (st.st_mode, st.st_size, st.st_mtime_ns, content)
    return out


class Sentinel:
    """``<tmp>/victim``: a read-only folder shaped like an engine entry (meta.json + the real artifact)."""

    def __init__(self, base: Path, cache: Path, victim: Path, artifact: Path) -> None:
        self.base, self.cache, self.victim, self.artifact = base, cache, victim, artifact
        self.before = _snapshot(base, cache)

    def assert_untouched(self) -> None:
        after = _snapshot(self.base, self.cache)
        added = sorted(set(after) - set(self.before))
        removed = sorted(set(self.before) - set(after))
        assert not added, f"created outside the cache: {added}"
        assert not removed, f"deleted outside the cache: {removed}"
        changed = [p for p in after if after[p] != self.before[p]]
        assert not changed, f"changed outside the cache: {changed}"


@pytest.fixture
def cache_and_sentinel(tmp_path, template):
    """``(root, entry folder, sentinel)``: the template cache copied to ``<tmp>/cache`` next to the sentinel."""
    root = tmp_path / "cache"
    shutil.copytree(template, root, symlinks=True)
    (entry,) = [p.parent for p in root.glob("sana-tiny/vae/*/meta.json")]
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    meta = json.loads((entry / "meta.json").read_text())
    artifact = victim / meta["artifact"]
    shutil.copyfile(entry / meta["artifact"], artifact)  # same bytes: size and sha256 match meta.json
    (victim / "meta.json").write_text(json.dumps(meta))
    (victim / "sub" / "data.bin").write_bytes(b"keep me")
    for path in sorted(victim.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    victim.chmod(0o555)
    sentinel = Sentinel(tmp_path, root, victim, artifact)
    yield root, entry, sentinel
    for path in [victim, *victim.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755)


@pytest.fixture
def opened(monkeypatch):
    """Every path this process opened or listed while the test runs (resolved; descriptors and dir_fd skipped)."""
    seen: list[Path] = []

    def record(path) -> None:  # noqa: ANN001
        if isinstance(path, (str, bytes, os.PathLike)):
            p = Path(os.fsdecode(path))
            seen.append((Path.cwd() / p).resolve() if not p.is_absolute() else p.resolve())

    def wrap(fn, takes_dir_fd: bool = False):  # noqa: ANN001, ANN202
        def watched(path=".", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            result = fn(path, *args, **kwargs)  # only what was opened counts (O_NOFOLLOW on a link fails)
            if not (takes_dir_fd and kwargs.get("dir_fd") is not None):
                record(path)
            return result

        return watched

    monkeypatch.setattr(builtins, "open", wrap(builtins.open))
    monkeypatch.setattr(io, "open", wrap(io.open))
    monkeypatch.setattr(os, "open", wrap(os.open, takes_dir_fd=True))
    monkeypatch.setattr(os, "scandir", wrap(os.scandir))
    monkeypatch.setattr(os, "listdir", wrap(os.listdir))
    return seen


def _assert_safe(sentinel: Sentinel, seen: list[Path]) -> None:
    """Nothing in the sentinel was opened or listed (checked first: the snapshot itself reads it), and nothing
    around the cache changed."""
    victim = sentinel.victim.resolve()
    inside = [p for p in seen if p == victim or victim in p.parents]
    assert not inside, f"opened or listed outside the cache: {inside}"
    sentinel.assert_untouched()


def _write_manifest(root: Path, entries: dict) -> None:
    (root / "manifest.json").write_text(json.dumps({"format": "sana-deploy/engines-manifest/1", "entries": entries}))


def _summary(root: Path, entry: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())["entries"][entry.name]


# --- manifest.json ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute"])
@pytest.mark.parametrize("prune_all", [False, True], ids=["prune", "prune-all"])
def test_prune_never_follows_the_manifest_dir(cache_and_sentinel, opened, absolute, prune_all):
    root, entry, sentinel = cache_and_sentinel
    target = str(sentinel.victim) if absolute else "../victim"
    real = _summary(root, entry)
    # the sentinel listed under the real entry's key and under another well-formed key, bad entries both
    _write_manifest(root, {entry.name: {**real, "dir": target}, KEY: {**real, "dir": target, "bytes": 1}})
    res = _cli("engines", "prune", *(["--all"] if prune_all else []), "--engine-dir", str(root))
    assert res.exit_code == 0, res.output
    _assert_safe(sentinel, opened)
    # prune acted inside the cache only: the real entry goes with --all and stays otherwise
    assert entry.exists() is not prune_all
    assert json.loads((root / "manifest.json").read_text())["entries"].keys() == (set() if prune_all else {entry.name})


@pytest.mark.parametrize(
    "bad_key",
    ["../../X", "../victim", "a/b", "..", "/ABSOLUTE/k"],
    ids=["dotdot-up", "dotdot-victim", "slash", "dotdot", "absolute"],
)
def test_manifest_keys_with_dotdot_and_slash(cache_and_sentinel, opened, bad_key):
    root, entry, sentinel = cache_and_sentinel
    key = bad_key.replace("/ABSOLUTE", str(sentinel.victim))  # an absolute key would put the lock in the sentinel
    real = _summary(root, entry)
    _write_manifest(root, {key: {**real, "dir": key}, entry.name: real})
    res = _cli("engines", "list", "--engine-dir", str(root))
    assert res.exit_code == 0 and entry.name[:12] in res.output, res.output
    res = _cli("engines", "verify", "--engine-dir", str(root))
    assert res.exit_code == 0 and "1 ok, 0 bad" in res.output, res.output
    res = _cli("engines", "inspect", "--engine-dir", str(root))
    assert res.exit_code == 0 and '"checks": "ok"' in res.output, res.output
    assert EngineCache(root).find("sana-tiny", "vae", 1024, 1024, 1).key == entry.name
    for args in (["prune"], ["prune", "--all"]):
        res = _cli("engines", *args, "--engine-dir", str(root))
        assert res.exit_code == 0, res.output
    assert not entry.exists()  # --all removed the real entry, inside the cache
    assert not list((root / ".locks").glob("*..*")) and not (sentinel.base / "X.lock").exists()
    _assert_safe(sentinel, opened)


@pytest.mark.parametrize(
    "manifest",
    [
        [],
        {"format": "sana-deploy/engines-manifest/1", "entries": []},
        {"format": "sana-deploy/engines-manifest/1", "entries": {KEY: "x"}},
        {"format": "sana-deploy/engines-manifest/1", "entries": {KEY: {"model": 1, "component": ["vae"]}}},
        "not json {",
    ],
    ids=["list", "entries-list", "entry-string", "wrong-field-types", "not-json"],
)
def test_a_manifest_with_wrong_types_is_rebuilt_from_the_folders(cache_and_sentinel, manifest):
    root, entry, sentinel = cache_and_sentinel
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (root / "manifest.json").write_text(text)
    res = _cli("engines", "list", "--engine-dir", str(root))
    assert res.exit_code == 0 and entry.name[:12] in res.output, res.output
    assert (root / "manifest.json").read_text() == text  # listing never writes
    res = _cli("engines", "verify", "--engine-dir", str(root))
    assert res.exit_code == 0 and "1 ok, 0 bad" in res.output, res.output
    assert EngineCache(root).find("sana-tiny", "vae", 1024, 1024, 1).key == entry.name
    res = _cli("engines", "prune", "--engine-dir", str(root))
    assert res.exit_code == 0 and entry.exists(), res.output
    assert json.loads((root / "manifest.json").read_text())["entries"].keys() == {entry.name}  # repaired
    sentinel.assert_untouched()


# --- meta.json ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute"])
def test_meta_artifact_outside_the_entry_is_refused(cache_and_sentinel, opened, absolute):
    """The artifact named by a path (relative escape or absolute) with the sentinel's matching size and sha256."""
    root, entry, sentinel = cache_and_sentinel
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["artifact_bytes"] == sentinel.artifact.stat().st_size  # the sentinel would pass a size/hash check
    (entry / meta["artifact"]).unlink()
    escape = str(sentinel.artifact) if absolute else os.path.relpath(sentinel.artifact, entry)
    (entry / "meta.json").write_text(json.dumps({**meta, "artifact": escape}))

    res = _cli("engines", "verify", "--engine-dir", str(root))
    assert res.exit_code == 1 and "is not a file name inside the entry's folder" in res.output, res.output
    res = _cli("engines", "list", "--engine-dir", str(root))
    assert res.exit_code == 0 and entry.name[:12] in res.output, res.output
    res = _cli("engines", "inspect", entry.name[:8], "--engine-dir", str(root))
    assert res.exit_code == 0 and "is not a file name inside" in res.output and "artifact_says" not in res.output

    # what generate runs: the engine provider's lookup (resolve + load_runner) never picks or loads it
    from sana_deploy.runtime.providers import EngineStages

    cache = EngineCache(root)
    assert cache.find("sana-tiny", "vae", 1024, 1024, 1) is None
    stages = EngineStages(cache, "sana-tiny", policy="error", backend="onnxruntime")
    with pytest.raises(ShapeError, match="No engine in .* covers vae"):
        stages.runner("vae", 1024, 1024, 1)
    with pytest.raises(CacheError, match="is not a file name inside the entry's folder"):
        load_runner(entry)
    with pytest.raises(CacheError, match="is not a file name inside the entry's folder"):
        load_runner(cache.entries()[0])

    res = _cli("engines", "prune", "--engine-dir", str(root))
    assert res.exit_code == 0 and not entry.exists(), res.output
    _assert_safe(sentinel, opened)


# --- links --------------------------------------------------------------------------------------------------------
def _link_artifact(entry: Path, sentinel: Sentinel) -> str:
    name = json.loads((entry / "meta.json").read_text())["artifact"]
    (entry / name).unlink()
    (entry / name).symlink_to(sentinel.artifact)  # same bytes: size and sha256 match
    return "links leading outside the engine cache"


def _link_meta(entry: Path, sentinel: Sentinel) -> str:
    (entry / "meta.json").unlink()
    (entry / "meta.json").symlink_to(sentinel.victim / "meta.json")
    return "meta.json is missing or unreadable"


def _link_marker(entry: Path, sentinel: Sentinel) -> str:
    (entry / ".last_used").symlink_to(sentinel.victim / "sub" / "data.bin")
    return "links leading outside the engine cache"


def _link_subfolder(entry: Path, sentinel: Sentinel) -> str:
    (entry / "ort_trt_cache").symlink_to(sentinel.victim / "sub")  # where the TensorRT EP would write
    return "links leading outside the engine cache"


@pytest.mark.parametrize("make_link", [_link_artifact, _link_meta, _link_marker, _link_subfolder],
                         ids=["artifact", "meta", "last-used", "subfolder"])  # fmt: skip
def test_a_link_inside_an_entry_pointing_outside(cache_and_sentinel, opened, make_link):
    root, entry, sentinel = cache_and_sentinel
    problem = make_link(entry, sentinel)
    res = _cli("engines", "verify", "--engine-dir", str(root))
    assert res.exit_code == 1 and problem in res.output, res.output
    res = _cli("engines", "list", "--engine-dir", str(root))
    assert res.exit_code == 0, res.output
    res = _cli("engines", "inspect", "--engine-dir", str(root))
    assert res.exit_code == 0 and problem in res.output and "artifact_says" not in res.output, res.output
    assert EngineCache(root).find("sana-tiny", "vae", 1024, 1024, 1) is None
    with pytest.raises(CacheError, match=problem):
        load_runner(entry)
    res = _cli("engines", "prune", "--engine-dir", str(root))
    assert res.exit_code == 0 and not entry.exists(), res.output  # the link was removed, never its target
    _assert_safe(sentinel, opened)


def test_linked_entry_and_component_folders_are_never_entered(cache_and_sentinel, opened):
    """An entry folder that is a link, and a component folder that is a link, to copies outside the cache."""
    root, entry, sentinel = cache_and_sentinel
    outside_entry = sentinel.victim / "sub" / "copy"
    outside_entry.parent.chmod(0o755)
    shutil.copytree(entry, outside_entry)
    outside_comp = sentinel.base / "comp"
    shutil.copytree(entry.parent, outside_comp, symlinks=True)
    for path in [outside_entry, *outside_entry.rglob("*"), outside_comp, *outside_comp.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    outside_entry.parent.chmod(0o555)
    sentinel.before = _snapshot(sentinel.base, sentinel.cache)
    shutil.rmtree(entry)
    entry.symlink_to(outside_entry)  # the entry folder itself
    (root / "sana-tiny" / "text_encoder").symlink_to(outside_comp)  # a whole component folder
    (root / "manifest.json").unlink()  # listing must rebuild the index without following either link
    opened.clear()  # the set-up above wrote the copies

    res = _cli("engines", "verify", "--engine-dir", str(root))
    assert res.exit_code == 1 and "leads outside the engine cache" in res.output, res.output
    assert EngineCache(root).find("sana-tiny", "vae", 1024, 1024, 1) is None
    with pytest.raises(CacheError, match="leads outside the engine cache"):
        load_runner(entry)
    for args in (["prune"], ["prune", "--all"]):
        res = _cli("engines", *args, "--engine-dir", str(root))
        assert res.exit_code == 0, res.output
    assert not os.path.lexists(entry)  # the link itself was removed
    _assert_safe(sentinel, opened)
    for p in [outside_comp, *outside_comp.rglob("*")]:
        p.chmod(0o755)


def test_linked_cache_folders_are_refused_not_followed(cache_and_sentinel, export_root, opened):
    """``.locks`` and ``.pending`` as links outside, and ``manifest.json`` as a link to a file outside."""
    from sana_deploy.engines.resolve import start_background

    root, entry, sentinel = cache_and_sentinel
    shutil.rmtree(root / ".locks", ignore_errors=True)
    (root / ".locks").symlink_to(sentinel.victim / "sub")
    with pytest.raises(CacheError, match=r"\.locks leads outside the engine cache"):
        build_engines("sana-tiny", "512", components="vae", backend="onnxruntime", engine_dir=root,
                      export_root=export_root, progress=False, say=lambda m: None)  # fmt: skip
    (root / ".locks").unlink()
    (root / ".pending").symlink_to(sentinel.victim / "sub")
    with pytest.raises(CacheError, match=r"\.pending leads outside the engine cache"):
        start_background(root, {"model": "sana-tiny", "profiles": [512], "components": ["vae"], "max_batch": 1})
    (root / "manifest.json").unlink()
    (root / "manifest.json").symlink_to(sentinel.victim / "meta.json")
    res = _cli("engines", "prune", "--engine-dir", str(root))
    assert res.exit_code == 0 and entry.exists(), res.output
    assert not (root / ".pending").exists() and not (root / "manifest.json").is_symlink()  # links replaced
    _assert_safe(sentinel, opened)
