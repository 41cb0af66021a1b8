"""Quantized and reduced-precision CPU engines against diffusers eager fp32, speed and quality in one run.

Speed: ``sana_deploy.bench.bench`` over every backend x precision cell (default: onnxruntime fp32 over the exports,
onnxruntime int8 engines, openvino fp32 / bf16 / int8 engines) with diffusers eager fp32 as the baseline, the same
request for all (CFG batch 2, empty negative prompt, ``--steps`` Flow-DPM-Solver steps at ``--size``²): per-step and
end-to-end medians and speed-ups. The bench encodes both prompts on every timed request; the quality phase adds
"end to end with the negative prompt cached" (the prompt-embedding cache warm with "" and a prompt it has not seen),
which is what a server runs.

Quality, against our own fp32 (PyTorch eager, the same weights):

* per step: the fp32 pipeline's transformer inputs are recorded at every solver timestep of a held-out request
  (``--prompt``, ``--seed``), and each cell's transformer (its caption K/V graph, then its step graph) runs on exactly
  those inputs; the relative L2 error of its output against the fp32 output, for every timestep;
* end to end: the final image of the same request through each cell, PSNR against the fp32 pipeline's image.

The int8 cells use one int8 recipe calibrated first (``--calib-prompts`` of the built-in set x ``--calib-steps``).
Random weights are not trained weights: see docs/QUANTIZATION.md for what this does and does not show.

    python benchmarks/bench_quant.py --model sana-0.6b-512 --size 512 --steps 20 --runs 3 --text-encoder-layers 13 \\
        --json benchmarks/results/quant-cpu-0.6b-512.json --markdown benchmarks/results/quant-cpu-0.6b-512.md
    python benchmarks/bench_quant.py --model sana-tiny --steps 2 --runs 1 --warmup 0 --calib-steps 2   # smoke test

The two phases can run apart (``--no-quality --json speed.json``, then ``--no-speed --speed-from speed.json``), so
the timed phase gets the quiet machine and one table still holds both.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

from sana_deploy.bench import bench
from sana_deploy.bench.case import PROMPT, BenchCase
from sana_deploy.bench.contenders import CaseContext, parse_backends
from sana_deploy.bench.harness import load_case_components, release_prepared
from sana_deploy.bench.quality import per_step_errors, psnr
from sana_deploy.bench.report import markdown as bench_markdown
from sana_deploy.bench.report import write_json
from sana_deploy.export.quantized import QUALITY_BOUNDS
from sana_deploy.fileio import write_atomic
from sana_deploy.quantize import quantize_model
from sana_deploy.quantize.calibrate import record_calibration
from sana_deploy.quantize.prompts import DEFAULT_PROMPTS
from sana_deploy.runtime.pipeline import SanaDeployPipeline
from sana_deploy.runtime.text import PromptCache

CELLS = "onnxruntime,onnxruntime-int8,openvino[precision=fp32],openvino[precision=bf16],openvino[precision=int8]"
HELD_OUT_PROMPT = "a lighthouse on a cliff above a stormy sea at sunset, oil painting"
WARM_PROMPT = "a small wooden boat on a calm lake"


def _say(msg: str) -> None:
    print(f"[bench_quant {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cell_precision(label: str) -> str:
    if "int8" in label:
        return "int8"
    if "precision=" in label:
        return label.split("precision=")[1].split(",")[0].rstrip("]")
    return "fp32"


def request(pipe: SanaDeployPipeline, prompt: str, args: argparse.Namespace):  # noqa: ANN201
    return pipe(
        prompt, height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=4.5,
        generator=args.seed, resolution_binning=False, output_type="np",
    )  # fmt: skip


def quality(args: argparse.Namespace, cells: str, work: Path) -> tuple[dict, dict]:
    """Per-step errors, image PSNR and the negative-cached request time of every cell, and of the fp32 reference."""
    case = BenchCase(args.model, args.size, args.steps, 4.5, "fp32", "cpu", seed=0,
                     text_encoder_layers=args.text_encoder_layers)  # fmt: skip
    comps = load_case_components(case)
    ctx = CaseContext(case, comps, work)
    _say(f"fp32 reference: recording every step of {HELD_OUT_PROMPT!r} (seed {args.seed})")
    held = record_calibration(comps, [HELD_OUT_PROMPT], args.steps, args.size, seed=args.seed)
    ref_pipe = SanaDeployPipeline.from_components(comps, backend="torch", precision="fp32")
    ref_pipe.prompt_cache = PromptCache(8)
    request(ref_pipe, WARM_PROMPT, args)
    ref = request(ref_pipe, HELD_OUT_PROMPT, args)
    reference = {"backend": "torch fp32 (reference)", "e2e_negative_cached_s": ref.seconds["total"],
                 "text_encode_negative_cached_s": ref.seconds["text_encoder"]}  # fmt: skip
    out = {}
    for contender in parse_backends(cells, add_baseline=False):
        label = contender.label
        why = contender.unavailable(case)
        if why:
            out[label] = {"status": "skipped", "reason": why}
            continue
        _say(f"quality of {label}")
        pipe, prepared = contender.make_pipeline(ctx)
        pipe.prompt_cache = PromptCache(8)
        errors, timesteps = per_step_errors(pipe, held, args.size)
        request(pipe, WARM_PROMPT, args)  # loads the engines and caches the "" negative prompt
        got = request(pipe, HELD_OUT_PROMPT, args)
        precision = cell_precision(label)
        bound = QUALITY_BOUNDS.get(precision)
        out[label] = {
            "status": "ok",
            "precision": precision,
            "rel_l2_per_step": errors,
            "timesteps": timesteps,
            "max_rel_l2": max(errors),
            "mean_rel_l2": float(np.mean(errors)),
            "bound": bound,
            "within_bound": None if bound is None else max(errors) <= bound,
            "psnr_db": psnr(got.images, ref.images),
            "e2e_negative_cached_s": got.seconds["total"],
            "text_encode_negative_cached_s": got.seconds["text_encoder"],
            "backends": got.backends,
        }
        del pipe, got
        release_prepared(prepared, "cpu")  # before the next cell's engines load
    return out, reference


def calibrate(args: argparse.Namespace, cells: str, work: Path) -> str | None:
    if "int8" not in cells:
        return None
    case = BenchCase(args.model, args.size, args.steps, 4.5, "fp32", "cpu", seed=0,
                     text_encoder_layers=args.text_encoder_layers)  # fmt: skip
    comps = load_case_components(case)
    ctx = CaseContext(case, comps, work)
    model, _random = ctx.engine_model()
    prompts = list(DEFAULT_PROMPTS[: args.calib_prompts])
    result = quantize_model(
        model, "int8", args.tool, prompts, steps=args.calib_steps, size=args.size, export_root=ctx.export_root,
        loaded=comps, say=_say,
    )  # fmt: skip
    del comps, ctx
    gc.collect()
    return result.recipe.name


def table(speed: dict, qual: dict, reference: dict) -> str:
    base = next((r for r in speed["results"] if r["backend"] == "diffusers-eager" and r["status"] == "ok"), None)
    lines = [
        "| backend | precision | step (ms) | × diffusers | e2e (s) | × diffusers | e2e, negative cached (s) "
        "| × diffusers | max rel L2 / step | bound | PSNR (dB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def med(r: dict, stage: str) -> float | None:
        s = r.get("stages", {}).get(stage)
        return None if s is None else s["median_ms"]

    b_step, b_e2e = (med(base, "step"), med(base, "e2e")) if base else (None, None)

    def x(v: float | None, b: float | None) -> str:
        return "-" if v is None or b is None else f"{b / v:.2f}×"

    if base:
        lines.append(f"| diffusers eager (`SanaPipeline`) | fp32 | {b_step:.1f} | 1.00× | {b_e2e / 1e3:.2f} | 1.00× "
                     f"| - | - | - | - | - |")  # fmt: skip
    for r in speed["results"]:
        if r["backend"] == "diffusers-eager":
            continue
        q = qual.get(r["backend"], {})
        step, e2e = med(r, "step"), med(r, "e2e")
        cached = q.get("e2e_negative_cached_s")
        if r["status"] != "ok":
            lines.append(f"| {r['backend']} | - | {r['status']}: {r.get('reason', '')[:80]} | | | | | | | | |")
            continue
        lines.append(
            f"| {r['backend']} | {q.get('precision', cell_precision(r['backend']))} | {step:.1f} | {x(step, b_step)} "
            f"| {e2e / 1e3:.2f} | {x(e2e, b_e2e)} | {'-' if cached is None else f'{cached:.2f}'} "
            f"| {x(None if cached is None else cached * 1e3, b_e2e)} "
            f"| {q.get('max_rel_l2', float('nan')):.2e} | {q.get('bound') or '-'} "
            f"| {q.get('psnr_db', float('nan')):.1f} |"
        )
    lines.append(
        f"\nfp32 reference (PyTorch eager) with the negative prompt cached: {reference['e2e_negative_cached_s']:.2f} s."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="sana-0.6b-512")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=7, help="seed of the held-out quality request")
    p.add_argument("--text-encoder-layers", type=int, default=None)
    p.add_argument("--cells", default=CELLS, help=f"bench backends [{CELLS}]")
    p.add_argument("--interleave", action="store_true", help="round-robin timing (every pipeline held at once)")
    p.add_argument("--calib-prompts", type=int, default=4, help="first N of the built-in calibration prompts")
    p.add_argument("--calib-steps", type=int, default=20)
    p.add_argument("--tool", default=None, help="int8 quantizer: nncf (default), onnxruntime or modelopt")
    p.add_argument("--no-speed", action="store_true", help="quality only")
    p.add_argument("--no-quality", action="store_true", help="speed only")
    p.add_argument(
        "--speed-from", type=Path, default=None,
        help="with --no-speed: the speed results of an earlier --no-quality run's --json, so one table holds both",
    )  # fmt: skip
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args(argv)
    if args.speed_from is not None and not args.no_speed:
        p.error("--speed-from takes the speed results of an earlier run: pass --no-speed too")
    work = args.work_dir or Path.home() / ".cache" / "sana-deploy" / "bench-quant"
    work.mkdir(parents=True, exist_ok=True)
    recipe = calibrate(args, args.cells, work)
    speed = {"results": []}
    if args.speed_from is not None:
        speed = json.loads(args.speed_from.read_text())["speed"]
    if not args.no_speed:
        _say(f"speed: {args.cells} against diffusers eager fp32")
        speed = bench(
            args.model, str(args.size), args.cells, steps=args.steps, warmup=args.warmup, runs=args.runs,
            device="cpu", text_encoder_layers=args.text_encoder_layers, interleave=args.interleave, work_dir=work,
        )  # fmt: skip
    qual, reference = (
        ({}, {"e2e_negative_cached_s": float("nan")}) if args.no_quality else quality(args, args.cells, work)
    )
    result = {
        "format": "sana-deploy/bench-quant/1",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "prompt": PROMPT,
        "held_out_prompt": HELD_OUT_PROMPT,
        "int8_recipe": recipe,
        "bounds": QUALITY_BOUNDS,
        "speed": speed,
        "quality": qual,
        "reference": reference,
    }
    text = table(speed, qual, reference)
    print(text)
    if args.json:
        write_json(result, args.json)
    if args.markdown:
        md = "# Quantized CPU engines\n\n" + text + "\n\n" + (bench_markdown(speed) if speed["results"] else "")
        write_atomic(args.markdown, md)
    if args.json is None:
        print(json.dumps({k: v for k, v in qual.items()}, indent=1, default=str)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
