"""Versions of the packages an artifact depends on (for manifests, cache keys and result files)."""

from __future__ import annotations

from importlib import metadata

PACKAGES = (
    "sana-deploy",
    "torch",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "onnxruntime-gpu",
    "diffusers",
    "transformers",
    "triton",
    "tensorrt",
    "tensorrt-rtx",
)


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that matter, skipping the ones not installed."""
    return {n: v for n in PACKAGES if (v := package_version(n)) is not None}
