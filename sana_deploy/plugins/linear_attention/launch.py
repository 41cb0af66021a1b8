"""Launcher of the linear-attention Triton kernels (kernel.py)."""

from __future__ import annotations

import torch

from sana_deploy.plugins.linear_attention.op import linear_attention_shape
from sana_deploy.plugins.triton_utils import check_device, interpreting, launch, sm_count

HEAD_DIM = 32
BLOCK_N = 64
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def num_splits(n: int, batch_heads: int, sms: int, block_n: int = BLOCK_N) -> tuple[int, int]:
    """(splits, tokens per split): enough programs for ~2 waves of ``sms``, each split a multiple of ``block_n``."""
    blocks = max(1, -(-n // block_n))
    splits = max(1, min(blocks, -(-2 * sms // batch_heads)))
    tokens = -(-blocks // splits) * block_n
    return -(-n // tokens) if n else 1, tokens


def linear_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    eps: float,
    splits: int | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """ReLU linear attention with the Triton kernels; same math and output as ``linear_attention_ref``.

    q, k, v: (B, N, C) contiguous, one dtype of float32 / float16 / bfloat16, C = heads * 32, on CUDA (or CPU in a
    process started with TRITON_INTERPRET=1). Returns (B, N, C) in q's dtype. State math in fp32.
    ``splits``: token splits of the state reduction (None: from N, B*heads and the SM count); 1 runs the single
    fused kernel. ``out_dtype``: output dtype (default q's; the CPU tests use float32 because Triton's interpreter
    truncates fp32 -> bf16 casts where the GPU rounds to nearest).
    """
    out_shape = linear_attention_shape(q.shape, k.shape, v.shape, heads)
    assert q.shape == k.shape, f"q {tuple(q.shape)} and k {tuple(k.shape)} must match (self-attention)"
    assert q.dtype in _DTYPES and q.dtype == k.dtype == v.dtype, f"dtypes {q.dtype}, {k.dtype}, {v.dtype}"
    assert q.shape[2] == heads * HEAD_DIM, f"channels {q.shape[2]} != heads {heads} * {HEAD_DIM}"
    assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous(), "q, k, v must be contiguous"
    assert q.device == k.device == v.device, "q, k, v must be on one device"
    check_device(q)
    from sana_deploy.plugins.linear_attention import kernel as kern

    b, n, _ = q.shape
    out = torch.empty(out_shape, dtype=out_dtype or q.dtype, device=q.device)
    if splits is None:
        splits, tokens = num_splits(n, b * heads, sm_count(q.device))
    else:
        tokens = -(-max(1, -(-n // splits)) // BLOCK_N) * BLOCK_N
        splits = max(1, -(-n // tokens))
    consts = {"BLOCK_N": BLOCK_N, "D": HEAD_DIM}
    dot_fp32 = interpreting() and q.dtype == torch.bfloat16
    if splits == 1:
        launch(kern.la_fused_kernel, (b * heads,), q, k, v, n, heads, out, EPS=eps, DOT_FP32=dot_fp32, **consts)
        return out
    kv = torch.empty((b * heads, splits, HEAD_DIM, HEAD_DIM), dtype=torch.float32, device=q.device)
    ks = torch.empty((b * heads, splits, HEAD_DIM), dtype=torch.float32, device=q.device)
    grid = (b * heads, splits)
    launch(kern.la_state_kernel, grid, k, v, kv, ks, n, heads, tokens, DOT_FP32=dot_fp32, **consts)
    launch(kern.la_apply_kernel, grid, q, kv, ks, out, n, heads, tokens, EPS=eps, **consts)
    return out
