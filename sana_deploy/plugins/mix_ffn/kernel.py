"""Triton kernel for the middle of Sana's Mix-FFN (math: ref.py, docs/SANA.md#mix-ffn).

``dw_glu_kernel`` fuses SiLU (of the inverted 1x1 conv's output), the depthwise 3x3 conv (padding 1) + bias and the
GLU gate ``a * SiLU(g)``: it reads the (B, H, W, 2F) pre-activation once from memory and writes the (B, H, W, F)
gated result once. The 1x1 convs stay cuBLAS GEMMs in the launcher.

Tiling: a program owns ROWS output rows x BLOCK_W columns x BLOCK_C gate channels of one image and walks down its
rows. Each input row is loaded (three column shifts, from L1/L2) and SiLU'd once per shift, then added to the three
output rows it touches (rolling accumulators), so SiLU runs 3x per element instead of 9x. Math in fp32.
Argument order: inputs, int scalars, output, constexprs (the layout TensorRT's AOT plugins launch with).
Imported lazily by the launcher (launch.py), so ``import sana_deploy`` never needs Triton.
"""

import triton
import triton.language as tl


@triton.jit
def _tap(W_DW, chan, c_mask, t: tl.constexpr):
    """Depthwise weight ``t`` = 3 * ky + kx of channels ``chan`` as a (1, BLOCK_C) fp32 row."""
    return tl.load(W_DW + chan * 9 + t, mask=c_mask, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _silu_row(H_PRE, row_base, row_ok, offs_w, WIDTH, TWO_F, chan, c_mask):
    """SiLU(h[row, w + dx, chan]) for dx = -1, 0, 1 as fp32 tiles, zero outside the image (the conv's padding)."""
    ch = chan[None, :]
    cm = c_mask[None, :] & row_ok
    w = offs_w[:, None]
    m = tl.load(H_PRE + row_base + (w - 1) * TWO_F + ch, mask=cm & (w >= 1) & (w <= WIDTH), other=0.0)
    c = tl.load(H_PRE + row_base + w * TWO_F + ch, mask=cm & (w < WIDTH), other=0.0)
    p = tl.load(H_PRE + row_base + (w + 1) * TWO_F + ch, mask=cm & (w + 1 < WIDTH), other=0.0)
    m = m.to(tl.float32)
    c = c.to(tl.float32)
    p = p.to(tl.float32)
    return m * tl.sigmoid(m), c * tl.sigmoid(c), p * tl.sigmoid(p)


@triton.jit
def dw_glu_kernel(
    H_PRE,
    W_DW,
    B_DW,
    HEIGHT,
    WIDTH,
    F,
    Y,
    ROWS: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Y[b, r, w, c] = a * SiLU(g), (a, g) = dwconv3x3(SiLU(H_PRE))[..., c], [..., F + c] + bias.

    H_PRE: (B, HEIGHT, WIDTH, 2F), W_DW: (2F, 1, 3, 3), B_DW: (2F,), Y: (B, HEIGHT, WIDTH, F), all contiguous.
    Grid: (B * cdiv(HEIGHT, ROWS), cdiv(WIDTH, BLOCK_W), cdiv(F, BLOCK_C)).
    """
    pid_r = tl.program_id(0)
    row_blocks = tl.cdiv(HEIGHT, ROWS)
    b = pid_r // row_blocks
    r0 = (pid_r % row_blocks) * ROWS
    r_end = tl.minimum(r0 + ROWS, HEIGHT)
    offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < F
    ca = offs_c
    cg = offs_c + F
    two_f = 2 * F
    a00, a01, a02 = _tap(W_DW, ca, c_mask, 0), _tap(W_DW, ca, c_mask, 1), _tap(W_DW, ca, c_mask, 2)
    a10, a11, a12 = _tap(W_DW, ca, c_mask, 3), _tap(W_DW, ca, c_mask, 4), _tap(W_DW, ca, c_mask, 5)
    a20, a21, a22 = _tap(W_DW, ca, c_mask, 6), _tap(W_DW, ca, c_mask, 7), _tap(W_DW, ca, c_mask, 8)
    g00, g01, g02 = _tap(W_DW, cg, c_mask, 0), _tap(W_DW, cg, c_mask, 1), _tap(W_DW, cg, c_mask, 2)
    g10, g11, g12 = _tap(W_DW, cg, c_mask, 3), _tap(W_DW, cg, c_mask, 4), _tap(W_DW, cg, c_mask, 5)
    g20, g21, g22 = _tap(W_DW, cg, c_mask, 6), _tap(W_DW, cg, c_mask, 7), _tap(W_DW, cg, c_mask, 8)
    bias_a = tl.load(B_DW + ca, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    bias_g = tl.load(B_DW + cg, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    out_mask = (offs_w < WIDTH)[:, None] & c_mask[None, :]
    # Rolling partial sums: *_prev is output row ir - 1 (complete after input row ir), *_cur is output row ir.
    acc_a_prev = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
    acc_a_cur = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
    acc_g_prev = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
    acc_g_cur = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
    for ir in range(r0 - 1, r_end + 1):
        row_ok = (ir >= 0) & (ir < HEIGHT)
        row_base = ((b * HEIGHT + ir).to(tl.int64) * WIDTH) * two_f
        am, ac, ap = _silu_row(H_PRE, row_base, row_ok, offs_w, WIDTH, two_f, ca, c_mask)
        gm, gc, gp = _silu_row(H_PRE, row_base, row_ok, offs_w, WIDTH, two_f, cg, c_mask)
        a = acc_a_prev + a20 * am + a21 * ac + a22 * ap + bias_a
        g = acc_g_prev + g20 * gm + g21 * gc + g22 * gp + bias_g
        o = ir - 1
        y_base = ((b * HEIGHT + o).to(tl.int64) * WIDTH) * F
        y_ptrs = Y + y_base + offs_w[:, None] * F + offs_c[None, :]
        o_vec = offs_w * 0 + o
        o_ok = ((o_vec >= r0) & (o_vec < r_end))[:, None]
        tl.store(y_ptrs, (a * g * tl.sigmoid(g)).to(Y.dtype.element_ty), mask=out_mask & o_ok)
        acc_a_prev = acc_a_cur + a10 * am + a11 * ac + a12 * ap
        acc_g_prev = acc_g_cur + g10 * gm + g11 * gc + g12 * gp
        acc_a_cur = a00 * am + a01 * ac + a02 * ap
        acc_g_cur = g00 * gm + g01 * gc + g02 * gp
