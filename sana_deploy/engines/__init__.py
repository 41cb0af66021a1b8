"""Engines: resolution profiles, four backends behind one builder, and a cache the runtime can trust.

See docs/ENGINES.md. Contract with the runtime::

    Profile.from_base(1024, max_batch=1, static=False).covers(height, width, batch)
    build_engines(model, profiles, backend, precision, max_batch, static, engine_dir, components) -> [EngineEntry]
    EngineCache(root).find(model_id, component, height, width, batch, backend=None, precision=None)
    resolve(EngineCache(root), model_id, component, height, width, batch, policy, find_backend, **build_kwargs)
    load_runner(entry)(**inputs) -> {output: tensor}
"""

from sana_deploy.contract import PROFILE_BASES, MissPolicy, parse_profiles
from sana_deploy.engines.backends import BACKEND_CHOICES, BACKENDS, BuildOptions, get_backend
from sana_deploy.engines.builder import build_engines
from sana_deploy.engines.cache import CacheError, EngineCache
from sana_deploy.engines.lazy import EngineFromOnnx, EngineFromPath, SaveEngine, load_runner
from sana_deploy.engines.profiles import Profile, ShapeTuple
from sana_deploy.engines.records import CacheKey, EngineEntry
from sana_deploy.engines.resolve import pending_builds

__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "PROFILE_BASES",
    "BuildOptions",
    "CacheError",
    "CacheKey",
    "EngineCache",
    "EngineEntry",
    "EngineFromOnnx",
    "EngineFromPath",
    "MissPolicy",
    "Profile",
    "SaveEngine",
    "ShapeTuple",
    "build_engines",
    "get_backend",
    "load_runner",
    "parse_profiles",
    "pending_builds",
]
