"""AOTInductor: a ``.pt2`` package through ``torch._inductor.aoti_load_package`` (no model code at run time).

Weight swaps (:meth:`AotiRunner.set_weight_deltas`) load new constant buffers into the loaded package
(``AOTICompiledModel.load_constants``, a partial update by constant name). The package cannot hand its constants
back, so the base values come from the component's ONNX export (``base_onnx``) through that export's weight map.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from sana_deploy.errors import fail
from sana_deploy.runners.base import Runner, Shapes
from sana_deploy.runners.weights import WeightSwapError, parameter_name, read_weight_map, stored_weights


class AotiRunner(Runner):
    """The package's runner keeps state between calls, so calls are serialised."""

    backend = "aoti"
    reentrant = False

    def __init__(
        self,
        path: str | Path,
        component: str,
        input_names: list[str],
        output_names: list[str],
        precision: str = "fp32",
        device: str = "cpu",
        shapes: Shapes | None = None,
        base_onnx: str | Path | None = None,
    ) -> None:
        super().__init__(component, input_names, output_names, precision, shapes, detail=str(path))
        self.device = torch.device(device)
        self.model = torch._inductor.aoti_load_package(str(path))
        self.base_onnx = Path(base_onnx) if base_onnx else None
        self._base: dict[str, torch.Tensor] = {}
        self._changed: set[str] = set()

    def _constants(self) -> dict[str, str]:
        """``{parameter name: constant name}`` of the package's swappable constants."""
        refs = read_weight_map(self.base_onnx.parent) if self.base_onnx else None
        if not refs:
            return {}
        return {parameter_name(c): c for c in self.model.get_constant_fqns() if parameter_name(c) in refs}

    def swappable_weights(self) -> dict[str, tuple[int, ...]]:
        refs = read_weight_map(self.base_onnx.parent) if self.base_onnx else None
        return {n: refs[n].shape for n in self._constants()} if refs else {}

    def set_weight_deltas(self, deltas: Mapping[str, torch.Tensor]) -> None:
        if not deltas and not self._changed:
            return
        constants = self._constants()
        if not constants:
            fail(
                f"The aoti package of {self.component} has no base weights to swap against (its ONNX export "
                f"{self.base_onnx} or the export's weight map is missing); build the engine again.",
                WeightSwapError,
            )
        refs = read_weight_map(self.base_onnx.parent)
        need = (set(deltas) | self._changed) - set(self._base)
        if need:
            self._base.update(stored_weights(self.base_onnx, refs, need))
        update = {}
        for name in set(deltas) | self._changed:
            base = self._base[name]
            value = base if name not in deltas else (base.float() + deltas[name].float()).to(base.dtype)
            update[constants[name]] = value.to(self.device).contiguous()
        with self._lock:
            self.model.load_constants(update, check_full_update=False)
        self._changed = set(deltas)

    def infer(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            out = self.model(**{k: v.to(self.device).contiguous() for k, v in inputs.items()})
        outs = out if isinstance(out, (list, tuple)) else [out]
        return dict(zip(self.output_names, outs, strict=True))
