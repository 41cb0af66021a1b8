"""FP8 against bf16 on a GPU, speed and quality in one command per case (not a test).

Speed: ``sana_deploy.bench.bench`` (the product pipeline, per stage) over ``torch`` and ``torch[quantize=fp8]``
(eager, FP8 linear layers through ``torch._scaled_mm``) and ``aoti`` and ``aoti[precision=fp8]`` (AOTInductor
packages, ``build --backend aoti --quantize fp8``), bf16 everywhere else, with diffusers eager bf16 as the baseline,
in one run.

Quality, against the bf16 torch pipeline on the same weights (seeded random weights at the real dimensions:
see docs/QUANTIZATION.md for what that does and does not show):

* per step: the bf16 run's transformer inputs are recorded at every solver timestep of one request, and the FP8
  transformer runs on exactly those inputs; its output's relative L2 error against the bf16 output, per timestep;
* end to end: the final image of the same request, PSNR against the bf16 image.

    python benchmarks/bench_fp8.py --case 1.6b-1024 --out-dir "$OUT"         # on a GPU of compute capability 8.9+
    python benchmarks/bench_fp8.py --case 1.6b-4k --stages step --runs 5 --no-aoti
    python benchmarks/bench_fp8.py --case tiny --device cpu --runs 1 --warmup 0   # plumbing only: FP8 emulated
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sana_deploy.bench import bench
from sana_deploy.bench.case import BenchCase
from sana_deploy.bench.harness import load_case_components
from sana_deploy.bench.machine import machine_record
from sana_deploy.bench.quality import per_step_errors, psnr
from sana_deploy.bench.report import text_table, write_json
from sana_deploy.export.quantized import QUALITY_BOUNDS
from sana_deploy.models.fp8 import fp8_supported, to_fp8_
from sana_deploy.quantize.calibrate import record_calibration
from sana_deploy.runtime.pipeline import SanaDeployPipeline

RESULTS = Path(__file__).resolve().parent / "results"
CASES = {  # name -> (preset, image side)
    "0.6b-1024": ("sana-0.6b-1024", 1024),
    "1.6b-1024": ("sana-1.6b-1024", 1024),
    "1.6b-4k": ("sana-1.6b-4k", 4096),
    "tiny": ("sana-tiny", 256),
}
PROMPT = "a lighthouse on a cliff above a stormy sea at sunset, oil painting"


def _say(msg: str) -> None:
    print(f"[bench_fp8 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def quality(args: argparse.Namespace, model: str, size: int, device: str) -> dict:
    """Per-step transformer error and final-image PSNR of FP8 against bf16, torch backend, one request."""
    case = BenchCase(model, size, args.steps, 4.5, "bf16", device, seed=0, text_encoder_layers=args.text_encoder_layers)
    comps = load_case_components(case)
    _say(f"bf16 reference: recording the transformer inputs of every step ({args.steps} steps, {size}²)")
    held = record_calibration(comps, [PROMPT], args.steps, size, seed=args.seed, precision="bf16", device=device)
    request = dict(
        height=size, width=size, num_inference_steps=args.steps, guidance_scale=4.5, generator=args.seed,
        resolution_binning=False, output_type="np",
    )  # fmt: skip
    ref = SanaDeployPipeline.from_components(comps, "torch", "bf16", device=device)
    ref_image = ref(PROMPT, **request).images
    del ref
    gc.collect()
    names = to_fp8_(comps.transformer)  # in place: the reference is done with these weights
    pipe = SanaDeployPipeline.from_components(comps, "torch", "bf16", device=device)
    _say(f"FP8: {len(names)} linear layers; per-step error on the recorded inputs, then the same request")
    errors, timesteps = per_step_errors(pipe, held, size)
    image = pipe(PROMPT, **request).images
    return {
        "reference": "torch bf16 (same weights, same request)",
        "fp8_layers": len(names),
        "rel_l2_per_step": errors,
        "timesteps": timesteps,
        "max_rel_l2": max(errors),
        "mean_rel_l2": float(np.mean(errors)),
        "bound": QUALITY_BOUNDS["fp8"],
        "within_bound": max(errors) <= QUALITY_BOUNDS["fp8"],
        "psnr_db": psnr(image, ref_image),
        "emulated": not (device.startswith("cuda") and fp8_supported()[0]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", required=True, choices=sorted(CASES))
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--stages", default="step,e2e")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seed", type=int, default=7, help="seed of the quality request")
    p.add_argument("--text-encoder-layers", type=int, default=None)
    p.add_argument("--no-aoti", action="store_true", help="torch only (no AOTInductor compile)")
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--no-quality", action="store_true")
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    model, size = CASES[args.case]
    ok, why = fp8_supported()
    if args.device.startswith("cuda") and not ok:
        print(f"bench_fp8: {why}", file=sys.stderr)
        return 2
    result: dict = {"format": "sana-deploy/bench-fp8/1", "case": args.case, "model": model, "size": size,
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "device": why}  # fmt: skip
    if not args.no_speed:
        backends = "torch,torch[quantize=fp8]" + ("" if args.no_aoti else ",aoti,aoti[precision=fp8]")
        _say(f"speed: {backends} against diffusers eager, bf16")
        result["speed"] = bench(
            model, str(size), backends, steps=args.steps, stages=args.stages, warmup=args.warmup, runs=args.runs,
            precision="bf16", device=args.device, text_encoder_layers=args.text_encoder_layers,
            work_dir=args.work_dir,
        )  # fmt: skip
        print(text_table(result["speed"]))
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if not args.no_quality:
        result["quality"] = quality(args, model, size, args.device)
        q = result["quality"]
        print(
            f"FP8 vs bf16: max rel L2 per step {q['max_rel_l2']:.2e} (bound {q['bound']}), PSNR {q['psnr_db']:.1f} dB"
        )
    result["machine"] = machine_record()
    gpu = result["machine"].get("gpu")
    device = re.sub(r"[^a-z0-9]+", "-", (gpu["name"] if gpu else args.device).lower()).strip("-")
    out = write_json(result, args.out_dir / f"{device}-fp8-{args.case}.json")
    print(f"wrote {out}")
    print(json.dumps(result.get("quality", {}), default=str)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
