"""Triton kernels for Sana's ReLU linear attention (math: ref.py, docs/SANA.md#linear-attention).

Per (batch, head) the op needs one d x d state ``KV = sum_j relu(k_j) v_j^T`` plus the row ``ks = sum_j relu(k_j)``
(the ones-padding of v written as its own vector), then ``o_i = relu(q_i) KV / (relu(q_i) . ks + eps)``.
Tokens are (B, N, C) with C = heads * D, head h owning channels [h*D, (h+1)*D).

* ``la_state_kernel`` (grid B*heads x splits): partial state over one token range, fp32 accumulation.
* ``la_apply_kernel`` (grid B*heads x splits): sums the split partials, applies them to its token range.
``DOT_FP32`` (constexpr) upcasts the 16-bit state-GEMM operands; the launcher sets it only under Triton's
interpreter, whose bf16 ``tl.dot`` is wrong (triton 3.9), so GPU builds keep bf16/fp16 tensor-core operands.

* ``la_fused_kernel`` (grid B*heads): both passes in one program; used when one split suffices and by the
  TensorRT AOT plugin (one kernel per plugin). Its argument order is inputs, int scalars, output, constexprs,
  the layout TensorRT's AOT plugins launch with.

ReLU, the normaliser and the division are fused; the fp16-range clamp is applied before the store.
Imported lazily by the launcher (launch.py), so ``import sana_deploy`` never needs Triton.
"""

import triton
import triton.language as tl


@triton.jit
def _state_tile(K, V, base, C, n0, n_end, kv, ks, BLOCK_N: tl.constexpr, D: tl.constexpr, DOT_FP32: tl.constexpr):
    """Add tokens [n0, min(n0 + BLOCK_N, n_end)) to the fp32 state (kv: D x D, ks: D)."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    mask = (offs_n < n_end)[:, None]
    ptrs = base + offs_n[:, None].to(tl.int64) * C + offs_d[None, :]
    v = tl.load(V + ptrs, mask=mask, other=0.0)
    k = tl.load(K + ptrs, mask=mask, other=0.0).to(tl.float32)
    k = tl.maximum(k, 0.0)  # ReLU in fp32: exact, and bf16 compares are not reliable in the interpreter
    ks += tl.sum(k, axis=0)
    if DOT_FP32:  # Triton's interpreter gets bf16 tl.dot wrong; exact either way (products of 16-bit values)
        v = v.to(tl.float32)
    kv += tl.dot(tl.trans(k.to(v.dtype)), v, input_precision="ieee")  # 16-bit operands, fp32 accumulation
    return kv, ks


@triton.jit
def _apply_tile(Q, OUT, base, C, n0, n_end, kv, ks, EPS: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """o = relu(q) kv / (relu(q) . ks + eps) for tokens [n0, min(n0 + BLOCK_N, n_end)), clamped to +-65504."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    mask = (offs_n < n_end)[:, None]
    ptrs = base + offs_n[:, None].to(tl.int64) * C + offs_d[None, :]
    q = tl.load(Q + ptrs, mask=mask, other=0.0).to(tl.float32)
    q = tl.maximum(q, 0.0)
    num = tl.dot(q, kv, input_precision="ieee")
    den = tl.sum(q * ks[None, :], axis=1) + EPS
    out = num / den[:, None]
    out = tl.minimum(tl.maximum(out, -65504.0), 65504.0)
    tl.store(OUT + ptrs, out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def la_state_kernel(
    K, V, KV_PART, KS_PART, N, HEADS, TOKENS_PER_SPLIT, BLOCK_N: tl.constexpr, D: tl.constexpr, DOT_FP32: tl.constexpr
):
    """Partial state of split ``program_id(1)`` -> KV_PART[bh, s] (D x D fp32), KS_PART[bh, s] (D fp32)."""
    pid_bh = tl.program_id(0)
    pid_s = tl.program_id(1)
    splits = tl.num_programs(1)
    C = HEADS * D
    base = (pid_bh // HEADS).to(tl.int64) * N * C + (pid_bh % HEADS) * D
    n_start = pid_s * TOKENS_PER_SPLIT
    n_end = tl.minimum(n_start + TOKENS_PER_SPLIT, N)
    kv = tl.zeros((D, D), dtype=tl.float32)
    ks = tl.zeros((D,), dtype=tl.float32)
    for n0 in range(n_start, n_end, BLOCK_N):
        kv, ks = _state_tile(K, V, base, C, n0, n_end, kv, ks, BLOCK_N, D, DOT_FP32)
    offs_d = tl.arange(0, D)
    part = pid_bh.to(tl.int64) * splits + pid_s
    tl.store(KV_PART + part * D * D + offs_d[:, None] * D + offs_d[None, :], kv)
    tl.store(KS_PART + part * D + offs_d, ks)


@triton.jit
def la_apply_kernel(
    Q, KV_PART, KS_PART, OUT, N, HEADS, TOKENS_PER_SPLIT, EPS: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr
):
    """Reduce the split partials of (b, h) and write the outputs of token range ``program_id(1)``."""
    pid_bh = tl.program_id(0)
    pid_s = tl.program_id(1)
    splits = tl.num_programs(1)
    C = HEADS * D
    base = (pid_bh // HEADS).to(tl.int64) * N * C + (pid_bh % HEADS) * D
    offs_d = tl.arange(0, D)
    kv = tl.zeros((D, D), dtype=tl.float32)
    ks = tl.zeros((D,), dtype=tl.float32)
    for s in range(0, splits):
        part = pid_bh.to(tl.int64) * splits + s
        kv += tl.load(KV_PART + part * D * D + offs_d[:, None] * D + offs_d[None, :])
        ks += tl.load(KS_PART + part * D + offs_d)
    n_start = pid_s * TOKENS_PER_SPLIT
    n_end = tl.minimum(n_start + TOKENS_PER_SPLIT, N)
    for n0 in range(n_start, n_end, BLOCK_N):
        _apply_tile(Q, OUT, base, C, n0, n_end, kv, ks, EPS, BLOCK_N, D)


@triton.jit
def la_fused_kernel(
    Q, K, V, N, HEADS, OUT, EPS: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, DOT_FP32: tl.constexpr
):
    """One (b, h) per program: state over all N tokens, then the outputs of all N tokens."""
    pid_bh = tl.program_id(0)
    C = HEADS * D
    base = (pid_bh // HEADS).to(tl.int64) * N * C + (pid_bh % HEADS) * D
    kv = tl.zeros((D, D), dtype=tl.float32)
    ks = tl.zeros((D,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        kv, ks = _state_tile(K, V, base, C, n0, N, kv, ks, BLOCK_N, D, DOT_FP32)
    for n0 in range(0, N, BLOCK_N):
        _apply_tile(Q, OUT, base, C, n0, N, kv, ks, EPS, BLOCK_N, D)
