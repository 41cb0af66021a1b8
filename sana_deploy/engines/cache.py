"""The engine cache: ``<root>/<model>/<component>/<key>/{artifact, meta.json}`` plus ``<root>/manifest.json``.

* The key hashes everything that can invalidate an engine (:class:`~sana_deploy.engines.records.CacheKey`).
* Builds happen in a ``.tmp-<key>-…`` staging folder that is renamed into place once the artifact and its
  ``meta.json`` (written last, with the artifact's size and sha256) are complete. A failed build removes its
  staging folder; a killed one leaves it, and the next build or ``prune`` removes it (unless a live build holds
  that key's lock).
* A per-key file lock (``<root>/.locks/<key>.lock``, ``flock``: released when a process dies) makes concurrent
  builds of one key build once; the manifest and shared timing caches are updated under their own locks.
* An entry is loaded only after its checks pass: meta format and fields, artifact size (truncation), sha256
  (corruption), the running library's version (foreign version) and the device. Lookups do the cheap checks;
  loading does all.
* ``manifest.json`` is an index for listing and lookup; it is rebuilt from the folders when missing, stale or
  malformed. Reading commands never write: they use the rebuilt index in memory.
* Trust: nothing read from the folder names a path. Entry folders are ``root / model / component / key`` from
  validated names, artifacts are plain file names inside them, and every path is checked to lie inside the root
  after resolving links before anything is read, written, locked or deleted (docs/ENGINES.md, "Trust model").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from filelock import FileLock, Timeout

from sana_deploy.contract import ALL_COMPONENTS, SIZE_FREE_COMPONENTS, model_dirname, parse_components
from sana_deploy.engines.profiles import Profile
from sana_deploy.engines.records import (
    CREATED_FORMAT,
    META_FILE,
    CacheError,
    CacheKey,
    EngineEntry,
    check_component,
    check_key,
    check_model_dir,
    is_key,
    is_plain_name,
    meta_problem,
    profile_problem,
    read_json_object,
    read_meta,
)
from sana_deploy.errors import fail
from sana_deploy.export.quantized import QUANT_MODES
from sana_deploy.fileio import write_atomic

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "sana-deploy/engines-manifest/1"
MANIFEST_MAX_BYTES = 256 << 20
PENDING = ".pending"  # records and logs of background builds
BACKEND_RANK = ("tensorrt", "tensorrt-rtx", "aoti", "onnxruntime")  # preference when the caller names none
_TAG = re.compile(r"[0-9a-f]{16}")  # a background build's tag (sana_deploy.engines.resolve.start_background)
_SUMMARY_STR = ("model", "component", "backend", "backend_version", "device", "precision", "created")

__all__ = ["CacheError", "EngineCache", "pid_alive", "running_version", "sha256_file"]


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


def _subdirs(folder: Path) -> list[Path]:
    """The visible real subfolders of ``folder`` (a link to a folder is not one: it is never descended)."""
    try:
        with os.scandir(folder) as it:
            return sorted(Path(e.path) for e in it if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _names(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _delete(path: Path) -> None:
    """Remove ``path`` itself: a link or file is unlinked (a link's target is never touched), a folder removed
    with its contents (``shutil.rmtree`` unlinks links inside it without following them)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class EngineCache:
    """Engines on disk, keyed, locked, verified. ``root`` defaults to ``engines/``.

    Constructing one creates nothing: reading (``entries``, ``verify``, ``find``) never writes, and the folder is
    created by the first write (a build). A ``root`` that exists and is not a folder is a :class:`CacheError`."""

    def __init__(self, root: str | Path = "engines") -> None:
        self.root = Path(root)
        self._check_root()

    def _check_root(self) -> None:
        try:
            not_a_folder = os.path.lexists(self.root) and not self.root.is_dir()
        except OSError:  # cannot even look: the first real access says why
            return
        if not_a_folder:
            fail(
                f"The engine cache {self.root} is not a folder (a file, or a link to nothing). Pass --engine-dir a "
                f"folder (a missing one is created by the first build).",
                CacheError,
            )

    # --- confinement ---------------------------------------------------------------------------------------
    def _real_root(self) -> Path:
        return self.root.resolve()

    def is_confined(self, path: str | Path) -> bool:
        """Whether ``path``, links resolved, is the cache root or lies inside it."""
        try:
            real, root = Path(path).resolve(), self._real_root()
        except (OSError, RuntimeError):  # a link loop
            return False
        return real == root or root in real.parents

    def confined(self, path: str | Path) -> Path:
        """``path`` if, links resolved, it lies inside the cache root; else :class:`CacheError`."""
        if not self.is_confined(path):
            fail(
                f"{path} leads outside the engine cache {self.root} (a link, or a path in its files): the cache "
                f"never acts on anything outside its folder. Remove that link or entry (`sana-deploy engines prune` "
                f"removes bad entries).",
                CacheError,
            )
        return Path(path)

    def _location_ok(self, path: Path) -> bool:
        """Whether the folder holding ``path`` lies inside the root (``path`` itself may be a link)."""
        return self.is_confined(path.parent)

    @contextmanager
    def _writes(self, action: str) -> Iterator[None]:
        """Turn a failed write of the cache's own files into a :class:`CacheError` that says what to do."""
        try:
            yield
        except Timeout:  # a TimeoutError, so an OSError: another process holds the lock, nothing failed
            raise
        except OSError as exc:
            reason = exc.strerror or str(exc)
            fail(
                f"Cannot {action} in the engine cache {self.root}: {reason}. Use a writable --engine-dir (or fix the "
                f"folder's permissions).",
                CacheError,
            )

    def _ensure_root(self) -> None:
        self._check_root()
        with self._writes("create the folder"):
            self.root.mkdir(parents=True, exist_ok=True)

    def check_writable(self) -> None:
        """Create the root if needed and prove it can be written (a probe file, removed at once): a build fails
        here, before anything is exported or built, when the cache is read-only."""
        self._ensure_root()
        with self._writes("write"):
            fd, name = tempfile.mkstemp(prefix=".tmp-probe-", dir=self.root)
            os.close(fd)
            os.unlink(name)

    def _dot_dir(self, name: str) -> Path:
        """``<root>/<name>`` (``.locks``, ``.timing``, ``.pending``), created on demand and checked to stay inside."""
        folder = self.confined(self.root / name)
        self._ensure_root()
        with self._writes(f"create {name}"):
            folder.mkdir(exist_ok=True)
        return self.confined(folder)

    # --- paths and locks -----------------------------------------------------------------------------------
    def entry_dir(self, model: str, component: str, key: str) -> Path:
        """``<root>/<model folder>/<component>/<key>``, each part validated (:class:`CacheError` otherwise)."""
        return self.root / check_model_dir(model_dirname(model)) / check_component(component) / check_key(key)

    @contextmanager
    def key_lock(self, key: str, timeout: float = -1) -> Iterator[None]:
        """Hold ``key``'s build lock (``filelock.Timeout`` when ``timeout`` passes first)."""
        with self._lock(f"{check_key(key)}.lock", timeout):
            yield

    @contextmanager
    def _lock(self, name: str, timeout: float = -1) -> Iterator[None]:
        lock = FileLock(str(self._dot_dir(".locks") / name), timeout=timeout)  # FileLock opens with O_NOFOLLOW
        with self._writes(f"lock {name}"):
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def timing_cache_path(self, backend: str, version: str, device: str) -> Path:
        name = f"{backend}-{version}-{device}.cache"
        if not is_plain_name(name):
            fail(f"Cannot name a timing cache {name!r}.", CacheError)
        return self.confined(self._dot_dir(".timing") / name)

    @contextmanager
    def _manifest_lock(self) -> Iterator[None]:
        self._ensure_root()
        lock = FileLock(str(self.root / ".manifest.lock"))
        with self._writes("lock the manifest"):
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    # --- manifest ------------------------------------------------------------------------------------------
    def _rel_dir(self, model: str, component: str, key: str) -> str:
        return str(self.entry_dir(model, component, key).relative_to(self.root))

    def _summary(self, entry: EngineEntry) -> dict:
        m = entry.meta
        keep = ("model", "component", "backend", "backend_version", "device", "precision", "profile", "created")
        return {
            **{k: m[k] for k in keep},
            "dir": self._rel_dir(m["model"], m["component"], m["key"]),  # for people: never read back as a path
            "bytes": m["artifact_bytes"],
        }

    def _summary_ok(self, key: object, s: object) -> bool:
        """Whether a manifest line has the form this cache writes (its ``dir`` must be the one derived from it)."""
        if not is_key(key) or not isinstance(s, dict):
            return False
        if not all(isinstance(s.get(k), str) for k in _SUMMARY_STR) or s["component"] not in ALL_COMPONENTS:
            return False
        if not is_plain_name(model_dirname(s["model"])) or not isinstance(s.get("bytes"), int):
            return False
        if profile_problem(s.get("profile"), s["component"]) is not None:
            return False
        try:
            time.strptime(s["created"], CREATED_FORMAT)
        except ValueError:
            return False
        return s.get("dir", None) in (None, self._rel_dir(s["model"], s["component"], key))

    def _read_manifest(self) -> dict | None:
        """The manifest if it is one this cache wrote (format, every line well-formed); None otherwise."""
        if not self.is_confined(self.root / MANIFEST):
            return None
        data = read_json_object(self.root / MANIFEST, MANIFEST_MAX_BYTES)
        if data is None or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("entries"), dict):
            return None
        if not all(self._summary_ok(k, s) for k, s in data["entries"].items()):
            return None
        return data

    def _update_manifest(self, add: EngineEntry | None = None, remove: tuple[str, ...] = ()) -> None:
        with self._manifest_lock():
            data = self._read_manifest() or self._scan()
            if add is not None:
                data["entries"][add.key] = self._summary(add)
            for key in remove:
                data["entries"].pop(key, None)
            with self._writes("write manifest.json"):
                _write_json_atomic(self.root / MANIFEST, data)

    def _entry_folders(self) -> Iterator[tuple[str, str, Path]]:
        """``(model folder, component, entry folder)`` of everything at the entry depth whose name is a key.
        Model and component folders are descended only when they are real folders (never through a link); a
        key-named link at the entry depth is yielded (as a bad entry), not followed."""
        for model_dir in _subdirs(self.root):
            if not is_plain_name(model_dir.name):
                continue
            for comp_dir in _subdirs(model_dir):
                if comp_dir.name not in ALL_COMPONENTS:
                    continue
                for name in _names(comp_dir):
                    if is_key(name):
                        yield model_dir.name, comp_dir.name, comp_dir / name

    def _scan(self) -> dict:
        """The manifest rebuilt from the entry folders (only entries whose meta.json is well-formed and agrees
        with the folder it is in)."""
        entries = {}
        for model, component, folder in self._entry_folders():
            meta = self._read_entry_meta(folder)
            if meta is None or model_dirname(meta["model"]) != model or meta["component"] != component:
                continue
            entries[folder.name] = self._summary(EngineEntry(folder, meta))
        return {"format": MANIFEST_FORMAT, "entries": entries}

    def rescan(self) -> int:
        """Rebuild the manifest from the entry folders; returns how many entries it lists."""
        with self._manifest_lock():
            data = self._scan()
            with self._writes("write manifest.json"):
                _write_json_atomic(self.root / MANIFEST, data)
        return len(data["entries"])

    def _listed(self) -> dict[str, dict]:
        """The manifest's entry summaries by key (rebuilt in memory from the folders when the manifest is
        missing or malformed; reading never writes)."""
        data = self._read_manifest()
        if data is None:
            if not self.root.is_dir():
                return {}
            data = self._scan()
        return data["entries"]

    def components(self, model_id: str) -> set[str]:
        """The components this cache lists engines of for ``model_id`` (the manifest only: no entry is read)."""
        model = model_dirname(model_id)
        return {s["component"] for s in self._listed().values() if model_dirname(s["model"]) == model}

    def _read_entry_meta(self, folder: Path) -> dict | None:
        """``folder``'s meta.json if the folder lies inside the cache and the file is well-formed for it."""
        if not self.is_confined(folder):
            return None
        meta = read_meta(folder)
        return meta if meta is not None and meta_problem(meta, folder.name) is None else None

    def entry_at(self, folder: str | Path, fallback: dict | None = None) -> EngineEntry:
        """The entry in ``folder``; when its meta.json is missing, malformed or outside the cache, an entry with
        ``fallback`` fields (what the manifest says), which :meth:`problems` reports as bad."""
        folder = Path(folder)
        meta = self._read_entry_meta(folder)
        if meta is not None:
            return EngineEntry(folder, meta)
        return EngineEntry(folder, {**(fallback or {}), "key": folder.name, "artifact": "?", "artifact_bytes": 0})

    def entries(self) -> list[EngineEntry]:
        """Every entry the manifest lists, and every key-named folder it does not (broken ones included)."""
        listed = self._listed()
        out = [self.entry_at(self.entry_dir(s["model"], s["component"], k), s) for k, s in listed.items()]
        for model, component, folder in self._entry_folders() if self.root.is_dir() else ():
            if folder.name not in listed:
                out.append(self.entry_at(folder, {"model": model, "component": component}))
        return out

    # --- checks --------------------------------------------------------------------------------------------
    def _links_out(self, folder: Path) -> list[str]:
        """Names of links inside ``folder`` (at any depth) that lead outside the cache."""
        out = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                if path.is_symlink() and not self.is_confined(path):
                    out.append(str(path.relative_to(folder)))
        return out

    def problems(self, entry: EngineEntry, deep: bool = False, device: bool = False) -> list[str]:
        """Why an entry must not be loaded (empty when it may). ``deep`` adds the sha256 check, ``device``
        whether this machine can run it. Nothing outside the cache is read: the entry folder, its meta.json and
        its artifact are checked to lie inside it first."""
        if not self.is_confined(entry.path):
            return ["the entry folder leads outside the engine cache (a link): it is never read"]
        if not is_key(entry.path.name):
            return [f"{entry.path.name!r} is not an entry folder (its name must be the cache key)"]
        meta = read_meta(entry.path)
        if meta is None:
            return ["incomplete: meta.json is missing or unreadable"]
        if problem := meta_problem(meta, entry.path.name):
            return [problem]
        if links := self._links_out(entry.path):
            return [f"links leading outside the engine cache: {', '.join(links[:5])} (they are never followed)"]
        artifact = entry.path / meta["artifact"]
        try:
            st = os.stat(artifact)
        except OSError:
            return [f"missing artifact {meta['artifact']}"]
        if not stat.S_ISREG(st.st_mode):
            return [f"artifact {meta['artifact']} is not a regular file"]
        issues = []
        if st.st_size != meta["artifact_bytes"]:
            issues.append(f"truncated or altered: {st.st_size} bytes on disk, {meta['artifact_bytes']} recorded")
        elif deep:
            try:
                if sha256_file(artifact) != meta["artifact_sha256"]:
                    issues.append("corrupt: sha256 of the artifact does not match meta.json")
            except OSError as exc:
                issues.append(f"unreadable artifact: {exc.strerror or exc}")
            issues += self._refit_problems(entry.path, meta)
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

    @staticmethod
    def _refit_problems(folder: Path, meta: dict) -> list[str]:
        """A weight-stripped plan refits from the ONNX kept in its entry (``refit/``), and a LoRA-swappable engine
        reads its base weights there: the copy is checked against the key."""
        if not meta.get("flags", {}).get("strip_weights") and not meta.get("refit_files"):
            return []
        files = meta.get("refit_files") or []
        if not files:
            return ["weight-stripped plan without its refit ONNX in the entry (built by an older sana-deploy)"]
        from sana_deploy.export.exporter import _sha256_files

        try:
            ok = _sha256_files(folder / "refit", files) == meta.get("onnx_sha256")
        except OSError:
            ok = False
        return [] if ok else ["the refit ONNX in refit/ does not match the onnx_sha256 in meta.json"]

    def verify(self, deep: bool = True) -> list[tuple[EngineEntry, list[str]]]:
        """Every entry with its problems (checksums re-computed when ``deep``)."""
        return [(e, self.problems(e, deep=deep)) for e in self.entries()]

    # --- lookups -------------------------------------------------------------------------------------------
    def lookup(self, key: CacheKey) -> EngineEntry | None:
        """The entry for an exact key if its cheap checks pass (no checksum): the build path's hit test."""
        folder = self.entry_dir(key.model, key.component, key.digest)
        meta = self._read_entry_meta(folder)
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

        Preference: the given backend/precision (quantized int8/fp8 engines only when ``precision`` names them);
        else backend rank (tensorrt, tensorrt-rtx, aoti, onnxruntime),
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
            if not precision and s["precision"] in QUANT_MODES:  # quantized engines only when asked for by name
                continue
            profile = Profile.from_json(s["profile"])
            if not profile.covers(height, width, batch, component):
                continue
            rank = BACKEND_RANK.index(s["backend"]) if s["backend"] in BACKEND_RANK else len(BACKEND_RANK)
            fit = 0.0 if component in SIZE_FREE_COMPONENTS else profile.fit(height, width)
            candidates.append((rank, fit, -time.mktime(time.strptime(s["created"], CREATED_FORMAT)), key, s))
        for *_, key, s in sorted(candidates, key=lambda c: c[:4]):
            folder = self.entry_dir(s["model"], s["component"], key)
            meta = self._read_entry_meta(folder)
            if meta is None:
                continue
            entry = EngineEntry(folder, meta)
            if not self.problems(entry, device=True):
                return entry
        return None

    # --- writes --------------------------------------------------------------------------------------------
    def staging_dir(self, model: str, component: str, key: str) -> Path:
        parent = self.entry_dir(model, component, key).parent
        self.confined(parent)
        self._ensure_root()
        with self._writes("create a staging folder"):
            parent.mkdir(parents=True, exist_ok=True)
            self.confined(parent)  # a link created meanwhile
            staging = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-{os.getpid()}-", dir=parent))
            staging.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
        return staging

    def discard(self, staging: Path) -> None:
        """Remove a staging folder of a build that failed (it never becomes an entry)."""
        if staging.name.startswith(".tmp-") and self._location_ok(staging):
            _delete(staging)

    def clean_staging(self, model: str, component: str, key: str) -> int:
        """Remove leftovers of killed builds of ``key`` (call with the key lock held); returns how many."""
        parent = self.entry_dir(model, component, key).parent
        if not self.is_confined(parent):
            return 0
        stale = [n for n in _names(parent) if n.startswith((f".tmp-{key}-", f".old-{key}-"))]
        for name in stale:
            _delete(parent / name)
        return len(stale)

    def commit(self, staging: Path, meta: dict) -> EngineEntry:
        """Finish a build: hash the artifact, write meta.json last, rename the folder into place, index it."""
        final = self.entry_dir(meta["model"], meta["component"], meta["key"])
        self.confined(staging)
        self.confined(final.parent)
        if not is_plain_name(meta["artifact"]):
            fail(f"A backend named its artifact {meta['artifact']!r}; it must be a file name.", CacheError)
        artifact = staging / meta["artifact"]
        with open(artifact, "rb") as f:
            os.fsync(f.fileno())
        meta = {**meta, "artifact_bytes": artifact.stat().st_size, "artifact_sha256": sha256_file(artifact)}
        if problem := meta_problem(meta, final.name):
            fail(f"Refusing to commit {final.name}: {problem}.", CacheError)
        with self._writes("commit an engine"):
            _write_json_atomic(staging / META_FILE, meta)
            old = None
            if os.path.lexists(final):
                old = final.with_name(f".old-{meta['key']}-{os.getpid()}")
                os.replace(final, old)
            os.replace(staging, final)
        if old is not None:
            _delete(old)
        entry = EngineEntry(final, meta)
        self._update_manifest(add=entry)
        return entry

    def remove(self, entry: EngineEntry) -> None:
        """Delete an entry's folder (a link there is unlinked, never followed) and drop it from the manifest."""
        key = check_key(entry.path.name)
        if not self._location_ok(entry.path):
            fail(
                f"Not removing {entry.path}: it is reached through a link leading outside the engine cache. Remove "
                f"that link yourself.",
                CacheError,
            )
        with self.key_lock(key):
            if os.path.lexists(entry.path):
                with self._writes("remove an entry"):
                    if entry.path.is_symlink():
                        entry.path.unlink()
                    else:
                        trash = entry.path.with_name(f".old-{key}-{os.getpid()}")
                        os.replace(entry.path, trash)
                        _delete(trash)
        self._update_manifest(remove=(key,))

    def prune(self, all_entries: bool = False, older_than_days: float | None = None, dry_run: bool = False) -> list:
        """Remove stale entries (any problem, checksums included), leftovers of killed builds and finished
        background builds, and optionally entries unused for ``older_than_days`` or everything. Returns
        ``[(what, reason)]``."""
        removed: list[tuple[str, str]] = []
        now = time.time()
        for entry, issues in self.verify(deep=True):
            reason = "; ".join(issues) if issues else None
            if reason is None and all_entries:
                reason = "--all"
            if reason is None and older_than_days is not None:
                last = entry.last_used or os.lstat(entry.path).st_mtime
                if now - last > older_than_days * 86400:
                    reason = f"unused for {(now - last) / 86400:.1f} days"
            if not reason:
                continue
            if dry_run:
                removed.append((str(entry.path), reason))
                continue
            try:
                self.remove(entry)
            except CacheError as exc:
                removed.append((str(entry.path), f"NOT removed: {exc}"))
            else:
                removed.append((str(entry.path), reason))
        removed += self.clean_leftovers(dry_run)
        if not dry_run and self.root.is_dir():
            data = self._scan()
            if self._read_manifest() != data and (data["entries"] or os.path.lexists(self.root / MANIFEST)):
                self.rescan()
        return removed

    def clean_leftovers(self, dry_run: bool = False) -> list[tuple[str, str]]:
        """Remove what interrupted work left: staging (``.tmp-<key>-…``) and trash (``.old-<key>-…``) folders
        whose key no live build holds, temporary manifest files, and records and logs of background builds
        that are no longer running. Run by ``prune`` and before every build. Returns ``[(what, reason)]``."""
        removed: list[tuple[str, str]] = []
        if not self.root.is_dir():
            return removed
        for model_dir in _subdirs(self.root):
            for comp_dir in _subdirs(model_dir):
                for name in _names(comp_dir):
                    parts = name.split("-")
                    if not name.startswith((".tmp-", ".old-")) or len(parts) < 3 or not is_key(parts[1]):
                        continue
                    try:
                        with self.key_lock(parts[1], timeout=0):  # a live build holds it: leave its folder alone
                            removed.append((str(comp_dir / name), f"leftover of an interrupted build (pid {parts[2]})"))
                            if not dry_run:
                                _delete(comp_dir / name)
                    except Timeout:
                        continue
        temps = [n for n in _names(self.root) if n.startswith(f".tmp-{MANIFEST}-")]
        if temps:
            with self._manifest_lock():
                for name in temps:
                    removed.append((str(self.root / name), "temporary file of an interrupted manifest update"))
                    if not dry_run:
                        _delete(self.root / name)
        removed += self._clean_pending(dry_run)
        return removed

    # --- background-build records ----------------------------------------------------------------------------
    def _pending_path(self, tag: str, suffix: str) -> Path:
        if not isinstance(tag, str) or _TAG.fullmatch(tag) is None:
            fail(f"{tag!r} is not a background-build tag (16 hex digits).", CacheError)
        return self._dot_dir(PENDING) / f"{tag}{suffix}"

    @contextmanager
    def pending_lock(self) -> Iterator[None]:
        """Held while a background build's record is started, read for a restart, finished or cleaned."""
        with self._lock("pending.lock"):
            yield

    def read_pending(self, tag: str) -> dict | None:
        """The record of background build ``tag`` if it is well-formed (a truncated or edited one is None).
        Its ``log`` is derived from the tag, never read from the record."""
        folder = self.root / PENDING
        if not _TAG.fullmatch(tag) or not folder.is_dir() or not self.is_confined(folder):
            return None
        record = read_json_object(folder / f"{tag}.json", 1 << 20)
        if record is None or record.get("tag") != tag or not isinstance(record.get("request"), dict):
            return None
        pid = record.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return None
        return {**record, "log": str(folder / f"{tag}.log")}

    def pending_records(self) -> list[dict]:
        """Every well-formed background-build record (running or not)."""
        folder = self.root / PENDING
        if not folder.is_dir() or not self.is_confined(folder):
            return []
        tags = [n[: -len(".json")] for n in _names(folder) if n.endswith(".json")]
        return [r for r in map(self.read_pending, tags) if r is not None]

    def pending_log(self, tag: str) -> Path:
        """Where background build ``tag`` writes its output (``.pending/<tag>.log``)."""
        return self._pending_path(tag, ".log")

    def open_pending_log(self, tag: str) -> int:
        """A file descriptor appending to :meth:`pending_log` (opened with ``O_NOFOLLOW``: never through a link)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        with self._writes("open a build log"):
            return os.open(self.pending_log(tag), flags, 0o644)

    def write_pending(self, tag: str, record: dict) -> None:
        """Record a started background build (hold :meth:`pending_lock`)."""
        path = self._pending_path(tag, ".json")
        with self._writes("record a background build"):
            write_atomic(path, json.dumps({**record, "tag": tag}, default=str))

    def finish_pending(self, tag: str, pid: int, ok: bool) -> None:
        """Called by background build ``tag`` (process ``pid``) when it ends: its record is removed, and its log
        too when it succeeded (a failed build's log stays until the next build or prune)."""
        with self.pending_lock():
            record = self.read_pending(tag)
            if record is None or record["pid"] == pid:
                _delete(self._pending_path(tag, ".json"))
            if ok:
                _delete(self._pending_path(tag, ".log"))
            self._drop_empty_pending()

    def _drop_empty_pending(self) -> None:
        folder = self.root / PENDING
        if folder.is_dir() and not folder.is_symlink() and not _names(folder):
            try:
                folder.rmdir()
            except OSError:
                pass

    def _clean_pending(self, dry_run: bool) -> list[tuple[str, str]]:
        folder = self.root / PENDING
        if not os.path.lexists(folder):
            return []
        if folder.is_symlink() or not folder.is_dir():
            if not dry_run:
                _delete(folder)  # a link or file where the records go: removed (never followed)
            return [(str(folder), "not a folder")]
        removed = []
        with self.pending_lock():
            running = {r["tag"] for r in self.pending_records() if pid_alive(r["pid"])}
            for name in _names(folder):
                if name.split(".")[0] in running:
                    continue
                what = "finished background build" if name.endswith((".json", ".log")) else "leftover"
                removed.append((str(folder / name), what))
                if not dry_run:
                    _delete(folder / name)
            if not dry_run:
                self._drop_empty_pending()
        return removed

    # --- use -----------------------------------------------------------------------------------------------
    def touch(self, entry: EngineEntry) -> None:
        """Record a use (``last use`` in ``engines list``) without rewriting meta.json. The marker is opened with
        ``O_NOFOLLOW``: a link there is left alone. A read-only cache still loads."""
        if not self.is_confined(entry.path):
            return
        try:
            flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
            fd = os.open(entry.path / ".last_used", flags, 0o644)
        except OSError:
            return
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.utime(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def require_loadable(self, entry: EngineEntry) -> None:
        """Raise :class:`CacheError` unless every check passes (checksum included)."""
        issues = self.problems(entry, deep=True, device=True)
        if issues:
            fail(
                f"Refusing to load engine {entry.path}: {'; '.join(issues)}. Rebuild it with `sana-deploy build` "
                f"(a bad entry is rebuilt automatically) or remove it with `sana-deploy engines prune`.",
                CacheError,
            )
