"""Winograd 3x3 convolutions on the CPU for the DC-AE stages (docs/RUNTIME.md, "The DC-AE on the CPU").

The DC-AE decoder is 25 dense 3x3 convolutions (stride 1, padding 1) around cheap ops. Direct convolution
(oneDNN in PyTorch, MLAS in ONNX Runtime) already runs at the fp32 peak of a CPU, so the only way to decode
faster in fp32 is to do fewer multiplications. Winograd's minimal filtering does: PyTorch's CPU builds ship
NNPACK, whose Winograd kernels compute the same convolution with about 2.4x fewer multiplications
(``torch._nnpack_spatial_convolution``). The results differ from a direct convolution by fp32 rounding only
(~1e-5 relative at the DC-AE's channel counts).

:class:`WinogradConvs` is a ``TorchFunctionMode``: while it is active, every ``conv2d`` call that NNPACK can run
(fp32 CPU tensors, 4-D, 3x3 kernel, stride 1, dilation 1, padding 1, one group, no autograd) goes to NNPACK, and
any other call runs unchanged. The module is not modified, so what is exported stays an ordinary ``Conv``.
A call NNPACK refuses at run time runs as a direct convolution, and that shape is not tried again.
"""

from __future__ import annotations

import os
import threading
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["WinogradConvs", "winograd_available", "winograd_enabled", "winograd_for", "winograd_suits"]

_CONV2D = (F.conv2d, torch.conv2d)
_lock = threading.Lock()
_available: bool | None = None


def winograd_available() -> bool:
    """Whether this PyTorch has NNPACK and it initialises on this CPU (the first call initialises it)."""
    global _available
    with _lock:
        if _available is None:
            try:
                _available = bool(torch._nnpack_available())
            except (AttributeError, RuntimeError):
                _available = False
        return _available


def winograd_enabled() -> bool:
    """NNPACK works here and ``SANA_DEPLOY_WINOGRAD`` is not ``0`` (the switch that turns it off everywhere)."""
    return os.environ.get("SANA_DEPLOY_WINOGRAD", "1") != "0" and winograd_available()


def winograd_suits(device: str | torch.device, dtype: torch.dtype) -> bool:
    """Whether weights on ``device`` in ``dtype`` should run Winograd: fp32 on a CPU, when :func:`winograd_enabled`."""
    return torch.device(device).type == "cpu" and dtype == torch.float32 and winograd_enabled()


def winograd_for(module: torch.nn.Module) -> AbstractContextManager:
    """A :class:`WinogradConvs` for a module whose weights :func:`winograd_suits`, else a no-op context."""
    p = next(module.parameters(), None)
    return WinogradConvs() if p is not None and winograd_suits(p.device, p.dtype) else nullcontext()


def _pair(v, default: int) -> tuple[int, int] | None:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[1]))
    return None if v is not None else (default, default)


def _eligible(x, weight, bias, stride, padding, dilation, groups) -> bool:
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)):
        return False
    if x.dim() != 4 or weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3) or groups != 1:
        return False
    if _pair(stride, 1) != (1, 1) or _pair(dilation, 1) != (1, 1) or _pair(padding, 0) != (1, 1):
        return False
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


class WinogradConvs(TorchFunctionMode):
    """Routes eligible ``conv2d`` calls to NNPACK's Winograd kernels while active (see the module docstring).

    ``calls`` counts the convolutions it ran; ``refused`` holds the shapes NNPACK failed on (run directly since).
    Without a working NNPACK (:func:`winograd_available`, checked once here) every call runs unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.available = winograd_available()
        self.calls = 0
        self.refused: set[tuple] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONV2D:
            out = self._winograd(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)

    def _winograd(self, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor | None:  # noqa: A002 (F.conv2d's names)
        if not (self.available and _eligible(input, weight, bias, stride, padding, dilation, groups)):
            return None
        key = (tuple(input.shape), tuple(weight.shape))
        if key in self.refused:
            return None
        try:
            out = torch._nnpack_spatial_convolution(input.contiguous(), weight, bias, [1, 1], [1, 1])
        except RuntimeError:
            self.refused.add(key)
            return None
        self.calls += 1
        return out
