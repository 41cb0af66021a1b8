"""One error path for everything a user can get wrong.

Every message says what went wrong *and what to do about it* (Polygraphy's "amazing error messages").
Raise through :func:`fail` so the CLI can print the message without a traceback.
"""

from __future__ import annotations

from typing import NoReturn


class SanaDeployError(Exception):
    """An error caused by input the user can fix; the message says how."""


class CheckpointError(SanaDeployError):
    """A checkpoint is missing, unreadable, corrupt, or not a Sana checkpoint."""


class ExportError(SanaDeployError):
    """Export failed (including a parity check above the spec's tolerance)."""


class ParityError(ExportError):
    """An export whose ONNX Runtime output does not match PyTorch; ``results`` is the parity report."""

    def __init__(self, message: str, results: list | None = None) -> None:
        super().__init__(message)
        self.results = list(results or [])


class NonFiniteError(SanaDeployError):
    """A pipeline stage returned NaN or inf (``stage``: which one); no image is made from it."""

    def __init__(self, message: str, stage: str = "") -> None:
        super().__init__(message)
        self.stage = stage


class ShapeError(SanaDeployError):
    """A resolution, batch or profile is not valid."""


def fail(message: str, kind: type[SanaDeployError] = SanaDeployError) -> NoReturn:
    """Raise ``kind(message)``; the single place user-facing errors are raised from."""
    raise kind(message)
