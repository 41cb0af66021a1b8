"""Run Triton kernels in Triton's CPU interpreter and report their errors (driven by test_plugin_kernels_cpu.py).

Triton picks interpreter vs GPU mode once per process, when ``triton.language`` is imported, so the interpreted
kernels run here, in a child process started with TRITON_INTERPRET=1, while the pytest process stays in JIT mode
(AOT PTX compile). Reads a JSON list of cases on stdin, writes {case id: result} JSON on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _errors(kernel: torch.Tensor, low: torch.Tensor, ref32: torch.Tensor) -> dict:
    return {
        "kernel_err": (kernel.float() - ref32).abs().max().item(),
        "torch_err": (low.float() - ref32).abs().max().item(),
        "ref_max": ref32.abs().max().item(),
        "finite": bool(torch.isfinite(kernel.float()).all()),
    }


def _emulate_store(out32: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round an fp32 kernel output to ``dtype`` as the GPU store does (round to nearest even). The interpreter
    truncates fp32 -> bf16 casts, so bf16 kernels are run with an fp32 output and rounded here."""
    return out32.to(dtype)


def linear_attention_case(b: int, n: int, heads: int, dtype: str, splits: int | None, seed: int) -> dict:
    from sana_deploy.plugins.linear_attention.launch import linear_attention_triton
    from sana_deploy.plugins.linear_attention.ref import linear_attention_ref

    g = torch.Generator().manual_seed(seed)
    dt = DTYPES[dtype]
    q, k, v = (torch.randn(b, n, heads * 32, generator=g).to(dt) for _ in range(3))
    out_dtype = torch.float32 if dt == torch.bfloat16 else None
    out = linear_attention_triton(q, k, v, heads, 1e-15, splits=splits, out_dtype=out_dtype)
    out = _emulate_store(out, dt)
    ref32 = linear_attention_ref(q.float(), k.float(), v.float(), heads, 1e-15)
    low = linear_attention_ref(q, k, v, heads, 1e-15)
    return {**_errors(out, low, ref32), "dtype_ok": out.dtype == dt, "shape_ok": out.shape == q.shape}


def _mix_ffn_inputs(b: int, h: int, w: int, c: int, f: int, dt: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h, w, c, generator=g)
    w_inv = torch.randn(2 * f, c, generator=g) / c**0.5
    b_inv = torch.randn(2 * f, generator=g) * 0.1
    w_dw = torch.randn(2 * f, 1, 3, 3, generator=g) / 3
    b_dw = torch.randn(2 * f, generator=g) * 0.1
    w_pt = torch.randn(c, f, generator=g) / f**0.5
    return [t.to(dt) for t in (x, w_inv, b_inv, w_dw, b_dw, w_pt)]


def dw_glu_case(b: int, h: int, w: int, f: int, rows: int, dtype: str, seed: int) -> dict:
    from sana_deploy.plugins.mix_ffn.launch import dw_glu_triton
    from sana_deploy.plugins.mix_ffn.ref import dw_glu_ref

    dt = DTYPES[dtype]
    x, w_inv, b_inv, w_dw, b_dw, _ = _mix_ffn_inputs(b, h, w, 8, f, dt, seed)
    h_pre = F.linear(x, w_inv, b_inv).contiguous()
    out = _emulate_store(dw_glu_triton(h_pre, w_dw, b_dw, out_dtype=torch.float32, rows=rows), dt)
    ref32 = dw_glu_ref(h_pre.float(), w_dw.float(), b_dw.float())
    low = dw_glu_ref(h_pre, w_dw, b_dw)
    return {**_errors(out, low, ref32), "dtype_ok": out.dtype == dt, "shape_ok": out.shape == (b, h, w, f)}


def mix_ffn_case(b: int, h: int, w: int, c: int, f: int, dtype: str, seed: int) -> dict:
    from sana_deploy.plugins.mix_ffn.launch import mix_ffn_triton
    from sana_deploy.plugins.mix_ffn.ref import mix_ffn_ref

    dt = DTYPES[dtype]
    args = _mix_ffn_inputs(b, h, w, c, f, dt, seed)
    out = mix_ffn_triton(*args)
    ref32 = mix_ffn_ref(*[a.float() for a in args])
    low = mix_ffn_ref(*args)
    return {**_errors(out, low, ref32), "dtype_ok": out.dtype == dt, "shape_ok": out.shape == (b, h, w, c)}


def opcheck_case(op: str) -> dict:
    """torch.library.opcheck of a triton_op with the checks an interpreted kernel supports (no graph tracing:
    interpreted kernels cannot be traced, so test_aot_dispatch_dynamic only runs on the GPU)."""
    import sana_deploy.plugins.linear_attention.triton_op as la
    import sana_deploy.plugins.mix_ffn.triton_op as mf

    if op == "linear_attention_triton":
        fn, args = la.linear_attention_triton_op, (*(torch.randn(2, 37, 64) for _ in range(3)), 2, 1e-15)
    else:
        fn, args = mf.mix_ffn_triton_op, tuple(_mix_ffn_inputs(1, 3, 5, 8, 12, torch.float32, 0))
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    result = torch.library.opcheck(fn, args, test_utils=utils)
    return {"opcheck": {k: v for k, v in result.items()}}


def dispatch_case() -> dict:
    """``use_kernels("triton")`` on CPU under the interpreter runs the Triton op and matches the reference."""
    from sana_deploy.plugins import use_kernels
    from sana_deploy.plugins.linear_attention import linear_attention, linear_attention_ref
    from sana_deploy.plugins.mix_ffn import mix_ffn, mix_ffn_ref

    q = torch.randn(1, 20, 64)
    args = _mix_ffn_inputs(1, 3, 4, 8, 12, torch.float32, 1)
    with use_kernels("triton"), torch.autograd.profiler.profile() as prof:
        la = linear_attention(q, q, q, 2, 1e-15)
        mf = mix_ffn(*args)
    names = {e.name for e in prof.function_events}
    return {
        "la_err": (la - linear_attention_ref(q, q, q, 2, 1e-15)).abs().max().item(),
        "mf_err": (mf - mix_ffn_ref(*args)).abs().max().item(),
        "ran_triton_ops": "sana::linear_attention_triton" in names and "sana::mix_ffn_triton" in names,
    }


CASES = {
    "linear_attention": linear_attention_case,
    "dw_glu": dw_glu_case,
    "mix_ffn": mix_ffn_case,
    "opcheck": opcheck_case,
    "dispatch": dispatch_case,
}


def main() -> None:
    results = {}
    for case in json.load(sys.stdin):
        try:
            results[case["id"]] = CASES[case["kind"]](**case["args"])
        except Exception:  # reported per case, so one broken kernel does not hide the others
            results[case["id"]] = {"error": traceback.format_exc()}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
