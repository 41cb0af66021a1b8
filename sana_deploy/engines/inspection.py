"""``engines inspect``: what an entry's meta.json records and what its artifact says about itself."""

from __future__ import annotations

import json

from sana_deploy.engines.cache import EngineCache
from sana_deploy.engines.records import EngineEntry


def inspect_data(entry: EngineEntry, cache: EngineCache | None = None) -> dict:
    """The entry's key fields, recorded bindings/profile, checks, and the backend's reading of the artifact (read
    only when every check passed, so only an artifact inside the cache is ever opened)."""
    from sana_deploy.engines.backends import BACKENDS

    m = entry.meta
    data = {
        "key": entry.key,
        "path": str(entry.path),
        "model": m.get("model"),
        "component": m.get("component"),
        "backend": f"{m.get('backend')} {m.get('backend_version')}",
        "device": m.get("device"),
        "precision": m.get("precision"),
        "profile": m["profile"].get("name") if isinstance(m.get("profile"), dict) else None,
        "input_shapes (min, opt, max)": m.get("input_shapes"),
        "flags": m.get("flags"),
        "plugins": m.get("plugins"),
        "artifact": f"{m.get('artifact')} ({m.get('artifact_bytes')} bytes)",
        "recorded_bindings": m["info"].get("bindings") if isinstance(m.get("info"), dict) else None,
    }
    issues = (cache or EngineCache(entry.path.parents[2])).problems(entry, deep=True)
    data["checks"] = issues or "ok"
    backend = BACKENDS.get(m.get("backend", ""))
    if backend is not None and backend.available() and not issues:
        data["artifact_says"] = backend.inspect(entry.artifact, m)
    elif backend is not None and not backend.available():
        data["artifact_says"] = f"{backend.package} is not installed here: the artifact cannot be read"
    return data


def inspect_entry(entry: EngineEntry, cache: EngineCache | None = None) -> str:
    return json.dumps(inspect_data(entry, cache), indent=2, default=str)
