"""Ahead-of-time PTX for the TensorRT AOT plugins: ``triton.compile`` of one kernel per op for a target SM.

Works without a GPU (Triton's bundled LLVM/ptxas) in a process that is not running Triton's interpreter.
The kernels' argument order is inputs, int32 scalars, output (what a QDP ``aot_impl`` launch passes), followed
by the scratch pointers recent Triton versions append; those are unused when ``global_scratch_size`` is 0,
which :func:`compile_ptx` asserts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sana_deploy.plugins.triton_utils import interpreting, triton_dtype_name

AOT_OPS = ("linear_attention", "mix_ffn")


@dataclass(frozen=True)
class AotKernel:
    """One compiled kernel: what ``trtp.aot_impl`` returns, plus its launch facts."""

    name: str
    ptx: str
    num_warps: int
    shared_mem: int
    sm: int


def _source(op: str, dtype: torch.dtype, eps: float):
    """(kernel, signature, constexprs) of the AOT kernel of ``op``."""
    t = f"*{triton_dtype_name(dtype)}"
    if op == "linear_attention":
        from sana_deploy.plugins.linear_attention import kernel
        from sana_deploy.plugins.linear_attention.launch import BLOCK_N, HEAD_DIM

        sig = {"Q": t, "K": t, "V": t, "N": "i32", "HEADS": "i32", "OUT": t}
        consts = {"EPS": eps, "BLOCK_N": BLOCK_N, "D": HEAD_DIM, "DOT_FP32": False}
        return kernel.la_fused_kernel, sig, consts
    if op == "mix_ffn":
        from sana_deploy.plugins.mix_ffn import kernel
        from sana_deploy.plugins.mix_ffn.launch import BLOCK_C, BLOCK_W, ROWS

        sig = {"H_PRE": t, "W_DW": t, "B_DW": t, "HEIGHT": "i32", "WIDTH": "i32", "F": "i32", "Y": t}
        return kernel.dw_glu_kernel, sig, {"ROWS": ROWS, "BLOCK_W": BLOCK_W, "BLOCK_C": BLOCK_C}
    raise ValueError(f"no AOT kernel for op {op!r}; choose one of {', '.join(AOT_OPS)}")


def compile_ptx(
    op: str,
    sm: int = 90,
    dtype: torch.dtype = torch.bfloat16,
    eps: float = 1e-15,
    multiple_of_16: tuple[str, ...] = (),
) -> AotKernel:
    """Compile the AOT kernel of ``op`` to PTX for ``sm`` (e.g. 80, 90) and ``dtype``.

    ``linear_attention``: the fused kernel with ``eps`` baked in. ``mix_ffn``: the fused SiLU/depthwise/gate kernel.
    ``multiple_of_16``: int arguments the caller guarantees are multiples of 16 (e.g. ``("F",)``), which lets
    Triton vectorize the channel loads as its JIT does by specialization.
    """
    if interpreting():
        raise RuntimeError("compile_ptx needs a process without TRITON_INTERPRET=1 (Triton cannot mix the modes)")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, sig, consts = _source(op, dtype, eps)
    signature = {**sig, **{name: "constexpr" for name in consts}}
    pointers = [i for i, ty in enumerate(sig.values()) if ty.startswith("*")]
    aligned = pointers + [list(sig).index(name) for name in multiple_of_16]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}  # TensorRT allocations are >= 256-byte aligned
    try:
        src = ASTSource(fn, signature, constexprs=consts, attrs=attrs)
    except TypeError:  # older Triton spelling
        src = ASTSource(fn, signature, constants=consts)
    compiled = triton.compile(src, target=GPUTarget("cuda", sm, 32))
    meta = compiled.metadata
    scratch = getattr(meta, "global_scratch_size", 0) + getattr(meta, "profile_scratch_size", 0)
    assert scratch == 0, f"{meta.name} needs {scratch} B of global scratch, which a TensorRT AOT launch cannot pass"
    return AotKernel(meta.name, compiled.asm["ptx"], meta.num_warps, meta.shared, sm)
