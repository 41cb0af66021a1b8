"""Per-stage wall time of SanaDeployPipeline on the CPU: torch vs onnxruntime, same run, same inputs.

    python benchmarks/bench_runtime_cpu.py --models sana-tiny,sana-0.6b-512 --size 512 --steps 20 --repeats 3

Real-size presets use seeded random weights (speed does not depend on weight values). Each backend runs in
its own process (so peak memory is its own). For onnxruntime, ``sana-deploy export`` runs first in a process of its
own (``export_s``); loading and session creation (``setup_s``) are timed separately too, and all of it is excluded
from the stages, as is one warm-up request per backend.
Writes benchmarks/results/runtime_cpu.json (one row per model x backend: median and p90 seconds per stage, and the
machine record of ``sana_deploy.bench.machine``: CPU, load average, versions, git commit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sana_deploy.bench.machine import loadavg, machine_record
from sana_deploy.bench.stats import percentile
from sana_deploy.fileio import write_atomic
from sana_deploy.runtime.pipeline import SanaDeployPipeline


def _peak_rss_gb() -> float:
    """This process's peak RSS so far (``VmHWM``)."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM")).split()[1]) / 2**20


def bench_one(model: str, backend: str, size: int, steps: int, repeats: int, export_root: Path) -> dict:
    """One backend in this (fresh) process: what a user gets from ``from_model`` (for onnxruntime: export,
    then the torch transformer and text encoder are freed), one warm-up request, ``repeats`` timed ones."""
    start = time.perf_counter()
    pipe = SanaDeployPipeline.from_model(model, backend=backend, export_dir=export_root / model, random_weights=True)
    setup = time.perf_counter() - start
    args = dict(height=size, width=size, num_inference_steps=steps, resolution_binning=False, output_type="np")
    pipe("warm-up", generator=0, **args)
    runs = []
    for _ in range(repeats):
        out = pipe("a red fox in the snow", generator=0, **args)
        runs.append({**out.seconds, "total": sum(out.seconds.values())})
    stats = {
        f"{k}_{name}_s": round(percentile([r[k] for r in runs], q), 4)
        for k in runs[0]
        for name, q in (("median", 50), ("p90", 90))
    }
    return {
        "model": model,
        "backend": backend,
        "size": size,
        "steps": steps,
        "repeats": repeats,
        "setup_s": round(setup, 2),  # load + export check + sessions: excluded from the stages
        "peak_rss_gb": round(_peak_rss_gb(), 2),  # of this backend's own process
        **stats,
    }


def _export_first(model: str, export_root: Path) -> float:
    """``sana-deploy export`` in its own process (as a deployment does it), so the benchmark process only
    checks the exports against its weights. Exporting in the benchmark process itself would leave part of
    Gemma-2's weights pinned (see docs/RUNTIME.md, memory) and the 0.6B config would not fit in 24 GB."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "sana_deploy", "export", "--model", model, "--random-weights", "--no-parity"]
    subprocess.run([*cmd, "--out", str(export_root / model)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _child(model: str, backend: str, a: argparse.Namespace, export_root: Path) -> dict:
    export_s = _export_first(model, export_root) if backend == "onnxruntime" else 0.0
    cmd = [sys.executable, __file__, "--one", model, backend, "--size", str(a.size), "--steps", str(a.steps)]
    cmd += ["--repeats", str(a.repeats), "--export-root", str(export_root)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    row = {**json.loads(out.strip().splitlines()[-1]), "export_s": round(export_s, 2)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="sana-tiny,sana-0.6b-512")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "runtime_cpu.json")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "BACKEND"), help=argparse.SUPPRESS)  # child process
    ap.add_argument("--export-root", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(bench_one(*a.one, a.size, a.steps, a.repeats, a.export_root)), flush=True)
        return
    machine = machine_record()
    with tempfile.TemporaryDirectory() as tmp:  # each backend in its own process: memory is per backend
        rows = [_child(m.strip(), b, a, Path(tmp)) for m in a.models.split(",") for b in ("torch", "onnxruntime")]
    machine["loadavg_end"] = loadavg()
    machine["torch_threads"] = torch.get_num_threads()
    write_atomic(a.out, json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
