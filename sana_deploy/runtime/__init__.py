"""Thin runtime: flow solvers, stages over torch / ONNX Runtime / engines, the pipeline and ``generate``.

Imports are lazy so ``import sana_deploy.runtime`` stays light; see docs/RUNTIME.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sana_deploy.runtime.pipeline import SanaDeployOutput, SanaDeployPipeline  # noqa: F401
    from sana_deploy.runtime.solvers import FlowDPMSolver, FlowEuler, make_solver  # noqa: F401
    from sana_deploy.runtime.tiling import TilingConfig  # noqa: F401

_EXPORTS = {
    "SanaDeployPipeline": "sana_deploy.runtime.pipeline",
    "SanaDeployOutput": "sana_deploy.runtime.pipeline",
    "FlowDPMSolver": "sana_deploy.runtime.solvers",
    "FlowEuler": "sana_deploy.runtime.solvers",
    "make_solver": "sana_deploy.runtime.solvers",
    "TilingConfig": "sana_deploy.runtime.tiling",
}
__all__ = [  # noqa: F822 (resolved lazily by __getattr__)
    "FlowDPMSolver",
    "FlowEuler",
    "SanaDeployOutput",
    "SanaDeployPipeline",
    "TilingConfig",
    "make_solver",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
