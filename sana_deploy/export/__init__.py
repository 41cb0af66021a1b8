"""ONNX export of Sana components (dynamic shapes, ``sana`` local functions, parity-checked)."""

from sana_deploy.export.exporter import (
    ExportResult,
    ensure_export,
    export_component,
    export_dir,
    export_model,
    load_manifest,
)
from sana_deploy.export.specs import SPECS, ExportSpec, TensorSpec

__all__ = [
    "SPECS",
    "ExportResult",
    "ExportSpec",
    "TensorSpec",
    "ensure_export",
    "export_component",
    "export_dir",
    "export_model",
    "load_manifest",
]
