"""Per-stage wall time of SanaDeployPipeline on the CPU: torch vs onnxruntime, same run, same inputs.

    python benchmarks/bench_runtime_cpu.py --models sana-tiny,sana-0.6b-512 --size 512 --steps 20 --repeats 3

Real-size presets use seeded random weights (speed does not depend on weight values). The ONNX export (the
onnxruntime "build") is timed separately and excluded; one warm-up request per backend is excluded too.
Writes benchmarks/results/runtime_cpu.json (one row per model x backend: median seconds per stage).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sana_deploy.models.loaders import load_components
from sana_deploy.runtime.pipeline import SanaDeployPipeline
from sana_deploy.versions import package_versions


def bench(model: str, size: int, steps: int, repeats: int, export_root: Path) -> list[dict]:
    comps = load_components(model, random_weights=True)
    rows = []
    for backend in ("torch", "onnxruntime"):
        start = time.perf_counter()
        pipe = SanaDeployPipeline.from_components(comps, backend=backend, export_dir=export_root / model)
        setup = time.perf_counter() - start
        args = dict(height=size, width=size, num_inference_steps=steps, resolution_binning=False, output_type="np")
        pipe("warm-up", generator=0, **args)
        runs = [pipe("a red fox in the snow", generator=0, **args).seconds for _ in range(repeats)]
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append(
            {
                "model": model,
                "backend": backend,
                "size": size,
                "steps": steps,
                "repeats": repeats,
                "setup_s": round(setup, 2),
                **{f"{k}_s": round(v, 4) for k, v in median.items()},
                "total_s": round(sum(median.values()), 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="sana-tiny,sana-0.6b-512")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "runtime_cpu.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for m in a.models.split(",") for r in bench(m.strip(), a.size, a.steps, a.repeats, Path(tmp))]
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": machine, "versions": package_versions(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
