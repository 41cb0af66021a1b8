"""ONNX Runtime vs PyTorch parity at several shapes, as max abs / max relative error."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sana_deploy.export.specs import ExportSpec
from sana_deploy.models.components import SanaComponents
from sana_deploy.plugins.registry import use_kernels
from sana_deploy.runners.onnxruntime import OrtOptions, ort_session


@dataclass
class ParityResult:
    sizes: dict[str, int]
    max_abs: float
    rel: float  # max|onnx - torch| / max|torch|
    tolerance: float
    finite: bool
    skipped: str = ""  # reason, when the check could not run here

    @property
    def ok(self) -> bool:
        return bool(self.skipped) or (self.finite and self.rel <= self.tolerance)

    def __str__(self) -> str:
        shape = " ".join(f"{k}={v}" for k, v in self.sizes.items())
        if self.skipped:
            return f"{shape}: skipped ({self.skipped})"
        flag = "ok" if self.ok else ("NON-FINITE" if not self.finite else "FAIL")
        return f"{shape}: max abs {self.max_abs:.3e}, rel {self.rel:.3e} (tol {self.tolerance:.0e}) {flag}"

    def to_json(self) -> dict:
        return {
            "sizes": self.sizes,
            "max_abs": self.max_abs,
            "rel": self.rel,
            "tolerance": self.tolerance,
            "finite": self.finite,
            "skipped": self.skipped,
        }


def cpu_session(path: Path | str, threads: int | None = None):  # noqa: ANN201 (onnxruntime.InferenceSession)
    """The graph in ONNX Runtime's CPU provider, all optimisations on (what the parity check runs)."""
    return ort_session(path, OrtOptions(threads=threads, providers=("CPUExecutionProvider",)))


def relative_error(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    diff = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max())
    scale = float(np.abs(expected).max()) or 1.0
    return diff, diff / scale


def check_parity(
    onnx_path: Path,
    module: torch.nn.Module,
    spec: ExportSpec,
    components: SanaComponents,
    precision: str,
    progress: Callable[[str], None] | None = None,
    sizes: Sequence[dict[str, int]] | None = None,
) -> list[ParityResult]:
    """Run the exported graph in ONNX Runtime and ``module`` (the reference) in PyTorch at ``sizes`` (default: all
    the spec's parity sizes). A NaN or inf in ONNX Runtime's output fails the check (``NON-FINITE``), whatever
    PyTorch returned; one in PyTorch's output alone fails it too (the comparison is not finite)."""
    tol = spec.tolerance[precision]
    sizes = tuple(spec.parity_sizes if sizes is None else sizes)
    try:
        session = cpu_session(onnx_path)
    except Exception as exc:  # e.g. bf16 graphs: ONNX Runtime's CPU provider has no bf16 kernels
        reason = f"ONNX Runtime cannot load this graph on CPU: {str(exc).splitlines()[0][:160]}"
        if progress:
            progress(f"{spec.component} parity skipped: {reason}")
        return [ParityResult(dict(s), float("nan"), float("nan"), tol, True, reason) for s in sizes]
    results = []
    for i, size in enumerate(sizes):
        seed = 100 + (spec.parity_sizes.index(size) if size in spec.parity_sizes else i)  # as in the full check
        inputs = spec.dummy_inputs(components, size, seed=seed)
        with torch.no_grad(), use_kernels("reference"):
            expected = module(*inputs.values()).float().numpy()
        actual = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
        max_abs, rel = relative_error(actual, expected)
        r = ParityResult(dict(size), max_abs, rel, tol, bool(np.isfinite(actual).all()))
        if progress:
            progress(f"{spec.component} parity {i + 1}/{len(sizes)}: {r}")
        results.append(r)
    return results
