"""LoRA swap vs rebuild (not a test): how long an adapter change takes in a built engine, against re-exporting
and rebuilding that engine with the adapter fused in (what a user without weight swaps must do).

Per backend, for the caption-K/V step graph (``transformer_cached``: the graph every denoising step runs):

* **rebuild**: a fresh ONNX export of the graph plus the engine build, timed once each (a child process per
  backend, empty folders, so nothing is a cache hit);
* **swap**: ``Runner.set_weight_deltas`` on the loaded engine, cycling through three random adapters (rank
  ``--rank`` on every attention and Mix-FFN target), warm-up excluded; median and p90. The weight changes are
  precomputed, as the pipeline's LRU holds them; the time to compute them once is reported separately.

    python benchmarks/bench_lora.py --model sana-0.6b-512 --random-weights --backends onnxruntime,aoti \
        --out benchmarks/results/lora-cpu-0.6b-512.json

Swaps on tensorrt and tensorrt-rtx refit the engine and need CUDA; on a machine without one, the script reports
the build time only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPONENT = "transformer_cached"


def _targets(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    keys = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_out.0")
    keys += ("ff.conv_inverted", "ff.conv_point")
    return [n for n in shapes if n.startswith("transformer_blocks.") and any(f".{k}.weight" in n for k in keys)]


def _adapter_deltas(shapes: dict, rank: int, seed: int) -> dict:
    import torch

    from sana_deploy.models.lora import LoraAdapter, LoraLayer

    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name in _targets(shapes):
        shape = shapes[name]
        tail = (1, 1) if len(shape) == 4 else ()
        down = torch.randn(rank, shape[1], *tail, generator=g) * 0.01
        up = torch.randn(shape[0], rank, *tail, generator=g) * 0.01
        layers[name] = LoraLayer(down, up, 1.0)
    return LoraAdapter(f"bench{seed}", layers, f"{seed}").deltas(shapes)


def _child(spec: dict) -> None:
    """One backend: export + build timed (rebuild), then swaps timed on the loaded engine."""
    import torch

    from sana_deploy.engines import BuildOptions, build_engines, load_runner
    from sana_deploy.engines.devices import cuda_available
    from sana_deploy.export import ensure_export
    from sana_deploy.models.loaders import load_components
    from sana_deploy.runtime.lora import transformer_weight_shapes

    torch.set_num_threads(os.cpu_count() or 1)
    comps = load_components(spec["model"], ("transformer",), random_weights=spec["random_weights"])
    t0 = time.perf_counter()
    ensure_export(comps, COMPONENT, spec["precision"], spec["export_root"])
    export_s = time.perf_counter() - t0
    (entry,) = build_engines(
        spec["model"], [spec["profile"]], spec["backend"], spec["precision"], engine_dir=spec["engine_dir"],
        components=[COMPONENT], export_root=spec["export_root"], random_weights=spec["random_weights"],
        progress=False, say=lambda m: None, options=BuildOptions(),
    )  # fmt: skip
    out = {"export_seconds": export_s, "build_seconds": entry.build_seconds, "engine_bytes": entry.size}
    if spec["backend"] in ("tensorrt", "tensorrt-rtx") and not cuda_available():
        out["swap"] = "not run: refitting a TensorRT engine needs CUDA"
        print("RESULT " + json.dumps(out), flush=True)
        return
    runner = load_runner(entry)
    shapes = transformer_weight_shapes(comps.preset)
    held = runner.swappable_weights()
    t0 = time.perf_counter()
    sets = [{k: v for k, v in _adapter_deltas(shapes, spec["rank"], s).items() if k in held} for s in (1, 2, 3)]
    out["delta_seconds_per_adapter"] = (time.perf_counter() - t0) / 3
    out["weights_changed"] = len(sets[0])
    times = []
    for i in range(spec["swaps"] + 1):
        t0 = time.perf_counter()
        runner.set_weight_deltas(sets[i % 3])
        times.append(time.perf_counter() - t0)
    out["first_swap_seconds"] = times[0]  # warm-up: it also reads the base weights once
    out["swap_seconds"] = times[1:]
    print("RESULT " + json.dumps(out), flush=True)


def _run_child(spec: dict, timeout: float) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, timeout=timeout
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:400]}


def _p90(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(round(0.9 * len(xs))) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sana-tiny")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--backends", default="onnxruntime,aoti")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--profile", type=int, default=512)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--swaps", type=int, default=6)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    results, load_before = {}, os.getloadavg()
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
            spec = {
                "model": args.model, "random_weights": args.random_weights, "backend": backend,
                "precision": args.precision, "profile": args.profile, "rank": args.rank, "swaps": args.swaps,
                "export_root": str(Path(tmp) / "export"), "engine_dir": str(Path(tmp) / "engines"),
            }  # fmt: skip
            r = _run_child(spec, args.timeout)
        if isinstance(r.get("swap_seconds"), list) and r["swap_seconds"]:
            rebuild = r["export_seconds"] + r["build_seconds"]
            med = statistics.median(r["swap_seconds"])
            r.update(swap_median_s=med, swap_p90_s=_p90(r["swap_seconds"]), rebuild_s=rebuild, ratio=rebuild / med)
        results[backend] = r
        print(backend, json.dumps({k: v for k, v in r.items() if k != "swap_seconds"}), flush=True)
    report = {
        "format": "sana-deploy/bench-lora/1",
        "model": args.model,
        "random_weights": args.random_weights,
        "precision": args.precision,
        "profile": args.profile,
        "component": COMPONENT,
        "rank": args.rank,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "results": results,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if args.out:
        from sana_deploy.fileio import write_atomic

        write_atomic(args.out, json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
