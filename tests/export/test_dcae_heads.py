"""The DC-AE decoder export matches diffusers at every head size diffusers accepts, not only the released 32.

Tiny ``AutoencoderDC`` s built by diffusers itself (random weights); each is exported through our exporter, run in ONNX
Runtime at latent sizes no dummy or parity input had, and compared with diffusers' own ``decode``.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from diffusers import AutoencoderDC

from sana_deploy.export import SPECS, export_component
from sana_deploy.export.exact_rules import exact_no_op_rules
from sana_deploy.export.parity import cpu_session, relative_error
from sana_deploy.models.config import get_preset
from sana_deploy.models.random import random_components

TINY = [8, 16, 32, 32, 64, 64]  # sana-tiny's DC-AE widths: attention stages of 32, 64, 64 channels
WIDE = [8, 16, 32, 64, 128, 128]  # attention stages wide enough for one head of 64


@pytest.mark.parametrize(
    ("head_dim", "widths"),
    [(8, TINY), (16, TINY), pytest.param(24, TINY, marks=pytest.mark.slow), (32, TINY), (64, WIDE)],
    ids=["head8", "head16", "head24-not-a-divisor", "head32-released", "head64"],
)
def test_dcae_export_matches_diffusers(head_dim, widths, tmp_path):
    preset = get_preset("sana-tiny")
    vae = {**preset.vae, "attention_head_dim": head_dim}
    vae.update(encoder_block_out_channels=widths, decoder_block_out_channels=widths)
    comps = random_components(preset.replace(vae=vae), ("vae",))
    assert isinstance(comps.vae, AutoencoderDC) and comps.vae.config.attention_head_dim == head_dim

    result = export_component(comps, "vae", "fp32", tmp_path, "quick")
    assert result.parity and all(p.ok and p.finite and not p.skipped for p in result.parity), result.parity

    spec = SPECS["vae"](comps)
    traced = [(s["latent_h"], s["latent_w"]) for s in (spec.export_sizes, *spec.parity_sizes)]
    session = cpu_session(result.path)
    g = torch.Generator().manual_seed(head_dim)
    # 6x6: H*W = 36 <= 64, where diffusers takes its quadratic attention path at head size 64
    for batch, h, w in [(1, 7, 9), (2, 6, 6)]:
        assert (h, w) not in traced
        z = torch.randn(batch, 32, h, w, generator=g)
        with torch.no_grad():
            expected = comps.vae.decode(z, return_dict=False)[0].numpy()
        actual = session.run(None, {"latent": z.numpy()})[0]
        assert actual.shape == expected.shape == (batch, 3, 32 * h, 32 * w)
        assert np.isfinite(actual).all(), f"head size {head_dim}: the ONNX decoder returned NaN/inf at {h}x{w}"
        _, rel = relative_error(actual, expected)
        assert rel <= spec.tolerance["fp32"], f"head size {head_dim}, latent {h}x{w}: rel {rel:.2e}"


class _Eps(torch.nn.Module):
    """DC-AE's normaliser in miniature: ``num / (den + 1e-15)``, plus exact no-ops the optimiser may remove."""

    def forward(self, num, den):
        return (num / (den + 1e-15)) * 1.0 + 0.0


def test_exporter_keeps_tiny_epsilons(tmp_path):
    """onnxscript's optimiser matches "x + 0" with a tolerance of 1e-8 and so deletes ``+ 1e-15``; during our exports
    it matches exactly. 0 / (0 + eps) is then 0 in ONNX Runtime, as in PyTorch, not NaN."""
    with exact_no_op_rules() as swapped, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_Eps(), (torch.ones(4), torch.ones(4)), dynamo=True, input_names=["num", "den"])
    assert swapped, "the installed onnxscript no longer has the rule list exact_no_op_rules swaps: update it"
    path = tmp_path / "eps.onnx"
    program.save(str(path))
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Add") == 1 and "Mul" not in ops  # the epsilon stays; exact no-ops are still removed
    num = np.array([0.0, 1.0, 0.0, 2.0], np.float32)
    den = np.array([0.0, 2.0, 1.0, 4.0], np.float32)
    out = cpu_session(path).run(None, {"num": num, "den": den})[0]
    np.testing.assert_allclose(out, [0.0, 0.5, 0.0, 0.5], rtol=1e-6)
