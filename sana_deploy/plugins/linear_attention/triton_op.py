"""``sana::linear_attention_triton``: the Triton kernels as a ``torch.library.triton_op``.

A ``triton_op`` is traceable: ``torch.export`` keeps it as one node and AOTInductor (``aoti_compile_and_package``)
decomposes it into the user-defined Triton kernels and compiles them into the package. Only imported when Triton is.
"""

from __future__ import annotations

import torch

from sana_deploy.plugins.linear_attention.launch import linear_attention_triton
from sana_deploy.plugins.linear_attention.op import linear_attention_op
from sana_deploy.plugins.triton_utils import can_run


@torch.library.triton_op("sana::linear_attention_triton", mutates_args=())
def linear_attention_triton_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, eps: float
) -> torch.Tensor:
    """``sana::linear_attention`` computed by the Triton kernels (inputs made contiguous first)."""
    return linear_attention_triton(q.contiguous(), k.contiguous(), v.contiguous(), heads, eps)


def linear_attention_triton_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, eps: float):
    """The ``triton`` kernel set's linear attention: the triton op where it can run, else the reference op."""
    if can_run(q):
        return linear_attention_triton_op(q, k, v, heads, eps)
    return linear_attention_op(q, k, v, heads, eps)
