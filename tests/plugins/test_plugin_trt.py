"""TensorRT plugin definitions without TensorRT: the shape logic they share with the torch fake impls.

Registration inside TensorRT is not tested here (``tensorrt`` is not installable in this environment).
"""

from __future__ import annotations

import importlib.util

import pytest

from sana_deploy.errors import SanaDeployError
from sana_deploy.plugins.linear_attention.op import linear_attention_shape
from sana_deploy.plugins.mix_ffn.op import mix_ffn_shape
from sana_deploy.plugins.trt_shapes import SymDim, output_exprs


class Dyn:
    """Stand-in for a dynamic ``trtp.ShapeExpr`` (not a build-time constant)."""

    is_constant = False

    def __init__(self, name: str) -> None:
        self.name = name

    def __mul__(self, other: object) -> str:
        return f"{self.name}*{other}"


B, N, H, W = Dyn("B"), Dyn("N"), Dyn("H"), Dyn("W")


def test_linear_attention_output_maps_to_input_exprs() -> None:
    assert output_exprs(linear_attention_shape, (B, N, 64), (B, N, 64), (B, N, 64), heads=2) == (B, N, 64)


def test_mix_ffn_output_maps_to_input_exprs() -> None:
    out = output_exprs(mix_ffn_shape, (B, H, W, 16), (80, 16), (80, 1, 3, 3), (24, 40))
    assert out == (B, H, W, 24)


@pytest.mark.parametrize(
    "fn, shapes, kwargs, match",
    [
        (linear_attention_shape, [(B, N, 64), (B, N, 64), (B, N, 64)], {"heads": 3}, "divisible"),
        (linear_attention_shape, [(B, N, 64), (B, N, 32), (B, N, 32)], {"heads": 2}, "same channel"),
        (mix_ffn_shape, [(B, H, W, 16), (80, 16), (80, 1, 3, 3), (16, 41)], {}, "w_pt"),
        (mix_ffn_shape, [(B, H, W, 8), (80, 16), (80, 1, 3, 3), (16, 40)], {}, "w_inv"),
    ],
)
def test_constant_mismatch_raises(fn, shapes, kwargs, match) -> None:
    with pytest.raises(AssertionError, match=match):
        output_exprs(fn, *shapes, **kwargs)


def test_symdim_arithmetic() -> None:
    assert (SymDim(None, 40) * 2).value == 80 and (SymDim(None, 80) // 2).value == 40
    assert SymDim(None, None) == 5 and SymDim(None, 4) != 5
    assert SymDim(None, None) % 3 == 0 and SymDim(None, 7) % 3 == 1


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_register_without_tensorrt_fails_clearly() -> None:
    from sana_deploy.plugins.trt_plugins import register_trt_plugins

    with pytest.raises(SanaDeployError, match="tensorrt"):
        register_trt_plugins()
