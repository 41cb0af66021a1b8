"""Triton kernels vs their PyTorch references in Triton's CPU interpreter (a TRITON_INTERPRET=1 child process).

Tolerance: kernel error vs the fp32 reference (computed on the upcast inputs) <= 2x PyTorch's own error
(the reference run in the low dtype) + a small floor, so fp32 cases are held to ~1e-5 relative.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

WORKER = Path(__file__).with_name("interp_worker.py")
DTYPES = ("fp32", "fp16", "bf16")

# (batch, tokens, heads, splits): token counts off the 64-token block, forced multi-split reductions.
LA_SHAPES = [(1, 1, 1, None), (2, 77, 2, None), (1, 130, 3, 3), (2, 200, 4, 2)]
LA_SHAPES_SLOW = [(1, 1000, 4, None), (2, 1030, 2, 7), (1, 4100, 1, None)]
# (batch, H, W, F, rows per program): non-square latents, partial row blocks and channel blocks.
DW_SHAPES = [(1, 1, 1, 12, 8), (2, 5, 7, 40, 2), (1, 3, 33, 16, 1)]
DW_SHAPES_SLOW = [(1, 17, 9, 70, 8), (2, 32, 18, 130, 8)]
MF_SHAPES = [(1, 5, 7, 16, 40)]  # (batch, H, W, C, F)
MF_SHAPES_SLOW = [(2, 9, 16, 32, 80)]


def _cases(slow: bool) -> list[dict]:
    la, dw, mf = (LA_SHAPES_SLOW, DW_SHAPES_SLOW, MF_SHAPES_SLOW) if slow else (LA_SHAPES, DW_SHAPES, MF_SHAPES)
    cases = []
    for dt in DTYPES:
        for i, (b, n, h, s) in enumerate(la):
            args = {"b": b, "n": n, "heads": h, "dtype": dt, "splits": s, "seed": i}
            cases.append({"id": f"la-{b}x{n}x{h}h-s{s}-{dt}", "kind": "linear_attention", "args": args})
        for i, (b, h, w, f, rows) in enumerate(dw):
            args = {"b": b, "h": h, "w": w, "f": f, "rows": rows, "dtype": dt, "seed": i}
            cases.append({"id": f"dw-{b}x{h}x{w}x{f}-r{rows}-{dt}", "kind": "dw_glu", "args": args})
        for i, (b, h, w, c, f) in enumerate(mf):
            args = {"b": b, "h": h, "w": w, "c": c, "f": f, "dtype": dt, "seed": i}
            cases.append({"id": f"mf-{b}x{h}x{w}x{c}x{f}-{dt}", "kind": "mix_ffn", "args": args})
    if not slow:
        ops = ("linear_attention_triton", "mix_ffn_triton")
        cases += [{"id": f"opcheck-{op}", "kind": "opcheck", "args": {"op": op}} for op in ops]
        cases.append({"id": "dispatch", "kind": "dispatch", "args": {}})
    return cases


def _run_worker(cases: list[dict]) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(WORKER)], input=json.dumps(cases), capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def results() -> dict:
    return _run_worker(_cases(slow=False))


@pytest.fixture(scope="module")
def results_slow() -> dict:
    return _run_worker(_cases(slow=True))


def _check_tolerance(r: dict) -> None:
    assert "error" not in r, r.get("error")
    floor = 1e-5 * max(1.0, r["ref_max"])
    bound = 2 * r["torch_err"] + floor
    print(f"kernel err {r['kernel_err']:.3e}, torch err {r['torch_err']:.3e}, bound {bound:.3e}")
    assert r["finite"] and r["dtype_ok"] and r["shape_ok"]
    assert r["kernel_err"] <= bound


@pytest.mark.parametrize("case", [c["id"] for c in _cases(slow=False) if c["kind"] not in ("opcheck", "dispatch")])
def test_kernel_matches_reference(results: dict, case: str) -> None:
    _check_tolerance(results[case])


@pytest.mark.slow
@pytest.mark.parametrize("case", [c["id"] for c in _cases(slow=True)])
def test_kernel_matches_reference_large(results_slow: dict, case: str) -> None:
    _check_tolerance(results_slow[case])


@pytest.mark.parametrize("op", ["linear_attention_triton", "mix_ffn_triton"])
def test_triton_op_opcheck_interpreted(results: dict, op: str) -> None:
    r = results[f"opcheck-{op}"]
    assert "error" not in r, r.get("error")
    assert set(r["opcheck"]) == {"test_schema", "test_autograd_registration", "test_faketensor"}
    assert all(v == "SUCCESS" for v in r["opcheck"].values()), r["opcheck"]


def test_triton_kernel_set_dispatch_on_cpu_interpreter(results: dict) -> None:
    r = results["dispatch"]
    assert "error" not in r, r.get("error")
    assert r["ran_triton_ops"], "use_kernels('triton') did not run the sana::*_triton ops"
    assert r["la_err"] < 1e-5 and r["mf_err"] < 1e-5, r
