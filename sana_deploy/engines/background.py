"""Entry point of a background build started by the ``background`` miss policy:
``python -m sana_deploy.engines.background ENGINE_DIR REQUEST_JSON [TAG]``.

When the build ends (built, failed or raised) it removes its record ``ENGINE_DIR/.pending/TAG.json``, and its log
when it succeeded; a killed build's record and log are removed by the next build or ``engines prune``.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    from sana_deploy.engines.builder import build_engines
    from sana_deploy.engines.cache import EngineCache
    from sana_deploy.errors import SanaDeployError

    root, request = argv[0], json.loads(argv[1])
    tag = argv[2] if len(argv) > 2 else None
    ok = False
    try:
        if isinstance(request.get("options"), dict):
            from sana_deploy.engines.backends import BuildOptions

            opts = {k: tuple(v) if isinstance(v, list) else v for k, v in request["options"].items()}
            request["options"] = BuildOptions(**opts)
        try:
            entries = build_engines(engine_dir=root, progress=False, **request)
        except SanaDeployError as exc:
            print(f"error: {exc}", flush=True)
            return 2
        for e in entries:
            print(f"{'hit' if e.hit else 'built'} {e.path}", flush=True)
        ok = True
        return 0
    finally:
        if tag is not None:
            try:
                EngineCache(root).finish_pending(tag, os.getpid(), ok)
            except SanaDeployError as exc:
                print(f"error: could not remove the record of this build: {exc}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
