"""``sana::mix_ffn_triton``: the Triton Mix-FFN as a ``torch.library.triton_op`` (traceable into AOTInductor).

Only imported when Triton is.
"""

from __future__ import annotations

import torch

from sana_deploy.plugins.mix_ffn.launch import mix_ffn_triton
from sana_deploy.plugins.mix_ffn.op import mix_ffn_op
from sana_deploy.plugins.triton_utils import can_run


@torch.library.triton_op("sana::mix_ffn_triton", mutates_args=())
def mix_ffn_triton_op(
    x: torch.Tensor,
    w_inv: torch.Tensor,
    b_inv: torch.Tensor,
    w_dw: torch.Tensor,
    b_dw: torch.Tensor,
    w_pt: torch.Tensor,
) -> torch.Tensor:
    """``sana::mix_ffn`` with the fused Triton middle (x made contiguous first)."""
    return mix_ffn_triton(x.contiguous(), w_inv, b_inv, w_dw, b_dw, w_pt)


def mix_ffn_triton_impl(
    x: torch.Tensor,
    w_inv: torch.Tensor,
    b_inv: torch.Tensor,
    w_dw: torch.Tensor,
    b_dw: torch.Tensor,
    w_pt: torch.Tensor,
) -> torch.Tensor:
    """The ``triton`` kernel set's Mix-FFN: the triton op where it can run, else the reference op."""
    if can_run(x):
        return mix_ffn_triton_op(x, w_inv, b_inv, w_dw, b_dw, w_pt)
    return mix_ffn_op(x, w_inv, b_inv, w_dw, b_dw, w_pt)
