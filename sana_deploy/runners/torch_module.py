"""Eager PyTorch over a module with the export spec's I/O (``ExportSpec.wrap``), so torch runs the very graph
that is exported (fp32 at the boundary, the module's own dtype inside). ``sana_deploy.runtime.stages`` makes one
per component."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sana_deploy.plugins.registry import active_kernels, use_kernels
from sana_deploy.runners.base import Runner
from sana_deploy.runners.weights import parameter_name, swappable
from sana_deploy.runners.winograd import WinogradConvs

# A parameter's weights before any swap are kept on the parameter itself, so runners that share a module (the
# split's two graphs over one transformer) restore the same base.
_BASE_ATTR = "_sana_deploy_base_weight"


class TorchRunner(Runner):
    """``kernels``: which implementation of the ``sana::`` ops runs (``reference``, ``inline`` or ``triton``).
    ``winograd``: run the module's fp32 CPU 3x3 convolutions with Winograd kernels (:mod:`.winograd`);
    ``winograd_calls`` counts them over this runner's life."""

    backend = "torch"
    reentrant = True

    def __init__(
        self,
        module: torch.nn.Module,
        component: str,
        input_names: list[str],
        output_names: list[str],
        precision: str = "fp32",
        kernels: str = "reference",
        winograd: bool = False,
    ) -> None:
        super().__init__(component, input_names, output_names, precision)
        self.module = module.eval()
        self.kernels = kernels
        self.winograd = winograd
        self.winograd_calls = 0
        self.device = next(self.module.parameters()).device
        self._params = {
            parameter_name(n): p for n, p in self.module.named_parameters() if swappable(parameter_name(n), p)
        }

    def swappable_weights(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in self._params.items()}

    def set_weight_deltas(self, deltas: Mapping[str, torch.Tensor]) -> None:
        """In place: ``base + delta`` into each parameter; parameters changed before and not now get their base."""
        for name, d in deltas.items():
            if tuple(d.shape) != tuple(self._params[name].shape):
                raise ValueError(f"{name}: delta {tuple(d.shape)} vs weight {tuple(self._params[name].shape)}")
        with torch.no_grad():
            for name, p in self._params.items():
                base = getattr(p, _BASE_ATTR, None)
                if name in deltas:
                    if base is None:
                        base = p.detach().clone()
                        setattr(p, _BASE_ATTR, base)
                    p.copy_((base.float() + deltas[name].to(base.device)).to(p.dtype))
                elif base is not None:
                    p.copy_(base)
                    delattr(p, _BASE_ATTR)

    def infer(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        args = [t.to(self.device) for t in inputs.values()]
        with torch.inference_mode():
            if not self.winograd:
                out = self._run(args)
            else:
                with WinogradConvs() as convs:  # a thread-local mode: safe when threads share the runner
                    out = self._run(args)
                self.winograd_calls += convs.calls
        outs = out if isinstance(out, tuple) else (out,)
        return dict(zip(self.output_names, outs, strict=True))

    def _run(self, args: list[torch.Tensor]):
        if active_kernels() == self.kernels:  # no global switch: safe when threads share the runner
            return self.module(*args)
        with use_kernels(self.kernels):
            return self.module(*args)
