"""ControlNet and PAG graph layouts (not a test): which runs a denoising step faster in ONNX Runtime on this CPU.

* **PAG**: one ``transformer_pag`` call on ``[uncond; cond; perturbed]`` (batch 3, the per-block identity chosen by
  the ``pag_identity`` input) against ``transformer_cached`` on ``[uncond; cond]`` (batch 2) plus a second graph with
  the identity baked into the chosen block, on ``[perturbed]`` (batch 1), which skips that block's linear attention.
* **ControlNet**: the ``controlnet`` graph, then ``transformer_control`` with its residuals (two calls; the residuals
  cross the ONNX Runtime boundary as fp32 tensors) against one fused graph (ControlNet + step), batch 2 (CFG).

Random weights at each model's dimensions (sana-tiny; ``sana-0.6b-512``: the 0.6B transformer, a 7-block
ControlNet), 512² (16×16 latents), 300 caption tokens, fp32, the runtime's default ONNX Runtime options (OrtRunner).
Every graph of a pair is checked to compute the same output first. Each run times both layouts of a pair back to
back, alternating which goes first; medians of ``--runs`` runs after ``--warmup``.

    python benchmarks/bench_variants.py --models sana-tiny,sana-0.6b-512 --runs 10 \\
        --out benchmarks/results/variants-cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from sana_deploy.export import export_component
from sana_deploy.export.exporter import trace_to_onnx
from sana_deploy.export.specs import SPECS
from sana_deploy.models.config import get_preset
from sana_deploy.models.controlnet import random_controlnet
from sana_deploy.models.random import random_components
from sana_deploy.models.transformer import SanaBlock
from sana_deploy.plugins.linear_attention.ref import FP16_MAX
from sana_deploy.runners import OrtRunner
from sana_deploy.runtime.variants import PAG_DEFAULT_LAYER

LATENT = 16
TEXT = 300


class _IdentityBlock(SanaBlock):
    """A block whose self-attention is the identity for every row (the baked perturbed branch)."""

    def forward(self, x, kv, mask_bias, t0, height, width, identity=None):  # noqa: ANN001, ANN201, ARG002
        b, n, c = x.shape
        mod = self.scale_shift_table[None] + t0.reshape(b, 6, c)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        h = (self.norm1(x) * (1 + scale_msa) + shift_msa).to(x.dtype)
        v = self.attn1.to_v(h)
        x = x + gate_msa * self.attn1.to_out[0](v).clamp(-FP16_MAX, FP16_MAX)
        x = x + self.cross_attention(x, kv, mask_bias)
        h = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        f = self.ff(h.reshape(b, height, width, c)).reshape(b, n, c)
        return x + gate_mlp * f


class _Perturbed(nn.Module):
    """The step with the identity baked into ``layers`` (their blocks' class swapped while this graph is traced)."""

    def __init__(self, transformer: nn.Module, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.model, self.layers = transformer, layers

    def forward(self, latent, timestep, text_kv, encoder_attention_mask):  # noqa: ANN001, ANN201
        return self.model.forward_cached(latent, timestep, text_kv, encoder_attention_mask).float()

    def __enter__(self) -> _Perturbed:
        for i in self.layers:
            self.model.transformer_blocks[i].__class__ = _IdentityBlock
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        for i in self.layers:
            self.model.transformer_blocks[i].__class__ = SanaBlock


class _Fused(nn.Module):
    def __init__(self, transformer: nn.Module, controlnet: nn.Module, blocks: int) -> None:
        super().__init__()
        self.transformer, self.controlnet, self.blocks = transformer, controlnet, blocks

    def forward(self, latent, timestep, text_kv, encoder_attention_mask, encoder_hidden_states, controlnet_cond,
                conditioning_scale):  # noqa: ANN001, ANN201  # fmt: skip
        res = self.controlnet(
            latent, timestep, encoder_hidden_states, encoder_attention_mask, controlnet_cond, conditioning_scale
        )
        return self.transformer.forward_cached(
            latent, timestep, text_kv, encoder_attention_mask, controlnet_residuals=res[: self.blocks]
        ).float()


def _export_custom(name: str, module: nn.Module, base_component: str, comps, extra: tuple, out: Path) -> Path:  # noqa: ANN001
    spec = SPECS[base_component](comps)
    spec = dataclasses.replace(spec, component=name, inputs=(*spec.inputs[:4], *extra), wrap=lambda c: module)
    sizes = dict(spec.export_sizes)
    inputs = spec.dummy_inputs(comps, sizes)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    trace_to_onnx(module.eval(), spec, inputs, folder / "model.onnx")
    return folder / "model.onnx"


def _median_pair(a, b, runs: int, warmup: int) -> tuple[float, float]:  # noqa: ANN001
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for r in range(runs):
        for which in ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta)):
            start = time.perf_counter()
            which[0]()
            which[1].append(time.perf_counter() - start)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


def run_model(model: str, runs: int, warmup: int, work: Path) -> dict:
    preset = get_preset(model)
    comps = random_components(preset, ("transformer",))
    layers = preset.transformer.num_layers
    cn_layers = 7 if layers > 8 else 2
    comps = dataclasses.replace(comps, _hashes={}, controlnet=random_controlnet(preset, num_layers=cn_layers, seed=1))
    out = work / model
    say = lambda m: print(f"[{model}] {m}", file=sys.stderr, flush=True)  # noqa: E731
    paths = {}
    for c in ("transformer_text", "transformer_cached", "transformer_pag", "transformer_control", "controlnet"):
        say(f"export {c}")
        # no parity run here (the product graphs' parity is tested elsewhere); the layouts are compared below
        paths[c] = export_component(comps, c, "fp32", out, unsafe_skip_parity=True).path
    pag_layer = (PAG_DEFAULT_LAYER.get(layers, 0),)
    say("export the baked perturbed graph and the fused ControlNet graph")
    with _Perturbed(comps.transformer, pag_layer) as perturbed:
        paths["perturbed"] = _export_custom("perturbed", perturbed, "transformer_cached", comps, (), out)
    blocks = min(cn_layers, layers - 1)
    cn_spec = SPECS["controlnet"](comps)
    fused_extra = (cn_spec.inputs[2], cn_spec.inputs[4], cn_spec.inputs[5])
    paths["fused"] = _export_custom("fused", _Fused(comps.transformer, comps.controlnet, blocks), "transformer_cached",
                                    comps, fused_extra, out)  # fmt: skip
    runners = {k: OrtRunner(p, k) for k, p in paths.items()}

    g = torch.Generator().manual_seed(0)
    caption = preset.transformer.caption_channels
    emb = torch.randn(3, TEXT, caption, generator=g)
    mask = torch.ones(3, TEXT, dtype=torch.int64)
    mask[:, 40:] = 0
    kv = runners["transformer_text"](encoder_hidden_states=emb)["text_kv"]
    x = torch.randn(3, 32, LATENT, LATENT, generator=g)
    t = torch.full((3,), 700.0)
    identity = torch.zeros(3, layers)
    identity[2, list(pag_layer)] = 1.0

    def pag_one() -> torch.Tensor:
        return runners["transformer_pag"](latent=x, timestep=t, text_kv=kv, encoder_attention_mask=mask,
                                          pag_identity=identity)["noise_pred"]  # fmt: skip

    def pag_two() -> torch.Tensor:
        a = runners["transformer_cached"](latent=x[:2], timestep=t[:2], text_kv=kv[:, :, :2],
                                          encoder_attention_mask=mask[:2])["noise_pred"]  # fmt: skip
        b = runners["perturbed"](latent=x[2:], timestep=t[2:], text_kv=kv[:, :, 2:],
                                 encoder_attention_mask=mask[2:])["noise_pred"]  # fmt: skip
        return torch.cat([a, b])

    control = torch.randn(2, 32, LATENT, LATENT, generator=g)
    scale = torch.tensor([0.8])

    def cn_two() -> torch.Tensor:
        res = runners["controlnet"](latent=x[:2], timestep=t[:2], encoder_hidden_states=emb[:2],
                                    encoder_attention_mask=mask[:2], controlnet_cond=control,
                                    conditioning_scale=scale)["controlnet_residuals"]  # fmt: skip
        return runners["transformer_control"](latent=x[:2], timestep=t[:2], text_kv=kv[:, :, :2],
                                              encoder_attention_mask=mask[:2],
                                              controlnet_residuals=res[:blocks])["noise_pred"]  # fmt: skip

    def cn_fused() -> torch.Tensor:
        return runners["fused"](latent=x[:2], timestep=t[:2], text_kv=kv[:, :, :2], encoder_attention_mask=mask[:2],
                                encoder_hidden_states=emb[:2], controlnet_cond=control,
                                conditioning_scale=scale)["noise_pred"]  # fmt: skip

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max())

    checks = {"pag": rel(pag_one(), pag_two()), "controlnet": rel(cn_two(), cn_fused())}
    say(f"layouts agree (max rel diff): {checks}")
    assert all(v < 1e-4 for v in checks.values()), checks
    say("timing PAG")
    one, two = _median_pair(pag_one, pag_two, runs, warmup)
    say("timing ControlNet")
    split, fused = _median_pair(cn_two, cn_fused, runs, warmup)
    return {
        "model": model, "layers": layers, "hidden": preset.transformer.hidden_size, "latent": LATENT, "text": TEXT,
        "pag_layers": list(pag_layer), "controlnet_layers": cn_layers, "controlnet_residuals": blocks,
        "agreement_rel": checks,
        "pag_ms": {"one_graph_identity_input_batch3": one, "base_batch2_plus_baked_graph_batch1": two},
        "controlnet_ms": {"two_graphs": split, "fused_graph": fused},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sana-tiny,sana-0.6b-512")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-variants-") as work:
        results = [run_model(m, args.runs, args.warmup, Path(work)) for m in args.models.split(",")]
    report = {
        "what": "ControlNet/PAG graph layouts, ONNX Runtime CPU, one denoising step, median ms",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "runs": args.runs, "warmup": args.warmup, "results": results,
    }  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
