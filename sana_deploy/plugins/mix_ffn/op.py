"""``sana::mix_ffn`` torch custom op (fake impl from the one shape function)."""

from __future__ import annotations

import torch

from sana_deploy.plugins.mix_ffn.ref import mix_ffn_ref
from sana_deploy.plugins.registry import implementation, register_kernel


def mix_ffn_shape(x_shape: tuple, w_inv_shape: tuple, w_dw_shape: tuple, w_pt_shape: tuple) -> tuple:
    """Output shape (B, H, W, C_out) of Mix-FFN; validates the weight shapes against the input."""
    assert len(x_shape) == 4, f"x must be (B, H, W, C), got {tuple(x_shape)}"
    two_f, c = w_inv_shape
    assert c == x_shape[3], f"w_inv expects {c} channels, x has {x_shape[3]}"
    assert tuple(w_dw_shape) == (two_f, 1, 3, 3), f"w_dw must be ({two_f}, 1, 3, 3), got {tuple(w_dw_shape)}"
    assert w_pt_shape[1] * 2 == two_f, f"w_pt must take {two_f // 2} channels, got {w_pt_shape[1]}"
    return (x_shape[0], x_shape[1], x_shape[2], w_pt_shape[0])


@torch.library.custom_op("sana::mix_ffn", mutates_args=())
def mix_ffn_op(
    x: torch.Tensor,
    w_inv: torch.Tensor,
    b_inv: torch.Tensor,
    w_dw: torch.Tensor,
    b_dw: torch.Tensor,
    w_pt: torch.Tensor,
) -> torch.Tensor:
    """``sana::mix_ffn``: Mix-FFN on (B, H, W, C) tokens; see :func:`mix_ffn_ref` for the math."""
    return mix_ffn_ref(x, w_inv, b_inv, w_dw, b_dw, w_pt)


@mix_ffn_op.register_fake
def _(x, w_inv, b_inv, w_dw, b_dw, w_pt) -> torch.Tensor:
    return x.new_empty(mix_ffn_shape(x.shape, w_inv.shape, w_dw.shape, w_pt.shape))


register_kernel("mix_ffn", "reference", mix_ffn_op)
register_kernel("mix_ffn", "inline", mix_ffn_ref)


def mix_ffn(
    x: torch.Tensor,
    w_inv: torch.Tensor,
    b_inv: torch.Tensor,
    w_dw: torch.Tensor,
    b_dw: torch.Tensor,
    w_pt: torch.Tensor,
) -> torch.Tensor:
    """Mix-FFN with the active kernel set (:func:`sana_deploy.plugins.use_kernels`)."""
    return implementation("mix_ffn")(x, w_inv, b_inv, w_dw, b_dw, w_pt)
