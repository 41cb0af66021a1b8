"""A cache key (everything that can invalidate an engine) and a cache entry (one built engine + its meta.json).

Also the checks of everything the cache reads back from disk: keys, folder names and ``meta.json`` fields are
validated against their expected form before any path is made from them (see "Trust model" in docs/ENGINES.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from sana_deploy.contract import ALL_COMPONENTS, SIZE_FREE_COMPONENTS
from sana_deploy.engines.profiles import Profile
from sana_deploy.errors import SanaDeployError, fail

META_FORMAT = "sana-deploy/engine/1"
META_FILE = "meta.json"
KEY_LENGTH = 24  # hex digits of CacheKey.digest: the name of an entry's folder
CREATED_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
META_MAX_BYTES = 4 << 20  # a meta.json is a few KB; anything larger is not one of ours
_KEY = re.compile(rf"[0-9a-f]{{{KEY_LENGTH}}}")
_STR_FIELDS = ("key", "artifact", "artifact_sha256", "backend", "backend_version", "device", "model", "component")
_STR_FIELDS += ("precision", "created")
_OPTIONAL_TYPES = {
    "info": dict,
    "flags": dict,
    "plugins": dict,
    "input_shapes": dict,
    "inputs": list,
    "outputs": list,
    "refit_files": list,
}


class CacheError(SanaDeployError):
    """A cache entry or folder is corrupt, truncated, from another library version or device, malformed, or not
    inside the cache: it is never loaded and nothing outside the cache is touched because of it."""


def is_key(value: object) -> bool:
    """Whether ``value`` has the form of a cache key (:attr:`CacheKey.digest`: 24 lowercase hex digits)."""
    return isinstance(value, str) and _KEY.fullmatch(value) is not None


def check_key(value: object) -> str:
    if not is_key(value):
        fail(f"{value!r} is not an engine cache key ({KEY_LENGTH} lowercase hex digits).", CacheError)
    return value  # type: ignore[return-value]


def is_plain_name(value: object) -> bool:
    """A single, visible file or folder name: no separator, not ``.``/``..``, not hidden, no NUL, <= 255 chars."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= 255
        and not value.startswith(".")
        and not any(c in value for c in "/\\\0")
    )


def check_model_dir(name: str) -> str:
    """``name`` (a model's cache folder, :func:`~sana_deploy.contract.model_dirname`) if it is a plain name."""
    if not is_plain_name(name):
        fail(
            f"{name!r} cannot name a folder of the engine cache (it must be one visible folder name, without '/', "
            f"'..' or a leading '.'); name the model by a preset or a folder with a plain name.",
            CacheError,
        )
    return name


def check_component(name: object) -> str:
    if name not in ALL_COMPONENTS:
        fail(f"{name!r} is not an engine component (one of {', '.join(ALL_COMPONENTS)}).", CacheError)
    return name  # type: ignore[return-value]


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def profile_problem(data: object, component: object) -> str | None:
    """Why ``data`` is not a recorded profile ``component`` can be looked up with (None when it is)."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not isinstance(data.get("axes"), dict):
        return "profile is not {name, axes}"
    needed = ["batch"] + (["seq"] if component == "text_encoder" else [])
    needed += [] if component in SIZE_FREE_COMPONENTS else ["latent_h", "latent_w"]
    if missing := [a for a in needed if a not in data["axes"]]:
        return f"profile lacks the axes {missing}"
    for name, v in data["axes"].items():
        ok = isinstance(v, list) and len(v) == 3
        ok = ok and all(_is_int(x) or (isinstance(x, list) and all(_is_int(y) for y in x)) for x in v)
        if not ok or (name in needed and not all(_is_int(x) for x in v)):
            return f"profile axis {name!r} is not [min, opt, max]"
    return None


def meta_problem(meta: object, folder_name: str) -> str | None:
    """Why ``meta`` (a parsed meta.json of the folder ``folder_name``) cannot describe an entry (None when it can).

    Checks the form of every field the cache and the runners use; the artifact must be a plain file name, so it
    can only name a file directly inside the entry's folder."""
    if not isinstance(meta, dict):
        return "meta.json is not a JSON object"
    if meta.get("format") != META_FORMAT:
        return f"foreign format {meta.get('format')!r} (this sana-deploy writes {META_FORMAT!r})"
    missing = [k for k in (*_STR_FIELDS, "artifact_bytes", "profile") if k not in meta]
    if missing:
        return f"incomplete: meta.json lacks {missing}"
    if wrong := [k for k in _STR_FIELDS if not isinstance(meta[k], str)]:
        return f"malformed meta.json: {wrong} must be strings"
    if wrong := [k for k, t in _OPTIONAL_TYPES.items() if k in meta and not isinstance(meta[k], t)]:
        return f"malformed meta.json: wrong type of {wrong}"
    if meta["key"] != folder_name or not is_key(meta["key"]):
        return f"malformed meta.json: key {meta['key'][:40]!r} is not its folder's name {folder_name!r}"
    if not is_plain_name(meta["artifact"]):
        return (
            f"malformed meta.json: artifact {meta['artifact'][:200]!r} is not a file name inside the entry's folder "
            f"(paths are refused)"
        )
    if not _is_int(meta["artifact_bytes"]) or meta["artifact_bytes"] < 0:
        return "malformed meta.json: artifact_bytes is not a byte count"
    if re.fullmatch(r"[0-9a-f]{64}", meta["artifact_sha256"]) is None:
        return "malformed meta.json: artifact_sha256 is not a sha256"
    if meta["component"] not in ALL_COMPONENTS:
        return f"malformed meta.json: unknown component {meta['component'][:40]!r}"
    if not all(is_plain_name(f) for f in meta.get("refit_files", [])):
        return "malformed meta.json: refit_files must be file names"
    if problem := profile_problem(meta["profile"], meta["component"]):
        return f"malformed meta.json: {problem}"
    try:
        time.strptime(meta["created"], CREATED_FORMAT)
    except ValueError:
        return "malformed meta.json: created is not a UTC time stamp"
    return None


@dataclass(frozen=True)
class CacheKey:
    """Everything an engine depends on; :attr:`digest` names its folder."""

    model: str
    component: str
    onnx_sha256: str  # whole export, external data included (export manifest)
    weights_sha256: str
    backend: str
    backend_version: str
    device: str  # compute capability (sm89, sm86+sm89) or cpu
    precision: str
    input_shapes: dict  # {input: [min, opt, max]}
    flags: dict  # builder options that change the artifact
    plugins: dict  # {library: sha256}

    def fields(self) -> dict:
        return {
            "format": META_FORMAT,
            "model": self.model,
            "component": self.component,
            "onnx_sha256": self.onnx_sha256,
            "weights_sha256": self.weights_sha256,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "device": self.device,
            "precision": self.precision,
            "input_shapes": self.input_shapes,
            "flags": self.flags,
            "plugins": self.plugins,
        }

    @property
    def digest(self) -> str:
        blob = json.dumps(self.fields(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:24]


@dataclass
class EngineEntry:
    """One cached engine: where it lives and what its meta.json says."""

    path: Path  # the entry folder engines/<model>/<component>/<key>/
    meta: dict
    hit: bool = field(default=False, compare=False)  # True when build_engines found it instead of building
    lookup_seconds: float | None = field(default=None, compare=False)  # time of the cache lookup in build_engines

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def component(self) -> str:
        return self.meta["component"]

    @property
    def backend(self) -> str:
        return self.meta["backend"]

    @property
    def backend_version(self) -> str:
        return self.meta["backend_version"]

    @property
    def device(self) -> str:
        return self.meta["device"]

    @property
    def precision(self) -> str:
        return self.meta["precision"]

    @property
    def profile(self) -> Profile:
        return Profile.from_json(self.meta["profile"])

    @property
    def artifact(self) -> Path:
        """The artifact file, always directly inside the entry's folder (a recorded path is refused)."""
        name = self.meta.get("artifact")
        if not is_plain_name(name):
            fail(f"Engine {self.path}: the artifact recorded in meta.json, {name!r}, is not a file name.", CacheError)
        return self.path / name

    @property
    def size(self) -> int:
        return int(self.meta["artifact_bytes"])

    @property
    def build_seconds(self) -> float:
        return float(self.meta.get("build_seconds", 0.0))

    @property
    def last_used(self) -> float | None:
        """When the entry was last loaded (the ``.last_used`` marker; a link there is not followed)."""
        try:
            st = os.lstat(self.path / ".last_used")
        except OSError:
            return None
        return st.st_mtime if stat.S_ISREG(st.st_mode) else None

    def covers(self, height: int, width: int, batch: int) -> bool:
        return self.profile.covers(height, width, batch, self.component)

    def __repr__(self) -> str:
        return (
            f"EngineEntry({self.model}/{self.component} [{self.profile.name}] {self.backend} {self.precision} "
            f"{self.device} key={self.key})"
        )


def read_json_object(path: Path, max_bytes: int) -> dict | None:
    """The JSON object in ``path``, or None when it is missing, a link, not a regular file (a FIFO would block),
    larger than ``max_bytes``, not JSON or not an object. The last component is opened with ``O_NOFOLLOW``; whether
    the folder lies inside the cache is the caller's check."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = json.loads(f.read(max_bytes + 1))
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else None


def read_meta(folder: Path) -> dict | None:
    """``folder``'s meta.json as a dict (None when unreadable: see :func:`read_json_object`)."""
    return read_json_object(Path(folder) / META_FILE, META_MAX_BYTES)
