"""cast_copy: the one place that casts a caller's module for export or an engine build without touching it."""

from __future__ import annotations

import torch
from torch import nn

from sana_deploy.models.components import cast_copy


def test_cast_copy_returns_the_module_when_already_in_dtype_and_device() -> None:
    m = nn.Linear(4, 3)
    assert cast_copy(m, torch.float32) is m
    assert cast_copy(m, torch.float32, "cpu") is m


def test_cast_copy_casts_a_copy_and_leaves_the_original_as_loaded() -> None:
    m = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    got = cast_copy(m, torch.bfloat16, "cpu")
    assert got is not m
    assert {p.dtype for p in got.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in m.parameters()} == {torch.float32}
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])
    assert torch.equal(got[0].weight.float(), before["0.weight"].bfloat16().float())


def test_cast_copy_copies_a_mixed_dtype_module() -> None:
    m = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2).to(torch.bfloat16))
    got = cast_copy(m, torch.float32)
    assert got is not m
    assert {p.dtype for p in got.parameters()} == {torch.float32}
    assert m[1].weight.dtype == torch.bfloat16
