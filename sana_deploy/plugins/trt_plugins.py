"""TensorRT quickly deployable plugins (``tensorrt.plugin``, TensorRT >= 10.9) for the ``sana`` ONNX nodes.

UNVERIFIED INSIDE TENSORRT: ``tensorrt`` (with ``tensorrt.plugin``) is not installable where this was written
(only tensorrt-rtx, which has no plugin API), so nothing here has been registered with or run by TensorRT. What is
verified without it: the shape logic (``trt_shapes``, the ops' one shape function) and the AOT PTX compile
(``aot.compile_ptx``), both by tests/plugins.

Plugins (name, namespace ``sana``, version ``1``, matching the ONNX nodes of export/onnx_functions.py, which the
ONNX parser maps to plugins by op type + ``plugin_namespace`` / ``plugin_version`` attributes):

* ``LinearAttention(q, k, v; heads: int, eps: float)``: register, autotune (torch and Triton tactics), JIT impl,
  and an AOT impl (the fused Triton kernel as PTX, ``eps`` baked in) so engines run without Python.
* ``MixFFN(x, w_inv, b_inv, w_dw, b_dw, w_pt; dw_channels: int)``: register, autotune, JIT impl (cuBLAS GEMMs +
  the fused Triton middle). No AOT impl: an AOT plugin launches one kernel and Mix-FFN is GEMM, kernel, GEMM.
* ``MixFFNGate(h_pre, w_dw, b_dw)``: the fused SiLU/depthwise/gate kernel alone, with an AOT impl, for graphs
  that keep the two 1x1 convs as native TensorRT convolutions (not what the current export emits).

Call :func:`register_trt_plugins` before parsing the ONNX model. (No ``from __future__ import annotations`` here:
``tensorrt.plugin`` reads the decorated functions' annotations, which must be real ``trtp`` types.)
"""

from typing import Any

import torch

from sana_deploy.errors import fail
from sana_deploy.plugins.linear_attention.op import linear_attention_shape
from sana_deploy.plugins.mix_ffn.op import mix_ffn_shape
from sana_deploy.plugins.trt_shapes import output_exprs

TACTIC_TORCH = 1
TACTIC_TRITON = 2
_registered = False


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}
    return table[dtype]


def _target_sm() -> int:
    """The SM to compile AOT PTX for: the current GPU's, else 90 (H100)."""
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return major * 10 + minor
    return 90


def register_trt_plugins() -> None:
    """Register the ``sana::`` plugins with TensorRT's plugin registry (once per process)."""
    global _registered
    if _registered:
        return
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as e:
        fail(f"TensorRT plugins need `tensorrt` >= 10.9 with `tensorrt.plugin` ({e}); install sana-deploy[tensorrt].")
    _register_linear_attention(trt, trtp)
    _register_mix_ffn(trt, trtp)
    _register_mix_ffn_gate(trt, trtp)
    _registered = True


def _register_linear_attention(trt: Any, trtp: Any) -> None:
    from sana_deploy.plugins.aot import compile_ptx

    @trtp.register("sana::LinearAttention")
    def desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, heads: int, eps: float) -> trtp.TensorDesc:
        shape = output_exprs(linear_attention_shape, q.shape_expr, k.shape_expr, v.shape_expr, heads=heads)
        return trtp.from_shape_expr(shape, dtype=q.dtype)

    @trtp.autotune("sana::LinearAttention")
    def autotune(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, outputs: tuple) -> list:
        combo = trtp.AutoTuneCombination("FP32|FP16|BF16, FP32|FP16|BF16, FP32|FP16|BF16, FP32|FP16|BF16", "LINEAR")
        combo.tactics([TACTIC_TORCH, TACTIC_TRITON])
        return [combo]

    @trtp.impl("sana::LinearAttention")
    def impl(
        q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, heads: int, eps: float, outputs: tuple, stream: int, tactic: int
    ) -> None:
        from sana_deploy.plugins.linear_attention.ref import linear_attention_ref

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            qt, kt, vt = (torch.as_tensor(t, device="cuda") for t in (q, k, v))
            out = torch.as_tensor(outputs[0], device="cuda")
            if tactic == TACTIC_TRITON:
                from sana_deploy.plugins.linear_attention.launch import linear_attention_triton

                out.copy_(linear_attention_triton(qt, kt, vt, heads, eps))
            else:
                out.copy_(linear_attention_ref(qt, kt, vt, heads, eps))

    @trtp.aot_impl("sana::LinearAttention")
    def aot_impl(
        q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, heads: int, eps: float, outputs: tuple, tactic: int
    ) -> tuple:
        # Attributes are not serialized with AOT plugins: eps is a constexpr of the PTX, heads an int argument.
        kern = compile_ptx("linear_attention", _target_sm(), _torch_dtype(trt, q.dtype), eps=eps)
        params = trtp.KernelLaunchParams()
        params.grid_x = q.shape_expr[0] * heads  # one program per (batch, head): la_fused_kernel
        params.block_x = kern.num_warps * 32
        params.shared_mem = kern.shared_mem
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(q.shape_expr[1]), trtp.SymInt32(heads)])  # N, HEADS
        return kern.name.encode(), kern.ptx.encode(), params, extra


def _register_mix_ffn(trt: Any, trtp: Any) -> None:
    @trtp.register("sana::MixFFN")
    def desc(
        x: trtp.TensorDesc,
        w_inv: trtp.TensorDesc,
        b_inv: trtp.TensorDesc,
        w_dw: trtp.TensorDesc,
        b_dw: trtp.TensorDesc,
        w_pt: trtp.TensorDesc,
        dw_channels: int,
    ) -> trtp.TensorDesc:
        shape = output_exprs(mix_ffn_shape, x.shape_expr, w_inv.shape_expr, w_dw.shape_expr, w_pt.shape_expr)
        return trtp.from_shape_expr(shape, dtype=x.dtype)

    @trtp.autotune("sana::MixFFN")
    def autotune(x, w_inv, b_inv, w_dw, b_dw, w_pt, outputs: tuple) -> list:
        combo = trtp.AutoTuneCombination(", ".join(["FP32|FP16|BF16"] * 7), "LINEAR")
        combo.tactics([TACTIC_TORCH, TACTIC_TRITON])
        return [combo]

    @trtp.impl("sana::MixFFN")
    def impl(x, w_inv, b_inv, w_dw, b_dw, w_pt, dw_channels: int, outputs: tuple, stream: int, tactic: int) -> None:
        from sana_deploy.plugins.mix_ffn.ref import mix_ffn_ref

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            args = [torch.as_tensor(t, device="cuda") for t in (x, w_inv, b_inv, w_dw, b_dw, w_pt)]
            out = torch.as_tensor(outputs[0], device="cuda")
            if tactic == TACTIC_TRITON:
                from sana_deploy.plugins.mix_ffn.launch import mix_ffn_triton

                out.copy_(mix_ffn_triton(*args))
            else:
                out.copy_(mix_ffn_ref(*args))


def _register_mix_ffn_gate(trt: Any, trtp: Any) -> None:
    from sana_deploy.plugins.aot import compile_ptx

    @trtp.register("sana::MixFFNGate")
    def desc(h_pre: trtp.TensorDesc, w_dw: trtp.TensorDesc, b_dw: trtp.TensorDesc) -> trtp.TensorDesc:
        b, h, w, two_f = h_pre.shape_expr
        return trtp.from_shape_expr((b, h, w, two_f // 2), dtype=h_pre.dtype)

    @trtp.autotune("sana::MixFFNGate")
    def autotune(h_pre, w_dw, b_dw, outputs: tuple) -> list:
        return [trtp.AutoTuneCombination("FP32|FP16|BF16, FP32|FP16|BF16, FP32|FP16|BF16, FP32|FP16|BF16", "LINEAR")]

    @trtp.impl("sana::MixFFNGate")
    def impl(h_pre, w_dw, b_dw, outputs: tuple, stream: int) -> None:
        from sana_deploy.plugins.mix_ffn.launch import dw_glu_triton

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            args = [torch.as_tensor(t, device="cuda") for t in (h_pre, w_dw, b_dw)]
            torch.as_tensor(outputs[0], device="cuda").copy_(dw_glu_triton(*args))

    @trtp.aot_impl("sana::MixFFNGate")
    def aot_impl(h_pre, w_dw, b_dw, outputs: tuple, tactic: int) -> tuple:
        b, h, w, two_f = h_pre.shape_expr
        f = two_f // 2
        aligned = ("F",) if two_f.is_constant and two_f.constant_value() % 32 == 0 else ()
        kern = compile_ptx("mix_ffn", _target_sm(), _torch_dtype(trt, h_pre.dtype), multiple_of_16=aligned)
        from sana_deploy.plugins.mix_ffn.launch import BLOCK_C, BLOCK_W, ROWS

        params = trtp.KernelLaunchParams()
        params.grid_x = b * trtp.cdiv(h, ROWS)  # launch.dw_glu_grid as shape expressions
        params.grid_y = trtp.cdiv(w, BLOCK_W)
        params.grid_z = trtp.cdiv(f, BLOCK_C)
        params.block_x = kern.num_warps * 32
        params.shared_mem = kern.shared_mem
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (h, w, f)])  # HEIGHT, WIDTH, F
        return kern.name.encode(), kern.ptx.encode(), params, extra
