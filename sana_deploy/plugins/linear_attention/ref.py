"""Pure-PyTorch reference of Sana's ReLU linear attention (docs/SANA.md#linear-attention)."""

from __future__ import annotations

import torch

FP16_MAX = 65504.0


def linear_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, eps: float) -> torch.Tensor:
    """Sana linear attention on projected tokens.

    q, k, v: (B, N, C) with C = heads * d, any float dtype. Returns (B, N, C) in q's dtype.
    ReLU on q and k (not v), all matmuls in fp32, ``O_i = sum_j v_j (k_j.q_i) / (sum_j k_j.q_i + eps)``
    (the pad-v-with-ones trick written as its two halves), clamped to the fp16 range before the cast back.
    """
    b, n, c = q.shape
    d = c // heads
    qf = torch.relu(q).float().view(b, n, heads, d).transpose(1, 2)  # (B, h, N, d)
    kf = torch.relu(k).float().view(b, -1, heads, d).transpose(1, 2)  # (B, h, M, d)
    vf = v.float().view(b, -1, heads, d).transpose(1, 2)  # (B, h, M, d)
    kv = kf.transpose(-1, -2) @ vf  # (B, h, d, d): sum_j k_j v_j^T
    ksum = kf.sum(dim=2, keepdim=True).transpose(-1, -2)  # (B, h, d, 1): sum_j k_j
    out = (qf @ kv) / (qf @ ksum + eps)
    out = out.clamp(-FP16_MAX, FP16_MAX)
    return out.transpose(1, 2).reshape(b, n, c).to(q.dtype)
