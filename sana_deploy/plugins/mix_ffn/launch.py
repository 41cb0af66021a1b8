"""Launcher of the Mix-FFN Triton kernel (kernel.py) and the full Mix-FFN around it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sana_deploy.plugins.mix_ffn.op import mix_ffn_shape
from sana_deploy.plugins.triton_utils import check_device, launch

ROWS = 8
BLOCK_W = 16
BLOCK_C = 64
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def dw_glu_grid(batch: int, height: int, width: int, f: int, rows: int = ROWS) -> tuple[int, int, int]:
    """Launch grid of ``dw_glu_kernel``."""
    return (batch * -(-height // rows), -(-width // BLOCK_W), -(-f // BLOCK_C))


def dw_glu_triton(
    h_pre: torch.Tensor,
    w_dw: torch.Tensor,
    b_dw: torch.Tensor,
    out_dtype: torch.dtype | None = None,
    rows: int = ROWS,
) -> torch.Tensor:
    """SiLU + depthwise 3x3 (pad 1) + bias + ``a * SiLU(g)`` in one kernel; same math as ``dw_glu_ref``.

    h_pre: (B, H, W, 2F) contiguous (channels-last), float32 / float16 / bfloat16; w_dw: (2F, 1, 3, 3) and
    b_dw: (2F,) contiguous, any of those dtypes; on CUDA (or CPU with TRITON_INTERPRET=1). Returns (B, H, W, F) in
    ``out_dtype`` (default h_pre's). fp32 math. ``rows``: output rows per program.
    """
    assert h_pre.dim() == 4, f"h_pre must be (B, H, W, 2F), got {tuple(h_pre.shape)}"
    b, height, width, two_f = h_pre.shape
    assert two_f % 2 == 0, f"channel count {two_f} must be even (a and g halves)"
    assert tuple(w_dw.shape) == (two_f, 1, 3, 3), f"w_dw must be ({two_f}, 1, 3, 3), got {tuple(w_dw.shape)}"
    assert tuple(b_dw.shape) == (two_f,), f"b_dw must be ({two_f},), got {tuple(b_dw.shape)}"
    assert h_pre.dtype in _DTYPES and w_dw.dtype in _DTYPES and b_dw.dtype in _DTYPES, "float dtypes only"
    assert h_pre.is_contiguous() and w_dw.is_contiguous() and b_dw.is_contiguous(), "inputs must be contiguous"
    assert h_pre.device == w_dw.device == b_dw.device, "inputs must be on one device"
    check_device(h_pre)
    from sana_deploy.plugins.mix_ffn import kernel as kern

    f = two_f // 2
    y = torch.empty((b, height, width, f), dtype=out_dtype or h_pre.dtype, device=h_pre.device)
    grid = dw_glu_grid(b, height, width, f, rows)
    consts = {"ROWS": rows, "BLOCK_W": BLOCK_W, "BLOCK_C": BLOCK_C}
    launch(kern.dw_glu_kernel, grid, h_pre, w_dw, b_dw, height, width, f, y, **consts)
    return y


def mix_ffn_triton(
    x: torch.Tensor,
    w_inv: torch.Tensor,
    b_inv: torch.Tensor,
    w_dw: torch.Tensor,
    b_dw: torch.Tensor,
    w_pt: torch.Tensor,
) -> torch.Tensor:
    """Mix-FFN: inverted 1x1 conv (cuBLAS GEMM + bias), the fused Triton middle, point 1x1 conv (cuBLAS GEMM).

    x: (B, H, W, C) contiguous; weights as in ``mix_ffn_ref`` (all one dtype with x). Returns (B, H, W, C_out) in
    x's dtype. The SiLU after the first GEMM is applied inside the Triton kernel (fp32), not as its own pass.
    """
    out_shape = mix_ffn_shape(x.shape, w_inv.shape, w_dw.shape, w_pt.shape)
    assert x.dtype == w_inv.dtype == b_inv.dtype == w_dw.dtype == b_dw.dtype == w_pt.dtype, "one dtype for all"
    h_pre = F.linear(x, w_inv, b_inv)
    y = dw_glu_triton(h_pre, w_dw.contiguous(), b_dw.contiguous())
    out = F.linear(y, w_pt)
    assert tuple(out.shape) == tuple(out_shape)
    return out
