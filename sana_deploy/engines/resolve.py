"""Lookup for the runtime: find an engine covering a request, and what to do on a miss.

Miss policies (:class:`MissPolicy`):

* ``build``: build the smallest profile that covers the request now, then return it.
* ``background``: start that build in a separate process (``python -m sana_deploy.engines.background``), report
  it (stderr line + :func:`pending_builds`), and return None so the caller serves from a fallback meanwhile.
  A second miss for the same build while it runs does not start another one. The build removes its record
  (``<cache>/.pending/<tag>.json``) when it ends, and its log too when it succeeded.
* ``error``: raise :class:`~sana_deploy.errors.ShapeError` naming the profile to build.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from sana_deploy.contract import MissPolicy
from sana_deploy.engines.backends import EngineBuildError
from sana_deploy.engines.builder import build_engines
from sana_deploy.engines.cache import EngineCache, pid_alive
from sana_deploy.engines.profiles import profile_for_request
from sana_deploy.engines.records import EngineEntry
from sana_deploy.errors import SanaDeployError, ShapeError, fail


def _build_request(model_id: str, component: str, height: int, width: int, batch: int, build_kwargs: dict) -> dict:
    profile = profile_for_request(height, width, batch, component)
    max_batch = max(1, math.ceil(batch / 2))
    return {
        **{k: v for k, v in build_kwargs.items() if k not in ("engine_dir",)},
        "model": model_id,
        "profiles": [profile.base],
        "max_batch": max_batch,
        "components": [component],
    }


def _command_line(req: dict) -> str:
    extra = " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in req.items() if k in ("backend", "precision", "controlnet") and v
    )
    return (
        f"sana-deploy build --model {req['model']} --profiles {req['profiles'][0]} --max-batch {req['max_batch']} "
        f"--components {req['components'][0]} {extra}"
    ).strip()


def resolve(
    cache: EngineCache,
    model_id: str,
    component: str,
    height: int,
    width: int,
    batch: int,
    policy: str | MissPolicy = "build",
    find_backend: str | None = None,
    **build_kwargs,
) -> EngineEntry | None:
    """The entry covering the request (of ``find_backend``, or any that runs here when None), else the miss policy:
    a build with ``build_kwargs`` (``backend`` among them) now, in the background (None), or an error.
    ``build_kwargs["build_model"]``: the model a build loads when ``model_id`` names other weights' engines (a
    ControlNet's, cached under its own name and built with ``controlnet=`` from the model it belongs to)."""
    policy = MissPolicy.parse(policy)
    build_model = build_kwargs.pop("build_model", None) or model_id
    entry = cache.find(
        model_id, component, height, width, batch, backend=find_backend, precision=build_kwargs.get("precision")
    )
    if entry is not None:
        return entry
    req = _build_request(build_model, component, height, width, batch, build_kwargs)
    if policy is MissPolicy.ERROR:
        fail(
            f"No engine in {cache.root} covers {component} at {height}x{width}, batch {batch}. Build profile "
            f"{req['profiles'][0]}: `{_command_line(req)} --engine-dir {cache.root}`.",
            ShapeError,
        )
    if policy is MissPolicy.BUILD:
        build_for_request(cache.root, req, height, width)
        found = cache.find(model_id, component, height, width, batch, backend=None, precision=req.get("precision"))
        if found is None:
            fail(
                f"Built profile {req['profiles'][0]} but it does not run {component} here; "
                f"see `sana-deploy engines verify`."
            )
        return found
    start_background(cache.root, req)
    return None


def build_for_request(root: Path, req: dict, height: int, width: int) -> None:
    """Build what a miss needs. A dynamic build the backend refuses (AOTInductor on the CPU refuses the dynamic DC-AE
    at profiles 512 and 1024, whose self-check catches an Inductor miscompile) is retried as the profile's static
    build when the request is exactly the base size it covers; any other refusal is the error."""
    try:
        build_engines(engine_dir=root, progress=False, **req)
    except EngineBuildError as exc:
        base = req["profiles"][0]
        if req.get("static") or (height, width) != (base, base):
            raise
        print(f"sana-deploy: {str(exc).splitlines()[0]} Building the static {base} profile instead.", file=sys.stderr)
        build_engines(engine_dir=root, progress=False, **{**req, "static": True})


def start_background(root: Path, req: dict) -> dict:
    """Start (or find already running) a background build for ``req``; returns its record."""
    import dataclasses

    if dataclasses.is_dataclass(req.get("options")):
        req = {**req, "options": dataclasses.asdict(req["options"])}
    tag = hashlib.sha256(json.dumps(req, sort_keys=True, default=str).encode()).hexdigest()[:16]
    cache = EngineCache(root)
    with cache.pending_lock():  # the record is written before a cleaner or the build itself can look for it
        record = cache.read_pending(tag)
        if record is not None and _alive(record["pid"]):
            return record
        log, out = cache.pending_log(tag), cache.open_pending_log(tag)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sana_deploy.engines.background", str(root), json.dumps(req, default=str), tag],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=os.getcwd(),
            )
        finally:
            os.close(out)
        _STARTED.add(proc.pid)
        record = {"pid": proc.pid, "request": req, "log": str(log), "started": time.time(), "tag": tag}
        cache.write_pending(tag, record)
    print(
        f"sana-deploy: no engine for {req['components'][0]} covers the request; building profile "
        f"{req['profiles'][0]} in the background (pid {proc.pid}, log {log}); serve from a fallback meanwhile.",
        file=sys.stderr,
    )
    return record


def pending_builds(root: str | Path) -> list[dict]:
    """Background builds started for this cache that are still running (a malformed record is skipped)."""
    try:
        cache = EngineCache(root)
    except SanaDeployError:
        return []
    return [r for r in cache.pending_records() if _alive(r["pid"])]


_STARTED: set[int] = set()  # background builds this process started (the only pids it reaps)


def _alive(pid: int) -> bool:
    if pid in _STARTED:
        try:
            waited, _status = os.waitpid(pid, os.WNOHANG)  # reap our own finished children
            if waited == pid:
                _STARTED.discard(pid)
                return False
        except ChildProcessError:
            _STARTED.discard(pid)
    return pid_alive(pid)
