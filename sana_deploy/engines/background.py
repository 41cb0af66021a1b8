"""Entry point of a background build started by the ``background`` miss policy:
``python -m sana_deploy.engines.background ENGINE_DIR REQUEST_JSON``."""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    from sana_deploy.engines.builder import build_engines
    from sana_deploy.errors import SanaDeployError

    root, request = argv[0], json.loads(argv[1])
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
