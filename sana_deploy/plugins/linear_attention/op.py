"""``sana::linear_attention`` torch custom op (fake impl from the one shape function)."""

from __future__ import annotations

import torch

from sana_deploy.plugins.linear_attention.ref import linear_attention_ref
from sana_deploy.plugins.registry import implementation, register_kernel


def linear_attention_shape(q_shape: tuple, k_shape: tuple, v_shape: tuple, heads: int) -> tuple:
    """Output shape (B, N, C) of linear attention; validates the inputs' shapes against each other."""
    assert len(q_shape) == 3, f"q must be (B, N, C), got {tuple(q_shape)}"
    assert tuple(k_shape) == tuple(v_shape), f"k {tuple(k_shape)} and v {tuple(v_shape)} must match"
    assert q_shape[2] == k_shape[2], "q and k must have the same channel count"
    assert q_shape[2] % heads == 0, f"channels {q_shape[2]} not divisible by heads {heads}"
    return tuple(q_shape)


@torch.library.custom_op("sana::linear_attention", mutates_args=())
def linear_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, eps: float) -> torch.Tensor:
    """``sana::linear_attention``: ReLU linear attention; see :func:`linear_attention_ref` for the math."""
    return linear_attention_ref(q, k, v, heads, eps)


@linear_attention_op.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, eps: float) -> torch.Tensor:
    return q.new_empty(linear_attention_shape(q.shape, k.shape, v.shape, heads))


register_kernel("linear_attention", "reference", linear_attention_op)
register_kernel("linear_attention", "inline", linear_attention_ref)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, eps: float) -> torch.Tensor:
    """ReLU linear attention with the active kernel set (:func:`sana_deploy.plugins.use_kernels`)."""
    return implementation("linear_attention")(q, k, v, heads, eps)
