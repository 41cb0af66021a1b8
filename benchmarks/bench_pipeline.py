"""Named cases of ``sana_deploy.bench.bench`` (the product pipeline, ``SanaDeployPipeline``, per stage and backend,
against diffusers eager in the same run): bf16, 20 steps, Sana 0.6B at 1024² and 1.6B at 1024²/2048²/4096² on the
device machine; seeded random weights at the real dimensions (speed does not depend on weight values; nothing
is downloaded). A thin wrapper: each case is a set of ``bench()`` arguments, and the results are written as JSON,
markdown and PNG.

Each case is one command (the device allows 10 minutes per command), writing one result file:

    python benchmarks/bench_pipeline.py --case 0.6b-1024          # -> benchmarks/results/<gpu>-0.6b-1024.json
    python benchmarks/bench_pipeline.py --case 1.6b-4k --stages step,loop,e2e
    python benchmarks/collate.py benchmarks/results/*.json

On a CPU-only machine ``--case cpu-0.6b-512`` runs the CPU comparison (torch vs ONNX Runtime vs diffusers eager,
interleaved).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from sana_deploy.bench import bench
from sana_deploy.bench.plot import plot
from sana_deploy.bench.report import markdown, text_table, write_atomic, write_json
from sana_deploy.errors import SanaDeployError

RESULTS = Path(__file__).resolve().parent / "results"

# name -> (preset, profile (bucket base; the case is one base x base image), backends, precision, extra kwargs)
CASES: dict[str, tuple[str, int, str, str, dict]] = {
    "0.6b-1024": ("sana-0.6b-1024", 1024, "torch,aoti,torch-compile", "bf16", {}),
    "1.6b-1024": ("sana-1.6b-1024", 1024, "torch,aoti,torch-compile", "bf16", {}),
    "1.6b-2k": ("sana-1.6b-2k", 2048, "torch,aoti", "bf16", {}),
    "1.6b-4k": ("sana-1.6b-4k", 4096, "torch,aoti", "bf16", {}),
    # Sana-Sprint 0.6B at 1024², 2 steps (the sCM solver; guidance embedded, no CFG), end to end; the baseline is
    # diffusers' SanaSprintPipeline eager
    "sprint-0.6b-1024": ("sana-sprint-0.6b-1024", 1024, "torch,aoti", "bf16", {}),
    "cpu-0.6b-512": (
        "sana-0.6b-512",
        512,
        "torch,onnxruntime,onnxruntime[split=0]",
        "fp32",
        {"interleave": True, "device": "cpu"},
    ),
    "cpu-tiny": (
        "sana-tiny",
        512,
        "torch,onnxruntime,onnxruntime[split=0],aoti,torch-compile,tensorrt,tensorrt-rtx",
        "fp32",
        {"device": "cpu"},
    ),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="sana-deploy pipeline benchmark (one case per command)")
    p.add_argument("--case", required=True, choices=sorted(CASES))
    p.add_argument("--backends", default=None, help="override the case's backends")
    p.add_argument("--stages", default="all")
    p.add_argument("--steps", type=int, default=None, help="[the model's: 20, or 2 for Sana-Sprint]")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--text-encoder-layers", type=int, default=None)
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--tag", default="", help="suffix of the result file names")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="where result files go [benchmarks/results]")
    args = p.parse_args(argv)
    preset, size, backends, precision, extra = CASES[args.case]
    result = bench(
        model=preset,
        profiles=str(size),
        backends=args.backends or backends,
        steps=args.steps,
        stages=args.stages,
        warmup=args.warmup,
        runs=args.runs,
        precision=precision,
        text_encoder_layers=args.text_encoder_layers,
        work_dir=args.work_dir,
        **extra,
    )
    print(text_table(result))
    gpu = result["machine"].get("gpu")
    device = re.sub(r"[^a-z0-9]+", "-", (gpu["name"] if gpu else "cpu").lower()).strip("-")
    name = args.case if args.case.startswith(device) else f"{device}-{args.case}"
    stem = args.out_dir / f"{name}{'-' + args.tag if args.tag else ''}"
    print(f"wrote {write_json(result, stem.with_name(stem.name + '.json'))}")
    print(f"wrote {write_atomic(stem.with_name(stem.name + '.md'), markdown(result))}")
    try:
        print(f"wrote {plot(result, stem.with_name(stem.name + '.png'))}")
    except SanaDeployError as exc:  # matplotlib missing on the device: the JSON and markdown still count
        print(f"no plot: {exc}")
    return 1 if any(r["status"] == "error" for r in result["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
