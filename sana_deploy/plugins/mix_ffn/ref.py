"""Pure-PyTorch reference of Sana's Mix-FFN / GLUMBConv (docs/SANA.md#mix-ffn)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mix_ffn_ref(
    x: torch.Tensor,
    w_inv: torch.Tensor,
    b_inv: torch.Tensor,
    w_dw: torch.Tensor,
    b_dw: torch.Tensor,
    w_pt: torch.Tensor,
) -> torch.Tensor:
    """Mix-FFN on channels-last tokens.

    x: (B, H, W, C) -- the (B, H*W, C) token tensor viewed with its spatial size.
    w_inv: (2F, C), b_inv: (2F,)   1x1 "inverted" conv, then SiLU
    w_dw: (2F, 1, 3, 3), b_dw: (2F,)   depthwise 3x3, padding 1
    w_pt: (C_out, F)   1x1 "point" conv without bias, applied to a * SiLU(g) where (a, g) = split(h, 2)
    Returns (B, H, W, C_out) in x's dtype.
    """
    h = F.silu(F.linear(x, w_inv, b_inv)).permute(0, 3, 1, 2)
    h = F.conv2d(h, w_dw, b_dw, padding=1, groups=h.shape[1])
    a, g = h.chunk(2, dim=1)
    return F.linear((a * F.silu(g)).permute(0, 2, 3, 1), w_pt)


def dw_glu_ref(h_pre: torch.Tensor, w_dw: torch.Tensor, b_dw: torch.Tensor) -> torch.Tensor:
    """The middle of Mix-FFN (what the Triton kernel fuses): SiLU, depthwise 3x3 + bias, ``a * SiLU(g)``.

    h_pre: (B, H, W, 2F) output of the inverted 1x1 conv before its SiLU. Returns (B, H, W, F) in h_pre's dtype.
    """
    h = F.silu(h_pre).permute(0, 3, 1, 2)
    h = F.conv2d(h, w_dw, b_dw, padding=1, groups=h.shape[1])
    a, g = h.chunk(2, dim=1)
    return (a * F.silu(g)).permute(0, 2, 3, 1)
