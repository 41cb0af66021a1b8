"""The engine cache: ``<root>/<model>/<component>/<key>/{artifact, meta.json}`` plus ``<root>/manifest.json``.

* The key hashes everything that can invalidate an engine (:class:`~sana_deploy.engines.records.CacheKey`).
* Builds happen in a ``.tmp-<key>-…`` staging folder that is renamed into place once the artifact and its
  ``meta.json`` (written last, with the artifact's size and sha256) are complete; a killed build leaves only a
  staging folder, which nothing reads and the next build of that key removes.
* A per-key file lock (``<root>/.locks/<key>.lock``, ``flock``: released when a process dies) makes concurrent
  builds of one key build once; the manifest and shared timing caches are updated under their own locks.
* An entry is loaded only after its checks pass: meta format, artifact size (truncation), sha256 (corruption),
  the running library's version (foreign version) and the device. Lookups do the cheap checks; loading does all.
* ``manifest.json`` is an index for listing and lookup; it is rebuilt from the folders when missing or stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from filelock import FileLock, Timeout

from sana_deploy.contract import SIZE_FREE_COMPONENTS, model_dirname, parse_components
from sana_deploy.engines.profiles import Profile
from sana_deploy.engines.records import META_FILE, META_FORMAT, CacheKey, EngineEntry, read_meta
from sana_deploy.errors import SanaDeployError, fail
from sana_deploy.fileio import write_atomic

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "sana-deploy/engines-manifest/1"
BACKEND_RANK = ("tensorrt", "tensorrt-rtx", "aoti", "onnxruntime")  # preference when the caller names none
_REQUIRED_META = ("key", "artifact", "artifact_bytes", "artifact_sha256", "backend", "backend_version", "device")


class CacheError(SanaDeployError):
    """A cache entry is corrupt, truncated, from another library version or device: it is never loaded."""


@cache
def running_version(backend: str) -> str | None:
    """Version of the backend library this process would load (None when it is not installed)."""
    from sana_deploy.engines.backends import BACKENDS

    b = BACKENDS.get(backend)
    if b is None or not b.available():
        return None
    return b.version()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json_atomic(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True), fsync=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EngineCache:
    """Engines on disk, keyed, locked, verified. ``root`` defaults to ``engines/``."""

    def __init__(self, root: str | Path = "engines") -> None:
        self.root = Path(root)

    # --- paths and locks -----------------------------------------------------------------------------------
    def entry_dir(self, model: str, component: str, key: str) -> Path:
        return self.root / model_dirname(model) / component / key

    def key_lock(self, key: str, timeout: float = -1) -> FileLock:
        (self.root / ".locks").mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / ".locks" / f"{key}.lock"), timeout=timeout)

    def timing_cache_path(self, backend: str, version: str, device: str) -> Path:
        return self.root / ".timing" / f"{backend}-{version}-{device}.cache"

    @contextmanager
    def _manifest_lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".manifest.lock")):
            yield

    # --- manifest ------------------------------------------------------------------------------------------
    def _summary(self, entry: EngineEntry) -> dict:
        m = entry.meta
        keep = ("model", "component", "backend", "backend_version", "device", "precision", "profile", "created")
        return {**{k: m[k] for k in keep}, "dir": str(entry.path.relative_to(self.root)), "bytes": m["artifact_bytes"]}

    def _read_manifest(self) -> dict | None:
        try:
            data = json.loads((self.root / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        return data if data.get("format") == MANIFEST_FORMAT else None

    def _update_manifest(self, add: EngineEntry | None = None, remove: tuple[str, ...] = ()) -> None:
        with self._manifest_lock():
            data = self._read_manifest() or self._scan()
            if add is not None:
                data["entries"][add.key] = self._summary(add)
            for key in remove:
                data["entries"].pop(key, None)
            _write_json_atomic(self.root / MANIFEST, data)

    def _scan(self) -> dict:
        entries = {}
        for meta_path in self.root.glob(f"*/*/*/{META_FILE}"):
            folder = meta_path.parent
            if folder.name.startswith("."):
                continue
            meta = read_meta(folder)
            if meta and meta.get("key") == folder.name:
                try:
                    entries[folder.name] = self._summary(EngineEntry(folder, meta))
                except KeyError:
                    continue
        return {"format": MANIFEST_FORMAT, "entries": entries}

    def rescan(self) -> int:
        """Rebuild the manifest from the entry folders; returns how many entries it lists."""
        with self._manifest_lock():
            data = self._scan()
            _write_json_atomic(self.root / MANIFEST, data)
        return len(data["entries"])

    def _listed(self) -> dict[str, dict]:
        """The manifest's entry summaries by key (rebuilt from the entry folders when the manifest is missing)."""
        data = self._read_manifest()
        if data is None:
            if not self.root.exists():
                return {}
            self.rescan()
            data = self._read_manifest() or {"entries": {}}
        return data["entries"]

    def components(self, model_id: str) -> set[str]:
        """The components this cache lists engines of for ``model_id`` (the manifest only: no entry is read)."""
        model = model_dirname(model_id)
        return {s["component"] for s in self._listed().values() if model_dirname(s["model"]) == model}

    def entries(self) -> list[EngineEntry]:
        """Every entry the manifest lists whose folder still has a meta.json (broken ones included)."""
        out = []
        for key, s in self._listed().items():
            folder = self.root / s["dir"]
            meta = read_meta(folder)
            out.append(EngineEntry(folder, meta if meta else {**s, "key": key, "artifact": "?", "artifact_bytes": 0}))
        return out

    # --- checks --------------------------------------------------------------------------------------------
    def problems(self, entry: EngineEntry, deep: bool = False, device: bool = False) -> list[str]:
        """Why an entry must not be loaded (empty when it may). ``deep`` adds the sha256 check, ``device``
        whether this machine can run it."""
        meta = read_meta(entry.path)
        if meta is None:
            return ["incomplete: meta.json is missing or unreadable"]
        if meta.get("format") != META_FORMAT:
            return [f"foreign format {meta.get('format')!r} (this sana-deploy writes {META_FORMAT!r})"]
        missing = [k for k in _REQUIRED_META if k not in meta]
        if missing:
            return [f"incomplete: meta.json lacks {missing}"]
        issues = []
        artifact = entry.path / meta["artifact"]
        if not artifact.exists():
            return [f"missing artifact {meta['artifact']}"]
        size = artifact.stat().st_size
        if size != meta["artifact_bytes"]:
            issues.append(f"truncated or altered: {size} bytes on disk, {meta['artifact_bytes']} recorded")
        elif deep and sha256_file(artifact) != meta["artifact_sha256"]:
            issues.append("corrupt: sha256 of the artifact does not match meta.json")
        running = running_version(meta["backend"])
        if running is None:
            issues.append(f"backend {meta['backend']} is not installed here")
        elif running != meta["backend_version"]:
            issues.append(f"foreign version: built with {meta['backend']} {meta['backend_version']}, running {running}")
        if device and running is not None:
            from sana_deploy.engines.backends import BACKENDS

            reason = BACKENDS[meta["backend"]].can_run(meta["device"])
            if reason:
                issues.append(f"cannot run here: {reason}")
        return issues

    def verify(self, deep: bool = True) -> list[tuple[EngineEntry, list[str]]]:
        """Every entry with its problems (checksums re-computed when ``deep``)."""
        return [(e, self.problems(e, deep=deep)) for e in self.entries()]

    # --- lookups -------------------------------------------------------------------------------------------
    def lookup(self, key: CacheKey) -> EngineEntry | None:
        """The entry for an exact key if its cheap checks pass (no checksum): the build path's hit test."""
        folder = self.entry_dir(key.model, key.component, key.digest)
        meta = read_meta(folder)
        if meta is None:
            return None
        entry = EngineEntry(folder, meta)
        return None if self.problems(entry) else entry

    def find(
        self,
        model_id: str,
        component: str,
        height: int,
        width: int,
        batch: int,
        backend: str | None = None,
        precision: str | None = None,
    ) -> EngineEntry | None:
        """The engine whose profile covers the request and that runs here, or None (a miss).

        Preference: the given backend/precision; else backend rank (tensorrt, tensorrt-rtx, aoti, onnxruntime),
        then the profile whose opt shape is closest, then the newest.
        """
        component = parse_components(component)[0]
        model = model_dirname(model_id)
        candidates = []
        for key, s in self._listed().items():
            if model_dirname(s["model"]) != model or s["component"] != component:
                continue
            if (backend and s["backend"] != backend) or (precision and s["precision"] != precision):
                continue
            profile = Profile.from_json(s["profile"])
            if not profile.covers(height, width, batch, component):
                continue
            rank = BACKEND_RANK.index(s["backend"]) if s["backend"] in BACKEND_RANK else len(BACKEND_RANK)
            fit = 0.0 if component in SIZE_FREE_COMPONENTS else profile.fit(height, width)
            candidates.append((rank, fit, -time.mktime(time.strptime(s["created"], "%Y-%m-%dT%H:%M:%SZ")), key, s))
        for *_, s in sorted(candidates, key=lambda c: c[:4]):
            entry = EngineEntry(self.root / s["dir"], read_meta(self.root / s["dir"]) or {})
            if entry.meta and not self.problems(entry, device=True):
                return entry
        return None

    # --- writes --------------------------------------------------------------------------------------------
    def staging_dir(self, model: str, component: str, key: str) -> Path:
        parent = self.entry_dir(model, component, key).parent
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-{os.getpid()}-", dir=parent))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
        return staging

    def clean_staging(self, model: str, component: str, key: str) -> int:
        """Remove leftovers of killed builds of ``key`` (call with the key lock held); returns how many."""
        parent = self.entry_dir(model, component, key).parent
        stale = list(parent.glob(f".tmp-{key}-*")) + list(parent.glob(f".old-{key}-*"))
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return len(stale)

    def commit(self, staging: Path, meta: dict) -> EngineEntry:
        """Finish a build: hash the artifact, write meta.json last, rename the folder into place, index it."""
        artifact = staging / meta["artifact"]
        with open(artifact, "rb") as f:
            os.fsync(f.fileno())
        meta = {**meta, "artifact_bytes": artifact.stat().st_size, "artifact_sha256": sha256_file(artifact)}
        _write_json_atomic(staging / META_FILE, meta)
        final = self.entry_dir(meta["model"], meta["component"], meta["key"])
        old = None
        if final.exists():
            old = final.with_name(f".old-{meta['key']}-{os.getpid()}")
            os.replace(final, old)
        os.replace(staging, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        entry = EngineEntry(final, meta)
        self._update_manifest(add=entry)
        return entry

    def remove(self, entry: EngineEntry) -> None:
        with self.key_lock(entry.key):
            if entry.path.exists():
                trash = entry.path.with_name(f".old-{entry.key}-{os.getpid()}")
                os.replace(entry.path, trash)
                shutil.rmtree(trash, ignore_errors=True)
        self._update_manifest(remove=(entry.key,))

    def prune(self, all_entries: bool = False, older_than_days: float | None = None, dry_run: bool = False) -> list:
        """Remove stale entries (any problem, checksums included), leftovers of killed builds, and optionally
        entries unused for ``older_than_days`` or everything. Returns ``[(what, reason)]``."""
        removed: list[tuple[str, str]] = []
        now = time.time()
        for entry, issues in self.verify(deep=True):
            reason = "; ".join(issues) if issues else None
            if reason is None and all_entries:
                reason = "--all"
            if reason is None and older_than_days is not None:
                last = entry.last_used or entry.path.stat().st_mtime
                if now - last > older_than_days * 86400:
                    reason = f"unused for {(now - last) / 86400:.1f} days"
            if reason:
                removed.append((str(entry.path), reason))
                if not dry_run:
                    self.remove(entry)
        for leftover in list(self.root.glob("*/*/.tmp-*")) + list(self.root.glob("*/*/.old-*")):
            key = leftover.name.split("-")[1]
            pid = leftover.name.split("-")[2] if leftover.name.startswith(".tmp-") else None
            lock = self.key_lock(key, timeout=0)
            try:
                with lock:  # a live build holds the lock: leave its staging folder alone
                    removed.append((str(leftover), f"leftover of an interrupted build (pid {pid})"))
                    if not dry_run:
                        shutil.rmtree(leftover, ignore_errors=True)
            except Timeout:  # someone is building that key now
                continue
        if not dry_run:
            self.rescan()
        return removed

    def touch(self, entry: EngineEntry) -> None:
        """Record a use (``last use`` in ``engines list``) without rewriting meta.json."""
        marker = entry.path / ".last_used"
        try:
            marker.touch()
        except OSError:  # a read-only cache still loads
            pass

    def require_loadable(self, entry: EngineEntry) -> None:
        """Raise :class:`CacheError` unless every check passes (checksum included)."""
        issues = self.problems(entry, deep=True, device=True)
        if issues:
            fail(
                f"Refusing to load engine {entry.path}: {'; '.join(issues)}. Rebuild it with `sana-deploy build` "
                f"(a bad entry is rebuilt automatically) or remove it with `sana-deploy engines prune`.",
                CacheError,
            )
