"""Winograd (NNPACK) vs direct 3x3 convolution on the CPU, for the DC-AE decoder's shapes (not a test).

Two parts, each direct and Winograd interleaved run by run (warm-up excluded, median and p90):
* every distinct dense 3x3 convolution of the DC-AE decoder at ``--size`` (batch 1), with its achieved rate
  in GFLOP/s of direct-convolution FLOPs (2·Cin·Cout·9 per output pixel) against this CPU's fp32 peak estimate.
  Winograd does fewer multiplications, so its "effective" rate can pass the peak;
* the whole DC-AE decode at ``--size`` through our torch DC-AE runner (``winograd=False`` vs ``True``), and the
  largest difference between the two images.

Seeded random weights at the 0.6B model's DC-AE dimensions (speed does not depend on weight values):

    python benchmarks/bench_winograd.py --size 1024 --runs 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from sana_deploy.bench.flops import device_peak_tflops
from sana_deploy.bench.machine import loadavg, machine_record
from sana_deploy.bench.report import write_atomic
from sana_deploy.bench.stats import summarize
from sana_deploy.models.config import VAE_SCALE
from sana_deploy.models.random import random_components
from sana_deploy.runners.winograd import WinogradConvs, winograd_available
from sana_deploy.runtime.assemble import torch_runner

RESULTS = Path(__file__).resolve().parent / "results"


def conv_shapes(decoder: nn.Module, size: int) -> list[tuple[int, int, int, int]]:
    """(Cin, Cout, side, count) of every distinct dense 3x3 stride-1 convolution, with the side it runs at for a
    ``size``² image (found by running the decoder once with hooks)."""
    seen: dict[tuple[int, int, int], int] = {}
    hooks = []
    for m in decoder.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.groups == 1 and m.stride == (1, 1):
            hooks.append(
                m.register_forward_hook(
                    lambda mod, inp, out: seen.__setitem__(
                        (mod.in_channels, mod.out_channels, inp[0].shape[-1]),
                        seen.get((mod.in_channels, mod.out_channels, inp[0].shape[-1]), 0) + 1,
                    )
                )
            )
    with torch.inference_mode():
        decoder(torch.randn(1, 32, size // VAE_SCALE, size // VAE_SCALE))
    for h in hooks:
        h.remove()
    return [(ci, co, s, n) for (ci, co, s), n in seen.items()]


def elapsed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sana-0.6b-1024", help="preset whose DC-AE dimensions to use")
    p.add_argument("--size", type=int, default=1024, help="image side in pixels")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if not winograd_available():
        raise SystemExit("This PyTorch build has no working NNPACK: nothing to compare.")
    load_before = loadavg()
    comps = random_components(args.model, components=("vae",))
    machine = machine_record()
    peak, peak_source = device_peak_tflops(machine, "fp32")
    shapes = conv_shapes(comps.vae.decoder, args.size)
    rows = []
    g = torch.Generator().manual_seed(0)
    for cin, cout, side, count in shapes:
        x = torch.randn(1, cin, side, side, generator=g)
        w = torch.randn(cout, cin, 3, 3, generator=g) / (3 * cin**0.5)
        b = torch.randn(cout, generator=g)
        flop = 2 * cin * cout * 9 * side * side
        times = {"direct": [], "winograd": []}

        def conv(x=x, w=w, b=b) -> torch.Tensor:
            return F.conv2d(x, w, b, padding=1)

        with torch.inference_mode():
            conv()
            with WinogradConvs():
                conv()
            for _ in range(args.runs):  # interleaved
                times["direct"].append(elapsed_ms(conv))
                with WinogradConvs():
                    times["winograd"].append(elapsed_ms(conv))
        row = {"cin": cin, "cout": cout, "side": side, "count_in_decoder": count, "gflop": flop / 1e9}
        for k, v in times.items():
            s = summarize(v)
            row[k] = {**s, "gflops": flop / (s["median_ms"] * 1e6)}
        row["speedup"] = row["direct"]["median_ms"] / row["winograd"]["median_ms"]
        rows.append(row)
        print(
            f"conv {cin:>4}->{cout:<4} at {side:>4}² (x{count}): direct {row['direct']['median_ms']:8.1f} ms "
            f"({row['direct']['gflops']:6.1f} GFLOP/s)  winograd {row['winograd']['median_ms']:8.1f} ms "
            f"({row['winograd']['gflops']:6.1f} effective)  {row['speedup']:.2f}x",
            flush=True,
        )

    latent = torch.randn(1, 32, args.size // VAE_SCALE, args.size // VAE_SCALE, generator=g)
    runners = {"direct": torch_runner(comps, "vae", "fp32", winograd=False)}
    runners["winograd"] = torch_runner(comps, "vae", "fp32", winograd=True)
    images = {k: r(latent=latent)["sample"] for k, r in runners.items()}  # warm-up, and the images compared
    decode = {k: [] for k in runners}
    for _ in range(args.runs):
        for k, r in runners.items():
            decode[k].append(elapsed_ms(lambda r=r: r(latent=latent)))
    diff = (images["winograd"] - images["direct"]).abs().max().item()
    summary = {k: summarize(v) for k, v in decode.items()}
    speedup = summary["direct"]["median_ms"] / summary["winograd"]["median_ms"]
    print(
        f"DC-AE decode {args.size}²: direct {summary['direct']['median_ms'] / 1e3:.2f} s (p90 "
        f"{summary['direct']['p90_ms'] / 1e3:.2f})  winograd {summary['winograd']['median_ms'] / 1e3:.2f} s (p90 "
        f"{summary['winograd']['p90_ms'] / 1e3:.2f})  {speedup:.2f}x; max |diff| {diff:.2e} ({diff / 2 * 255:.4f}/255)"
    )
    result = {
        "format": "winograd-cpu/1",
        "model": args.model,
        "size": args.size,
        "runs": args.runs,
        "machine": machine,
        "load_before": load_before,
        "load_after": loadavg(),
        "peak_tflops": peak,
        "peak_source": peak_source,
        "convs": rows,
        "decode": {"direct": summary["direct"], "winograd": summary["winograd"], "speedup": speedup},
        "decode_max_abs_diff": diff,
    }
    out = args.out or RESULTS / f"winograd-cpu-{args.model}-{args.size}.json"
    write_atomic(out, json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
