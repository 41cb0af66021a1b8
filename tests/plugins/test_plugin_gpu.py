"""GPU checks of the Triton kernels (``pytest -m gpu tests/plugins``; skipped by default and without CUDA).

Written for the device machine (torch 2.11, triton 3.6); not run where this was written (no GPU).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _check(kernel: torch.Tensor, low: torch.Tensor, ref32: torch.Tensor) -> None:
    k_err = (kernel.float() - ref32).abs().max().item()
    t_err = (low.float() - ref32).abs().max().item()
    floor = 1e-5 * max(1.0, ref32.abs().max().item())
    print(f"kernel err {k_err:.3e}, torch err {t_err:.3e}")
    assert torch.isfinite(kernel).all() and k_err <= 2 * t_err + floor


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, n, heads", [(1, 1, 1), (2, 1000, 36), (2, 4096, 36), (1, 16384, 70), (2, 333, 4)])
def test_linear_attention_cuda(b: int, n: int, heads: int, dtype: torch.dtype) -> None:
    from sana_deploy.plugins.linear_attention.launch import linear_attention_triton
    from sana_deploy.plugins.linear_attention.ref import linear_attention_ref

    q, k, v = (torch.randn(b, n, heads * 32, device="cuda").to(dtype) for _ in range(3))
    for splits in (None, 1):
        out = linear_attention_triton(q, k, v, heads, 1e-15, splits=splits)
        ref32 = linear_attention_ref(q.float(), k.float(), v.float(), heads, 1e-15)
        _check(out, linear_attention_ref(q, k, v, heads, 1e-15), ref32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, h, w, c, f", [(1, 32, 32, 1152, 2880), (2, 17, 45, 64, 160), (1, 64, 128, 2240, 5600)])
def test_mix_ffn_cuda(b: int, h: int, w: int, c: int, f: int, dtype: torch.dtype) -> None:
    from sana_deploy.plugins.mix_ffn.launch import mix_ffn_triton
    from sana_deploy.plugins.mix_ffn.ref import mix_ffn_ref

    g = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(b, h, w, c), (2 * f, c), (2 * f,), (2 * f, 1, 3, 3), (2 * f,), (c, f)]
    scales = [1.0, c**-0.5, 0.1, 1 / 3, 0.1, f**-0.5]
    args = [(torch.randn(s, device="cuda", generator=g) * sc).to(dtype) for s, sc in zip(shapes, scales, strict=True)]
    _check(mix_ffn_triton(*args), mix_ffn_ref(*args), mix_ffn_ref(*[a.float() for a in args]))


def test_opcheck_triton_ops_cuda() -> None:
    from sana_deploy.plugins.linear_attention.triton_op import linear_attention_triton_op
    from sana_deploy.plugins.mix_ffn.triton_op import mix_ffn_triton_op

    q = torch.randn(2, 77, 64, device="cuda", dtype=torch.bfloat16)
    torch.library.opcheck(linear_attention_triton_op, (q, q.clone(), q.clone(), 2, 1e-15))
    shapes = [(1, 5, 7, 32), (80, 32), (80,), (80, 1, 3, 3), (80,), (32, 40)]
    torch.library.opcheck(mix_ffn_triton_op, tuple(torch.randn(s, device="cuda") for s in shapes))


def test_aoti_package_embeds_triton_kernels(tmp_path) -> None:
    """torch.export + aoti_compile_and_package of a module calling the triton ops; the package runs without the
    Python kernels and matches eager."""
    from sana_deploy.plugins.linear_attention.triton_op import linear_attention_triton_op
    from sana_deploy.plugins.mix_ffn.triton_op import mix_ffn_triton_op

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c, f = 64, 160
            shapes = [(2 * f, c), (2 * f,), (2 * f, 1, 3, 3), (2 * f,), (c, f)]
            self.w = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(s) * 0.1) for s in shapes])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, h, w, c = x.shape
            t = x.reshape(b, h * w, c)
            a = linear_attention_triton_op(t, t, t, 2, 1e-15).reshape(b, h, w, c)
            return mix_ffn_triton_op(a, *self.w)

    model = Block().cuda().to(torch.bfloat16)
    x = torch.randn(2, 8, 12, 64, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        eager = model(x)
        ep = torch.export.export(model, (x,))
        path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "block.pt2"))
        loaded = torch._inductor.aoti_load_package(path)
        out = loaded(x)
    torch.testing.assert_close(out, eager, rtol=2e-2, atol=2e-2)
