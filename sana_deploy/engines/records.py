"""A cache key (everything that can invalidate an engine) and a cache entry (one built engine + its meta.json)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from sana_deploy.engines.profiles import Profile

META_FORMAT = "sana-deploy/engine/1"
META_FILE = "meta.json"


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
        return self.path / self.meta["artifact"]

    @property
    def size(self) -> int:
        return int(self.meta["artifact_bytes"])

    @property
    def build_seconds(self) -> float:
        return float(self.meta.get("build_seconds", 0.0))

    @property
    def last_used(self) -> float | None:
        marker = self.path / ".last_used"
        return marker.stat().st_mtime if marker.exists() else None

    def covers(self, height: int, width: int, batch: int) -> bool:
        return self.profile.covers(height, width, batch, self.component)

    def __repr__(self) -> str:
        return (
            f"EngineEntry({self.model}/{self.component} [{self.profile.name}] {self.backend} {self.precision} "
            f"{self.device} key={self.key})"
        )


def read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None
