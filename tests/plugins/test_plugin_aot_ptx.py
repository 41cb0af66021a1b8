"""AOT path of the TensorRT plugins without TensorRT: ``triton.compile`` to PTX for sm_80 / sm_90 (no GPU)."""

from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("triton")

from sana_deploy.plugins.aot import compile_ptx  # noqa: E402
from sana_deploy.plugins.triton_utils import interpreting  # noqa: E402

pytestmark = pytest.mark.skipif(interpreting(), reason="triton.compile needs a process without TRITON_INTERPRET=1")

# kernel name, number of kernel parameters TensorRT passes (inputs, int scalars, output)
EXPECTED = {"linear_attention": ("la_fused_kernel", 6), "mix_ffn": ("dw_glu_kernel", 7)}


@pytest.mark.parametrize("sm", [80, 90])
@pytest.mark.parametrize("op", ["linear_attention", "mix_ffn"])
def test_compile_ptx(op: str, sm: int) -> None:
    kern = compile_ptx(op, sm=sm, dtype=torch.bfloat16)
    name, n_params = EXPECTED[op]
    assert kern.name == name and kern.sm == sm
    assert re.search(rf"\.target sm_{sm}a?\b", kern.ptx)
    entry = re.search(rf"\.entry {name}\((.*?)\)", kern.ptx, re.S)
    assert entry, "no .entry for the kernel in the PTX"
    params = re.findall(rf"{name}_param_(\d+)", entry.group(1))
    assert len(params) >= n_params  # Triton >= 3.3 appends unused scratch pointers after ours
    assert kern.num_warps * 32 <= 1024 and 0 <= kern.shared_mem <= 48 * 1024


def test_compile_ptx_bakes_eps_and_dtype() -> None:
    a = compile_ptx("linear_attention", sm=90, dtype=torch.float16, eps=1e-15)
    b = compile_ptx("linear_attention", sm=90, dtype=torch.float16, eps=1e-8)
    assert a.ptx != b.ptx  # eps is a compile-time constant (AOT plugins do not serialize attributes)
    assert "f16" in a.ptx


def test_compile_ptx_unknown_op() -> None:
    with pytest.raises(ValueError, match="no AOT kernel"):
        compile_ptx("softmax")
