"""Atomic file writes: a temporary file in the target's folder, renamed into place only once it is complete.

A crash, a full disk or SIGKILL leaves at most a dot-named temporary file, never a truncated ``path``. The final
file gets the usual ``0o666 & ~umask`` mode (``mkstemp`` would leave it owner-only).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit it is renamed to ``path``, on an error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".tmp-{path.name}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return path
