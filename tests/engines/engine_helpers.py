"""Helpers for the engine tests: PyTorch references at given sizes and the relative error."""

from __future__ import annotations

import torch

from sana_deploy.export import SPECS


def pixel_sizes(component: str, height: int, width: int, batch: int) -> dict[str, int]:
    return {"batch": batch, "latent_h": height // 32, "latent_w": width // 32, "text_len": 300, "seq": 77}


def torch_reference(tiny, component: str, sizes: dict[str, int], seed: int = 0):  # noqa: ANN001
    spec = SPECS[component](tiny)
    inputs = spec.dummy_inputs(tiny, sizes, seed=seed)
    with torch.no_grad():
        ref = spec.wrap(tiny).eval()(**inputs)
    return inputs, {spec.outputs[0].name: ref}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()
