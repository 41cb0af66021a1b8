"""FP8 (e4m3) linear layers for the PyTorch and AOTInductor backends, no calibration.

The transformer blocks' linear layers and 1×1 convolutions (attention projections, Mix-FFN's inverted and point
convolutions) are replaced by :class:`Float8Linear`: the weight stored in ``float8_e4m3fn`` with one scale per
output channel, the activation quantized per row (token) when the layer runs, and the product taken by
``torch._scaled_mm`` (FP8 tensor cores, compute capability 8.9+, fp32 accumulation, bf16 out). Everything else
stays in the model's dtype, by the same rule as the ONNX recipes (docs/QUANTIZATION.md): the linear-attention
arithmetic, the norms, the timestep and caption embedders, the patch embedding, Mix-FFN's depthwise convolution
and the final layer.

Scales are dynamic (each call's own absolute maximum per row), so there is nothing to calibrate and no activation
outlier clipping to tune. Off CUDA (tests, tracing on the CPU), the same quantized values are multiplied in fp32:
the numbers FP8 tensor cores compute, up to the order of accumulation.
"""

from __future__ import annotations

import torch
from torch import nn

from sana_deploy.errors import SanaDeployError, fail

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # largest finite float8_e4m3fn
_AMAX_FLOOR = 1e-12  # an all-zero row gets a tiny scale instead of 0/0
_ALIGN = 16  # torch._scaled_mm needs both matrix dimensions a multiple of 16
BLOCKS = "transformer_blocks."


class Fp8Error(SanaDeployError):
    """FP8 layers cannot be made or run here; the message says what to do."""


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (M, K)`` -> ``(x_fp8 (M, K), scale (M, 1) fp32)`` with ``x ≈ x_fp8 * scale`` row by row."""
    amax = x.abs().amax(dim=1, keepdim=True).float().clamp(min=_AMAX_FLOOR)
    scale = amax / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def fp8_matmul(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """``(x_q * x_scale) @ (w_q * w_scale).T`` in bf16: ``x_q (M, K)``, ``w_q (N, K)`` e4m3, scales (M, 1), (N, 1)."""
    if x_q.is_cuda:
        # row-wise scaled GEMM: A row-major, B column-major (the transpose of the row-major weight)
        return torch._scaled_mm(x_q, w_q.t(), scale_a=x_scale, scale_b=w_scale.t(), out_dtype=torch.bfloat16)
    return ((x_q.float() * x_scale) @ (w_q.float() * w_scale).t()).to(torch.bfloat16)


class Float8Linear(nn.Module):
    """A ``nn.Linear`` (or a 1×1 ``nn.Conv2d`` over NCHW, ``conv1x1``) with an e4m3 weight. Output in the input's
    dtype. Its weight is a buffer, not a parameter: LoRA swaps do not reach an FP8 layer."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, conv1x1: bool = False) -> None:
        super().__init__()
        w_q, w_scale = quantize_rows(weight.detach().reshape(weight.shape[0], -1))
        self.register_buffer("weight_fp8", w_q)
        self.register_buffer("weight_scale", w_scale)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.conv1x1 = conv1x1
        self.out_features, self.in_features = w_q.shape

    @classmethod
    def from_module(cls, module: nn.Module) -> Float8Linear:
        return cls(module.weight, module.bias, conv1x1=isinstance(module, nn.Conv2d))

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on the last dimension of ``x`` (channels-last, whatever the wrapped module was)."""
        y = fp8_matmul(*quantize_rows(x.reshape(-1, self.in_features)), self.weight_fp8, self.weight_scale)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv1x1:  # (B, C, H, W) like the convolution it replaces
            return self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.linear(x)

    def extra_repr(self) -> str:
        kind = "conv1x1" if self.conv1x1 else "linear"
        return f"{kind}, in_features={self.in_features}, out_features={self.out_features}, e4m3 per-channel"


def convertible(name: str, module: nn.Module) -> bool:
    """A linear layer or a plain 1×1 convolution inside the transformer blocks, with dimensions FP8 GEMMs take."""
    if not (name.startswith(BLOCKS) or f".{BLOCKS}" in name):  # the model itself or a wrapper around it
        return False
    if isinstance(module, nn.Linear):
        n, k = module.weight.shape
    elif isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1:
        n, k = module.weight.shape[:2]
        if module.stride != (1, 1) or module.padding not in ((0, 0), "valid"):
            return False
    else:
        return False
    return n % _ALIGN == 0 and k % _ALIGN == 0


def fp8_layer_names(model: nn.Module) -> list[str]:
    """The modules :func:`to_fp8_` converts, by name, in order."""
    return [n for n, m in model.named_modules() if convertible(n, m)]


def to_fp8_(model: nn.Module) -> list[str]:
    """Replace the convertible layers of a Sana transformer (or ControlNet) by :class:`Float8Linear`, in place.
    Returns their names; a model with none (or already converted) is an :class:`Fp8Error`."""
    names = fp8_layer_names(model)
    if not names:
        why = "already FP8" if any(isinstance(m, Float8Linear) for m in model.modules()) else "none found"
        fail(
            f"No linear layers to make FP8 in {type(model).__name__} ({why}): FP8 converts the transformer blocks' "
            f"linear and 1x1 convolution layers whose sizes are multiples of {_ALIGN}.",
            Fp8Error,
        )
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, Float8Linear.from_module(getattr(parent, child)))
    return names


def fp8_supported(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Whether ``device`` has FP8 tensor cores (CUDA compute capability 8.9+), and why not."""
    if not torch.cuda.is_available():
        return False, "no CUDA GPU (FP8 GEMMs need one of compute capability 8.9+: Ada, Hopper, Blackwell)"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return False, f"this GPU is sm{major}{minor}; FP8 GEMMs need compute capability 8.9+ (Ada, Hopper, Blackwell)"
    return True, f"sm{major}{minor}"


def fp8_unavailable(device: str) -> str | None:
    """Why FP8 layers cannot run on ``device`` (``"cuda"``, ``"cpu"``, ...), or None when they can."""
    ok, why = fp8_supported()
    if not ok:
        return f"FP8 layers need a CUDA GPU with FP8 tensor cores: {why}"
    if not str(device).startswith("cuda"):
        return f"FP8 layers run on the GPU ({why}), not on {device}: use the cuda device"
    return None


__all__ = ["E4M3", "Float8Linear", "Fp8Error", "fp8_layer_names", "fp8_matmul", "fp8_supported", "fp8_unavailable"]
__all__ += ["quantize_rows", "to_fp8_"]
