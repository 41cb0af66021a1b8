"""The reference custom ops pass torch.library.opcheck; the kernel sets dispatch as documented on CPU."""

from __future__ import annotations

import pytest
import torch

from sana_deploy.plugins import use_kernels
from sana_deploy.plugins.linear_attention import linear_attention, linear_attention_op, linear_attention_ref
from sana_deploy.plugins.mix_ffn import mix_ffn, mix_ffn_op, mix_ffn_ref
from sana_deploy.plugins.registry import implementation
from sana_deploy.plugins.triton_utils import has_triton, interpreting


def _mix_ffn_args(dtype: torch.dtype = torch.float32) -> tuple:
    g = torch.Generator().manual_seed(0)
    c, f = 8, 12
    shapes = [(2, 3, 5, c), (2 * f, c), (2 * f,), (2 * f, 1, 3, 3), (2 * f,), (c, f)]
    return tuple(torch.randn(s, generator=g).to(dtype) for s in shapes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_linear_attention(dtype: torch.dtype) -> None:
    q, k, v = (torch.randn(2, 19, 64).to(dtype) for _ in range(3))
    torch.library.opcheck(linear_attention_op, (q, k, v, 2, 1e-15))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_mix_ffn(dtype: torch.dtype) -> None:
    torch.library.opcheck(mix_ffn_op, _mix_ffn_args(dtype))


@pytest.mark.skipif(not has_triton(), reason="triton not installed")
def test_triton_set_registered_and_falls_back_on_cpu_without_interpreter() -> None:
    if interpreting():
        pytest.skip("this process runs Triton's interpreter")
    q = torch.randn(1, 10, 64)
    args = _mix_ffn_args()
    with use_kernels("triton"):
        assert implementation("linear_attention").__name__ == "linear_attention_triton_impl"
        assert implementation("mix_ffn").__name__ == "mix_ffn_triton_impl"
        la, mf = linear_attention(q, q, q, 2, 1e-15), mix_ffn(*args)
    torch.testing.assert_close(la, linear_attention_ref(q, q, q, 2, 1e-15), rtol=0, atol=0)
    torch.testing.assert_close(mf, mix_ffn_ref(*args), rtol=0, atol=0)


@pytest.mark.skipif(not has_triton(), reason="triton not installed")
def test_launcher_rejects_cpu_tensors_without_interpreter() -> None:
    if interpreting():
        pytest.skip("this process runs Triton's interpreter")
    from sana_deploy.plugins.linear_attention.launch import linear_attention_triton

    q = torch.randn(1, 10, 64)
    with pytest.raises(AssertionError, match="TRITON_INTERPRET=1"):
        linear_attention_triton(q, q, q, 2, 1e-15)


def test_launcher_shape_checks() -> None:
    pytest.importorskip("triton")
    from sana_deploy.plugins.linear_attention.launch import linear_attention_triton, num_splits
    from sana_deploy.plugins.mix_ffn.launch import dw_glu_triton

    q = torch.randn(1, 10, 96)
    with pytest.raises(AssertionError, match="heads"):
        linear_attention_triton(q, q, q, 2, 1e-15)  # 96 != 2 * 32
    with pytest.raises(AssertionError, match="contiguous"):
        linear_attention_triton(q[..., :64], q[..., :64], q[..., :64], 2, 1e-15)
    with pytest.raises(AssertionError, match="w_dw"):
        dw_glu_triton(torch.randn(1, 2, 2, 8), torch.randn(8, 1, 3, 2), torch.randn(8))
    # 4096^2 tokens, 0.6B (36 heads), batch 2: 4 splits of 4096 tokens -> 288 programs on 132 SMs.
    assert num_splits(16384, 72, 132) == (4, 4096)
    assert num_splits(77, 1, 132) == (2, 64)  # splits are whole 64-token blocks
    assert num_splits(1, 72, 132) == (1, 64)
