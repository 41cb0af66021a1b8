"""sana-deploy: ahead-of-time compiled deployment toolkit for NVIDIA Sana.

``from sana_deploy import SanaDeployPipeline`` is lazy: importing the package loads no torch or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sana_deploy.runtime.pipeline import SanaDeployOutput, SanaDeployPipeline

__all__ = ["SanaDeployOutput", "SanaDeployPipeline"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from sana_deploy.runtime import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
