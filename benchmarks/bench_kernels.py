"""Kernel benchmark: sana-deploy's Triton linear attention / Mix-FFN vs diffusers' eager PyTorch math.

One run covers every (op, model, tokens, dtype) case: CUDA-event timing after warm-up with an L2 flush before each
repetition, median and p90, achieved GB/s and TFLOP/s from analytic byte and FLOP counts, roofline fraction
(H100 SXM: 3.35 TB/s HBM, 989 TFLOP/s dense bf16/fp16), speedup over the diffusers baseline. Writes JSON with the
machine info under benchmarks/results/ (or --out-dir).

Baselines are the eager ops diffusers runs (written out here; diffusers is not needed):
* linear attention: ``SanaLinearAttnProcessor2_0`` after the projections (ReLU, fp32 upcast, pad v with ones,
  two matmuls, divide by the last row + eps, cast back);
* Mix-FFN: ``GLUMBConv`` (NCHW 1x1 conv + SiLU, depthwise 3x3, chunk, a * SiLU(g), 1x1 conv) incl. its reshapes.

    python benchmarks/bench_kernels.py                      # all cases (GPU)
    python benchmarks/bench_kernels.py --tokens 4096,16384 --dtypes bf16 --json out.json   # a subset, one file
    TRITON_INTERPRET=1 python benchmarks/bench_kernels.py --dry-run   # tiny CPU run of the harness logic
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

HBM_BYTES_S = 3.35e12
PEAK_FLOPS = 989e12
MODELS = {"0.6b": (1152, 36, 2880), "1.6b": (2240, 70, 5600)}  # C, heads, F
TOKENS = {1024: (32, 32), 4096: (64, 64), 16384: (128, 128)}  # 1024^2, 2048^2, 4096^2 images (f32 VAE)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Row:
    op: str
    model: str
    tokens: int
    dtype: str
    provider: str
    median_ms: float
    p90_ms: float
    gb_s: float
    tflop_s: float
    roofline_frac: float
    speedup_vs_diffusers: float | None = None
    max_abs_diff_vs_diffusers: float | None = None


# ----------------------------------------------------------------------------------------------- baselines
def la_diffusers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, eps: float = 1e-15) -> torch.Tensor:
    dtype = q.dtype
    q = q.transpose(1, 2).unflatten(1, (heads, -1))  # (B, h, d, N)
    k = k.transpose(1, 2).unflatten(1, (heads, -1)).transpose(2, 3)  # (B, h, N, d)
    v = v.transpose(1, 2).unflatten(1, (heads, -1))  # (B, h, d, N)
    q, k = F.relu(q), F.relu(k)
    q, k, v = q.float(), k.float(), v.float()
    v = F.pad(v, (0, 0, 0, 1), mode="constant", value=1.0)  # (B, h, d + 1, N)
    out = torch.matmul(torch.matmul(v, k), q)  # (B, h, d + 1, N)
    out = out[:, :, :-1] / (out[:, :, -1:] + eps)
    out = out.flatten(1, 2).transpose(1, 2).to(dtype)
    return out.clamp(-65504, 65504) if dtype == torch.float16 else out


def mix_ffn_diffusers(x: torch.Tensor, w_inv, b_inv, w_dw, b_dw, w_pt, hw: tuple[int, int]) -> torch.Tensor:
    b, n, c = x.shape
    h = x.unflatten(1, hw).permute(0, 3, 1, 2)  # (B, C, H, W)
    h = F.silu(F.conv2d(h, w_inv[:, :, None, None], b_inv))
    h = F.conv2d(h, w_dw, b_dw, padding=1, groups=h.shape[1])
    a, g = torch.chunk(h, 2, dim=1)
    h = F.conv2d(a * F.silu(g), w_pt[:, :, None, None])
    return h.flatten(2, 3).permute(0, 2, 1)


# ----------------------------------------------------------------------------------------------- analytic counts
def la_counts(b: int, n: int, c: int, elt: int) -> tuple[float, float]:
    """(bytes, FLOPs): read q, k, v and write o once; state GEMM + apply GEMM (d = 32) + normaliser."""
    return 4 * b * n * c * elt, 4 * b * n * c * 32 + 4 * b * n * c


def mix_ffn_counts(b: int, n: int, c: int, f: int, elt: int) -> tuple[float, float]:
    """(bytes, FLOPs) of the fused design: x, 2F pre-activation (write + read), F gate (write + read), out, weights."""
    acts = b * n * (c + 2 * f + 2 * f + f + f + c)
    weights = 2 * f * c + 2 * f + 2 * f * 9 + 2 * f + c * f
    flops = 2 * b * n * c * 2 * f + 2 * b * n * f * c + 2 * 9 * b * n * 2 * f
    return (acts + weights) * elt, flops


# ----------------------------------------------------------------------------------------------- timing
def time_cuda(fn, warmup: int, reps: int) -> list[float]:
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")  # > H100's 50 MB L2
    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends, strict=True):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]


def time_cpu(fn, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def summarize(op, model, tokens, dtype, provider, times_ms, nbytes, flops) -> Row:
    med = statistics.median(times_ms)
    p90 = sorted(times_ms)[min(len(times_ms) - 1, int(0.9 * len(times_ms)))]
    bound_s = max(nbytes / HBM_BYTES_S, flops / PEAK_FLOPS)
    s = med / 1e3
    return Row(op, model, tokens, dtype, provider, med, p90, nbytes / s / 1e9, flops / s / 1e12, bound_s / s)


# ----------------------------------------------------------------------------------------------- cases
def bench_case(op: str, model: str, tokens: int, dtype: str, args: argparse.Namespace) -> list[Row]:
    import sana_deploy.plugins.linear_attention  # noqa: F401  (registers the sana::*_triton ops)
    import sana_deploy.plugins.mix_ffn  # noqa: F401

    c, heads, f = MODELS[model]
    hw = TOKENS[tokens]
    dt, dev, b = DTYPES[dtype], args.device, args.batch
    elt = torch.finfo(dt).bits // 8
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(shape, generator=g, device=dev) * scale).to(dt)

    if op == "linear_attention":
        q, k, v = rnd(b, tokens, c), rnd(b, tokens, c), rnd(b, tokens, c)
        nbytes, flops = la_counts(b, tokens, c, elt)
        providers = {
            "diffusers": lambda: la_diffusers(q, k, v, heads),
            "triton": lambda: torch.ops.sana.linear_attention_triton(q, k, v, heads, 1e-15),
        }
    else:
        x = rnd(b, tokens, c)
        w = [rnd(2 * f, c, scale=c**-0.5), rnd(2 * f, scale=0.1), rnd(2 * f, 1, 3, 3, scale=1 / 3)]
        w += [rnd(2 * f, scale=0.1), rnd(c, f, scale=f**-0.5)]
        nbytes, flops = mix_ffn_counts(b, tokens, c, f, elt)
        providers = {
            "diffusers": lambda: mix_ffn_diffusers(x, *w, hw=hw),
            "triton": lambda: torch.ops.sana.mix_ffn_triton(x.view(b, *hw, c), *w),
        }
    timer = time_cuda if dev == "cuda" else time_cpu
    rows = []
    for name, fn in providers.items():
        if name == "triton" and args.no_triton:
            continue
        with torch.no_grad():
            rows.append(summarize(op, model, tokens, dtype, name, timer(fn, args.warmup, args.reps), nbytes, flops))
    base = rows[0].median_ms
    with torch.no_grad():
        ref = providers["diffusers"]().float()
        for r in rows:
            r.speedup_vs_diffusers = base / r.median_ms
            r.max_abs_diff_vs_diffusers = (providers[r.provider]().float().reshape(ref.shape) - ref).abs().max().item()
    return rows


def machine_info() -> dict:
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unknown"

    info = {"python": platform.python_version(), "torch": torch.__version__, "host": platform.node()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    info["git_commit"] = run(["git", "rev-parse", "HEAD"]) or "unknown"
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        info.update(gpu=torch.cuda.get_device_name(), sm=major * 10 + minor, cuda=torch.version.cuda)
        info["driver"] = run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]) or "unknown"
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", default="linear_attention,mix_ffn")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--tokens", default=",".join(str(t) for t in TOKENS))
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--batch", type=int, default=2, help="2 = classifier-free guidance batch")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--out-dir", default="benchmarks/results")
    p.add_argument("--json", default=None, help="write the results to this file (default: a stamped name in --out-dir)")
    p.add_argument("--dry-run", action="store_true", help="tiny dims on CPU (Triton via TRITON_INTERPRET=1)")
    args = p.parse_args()
    args.device, args.no_triton = "cuda", False
    if args.dry_run:
        MODELS["tiny"], TOKENS[64] = (64, 2, 80), (8, 8)
        args.models, args.tokens, args.dtypes = "tiny", "64", "bf16"
        args.warmup, args.reps, args.device = 1, 3, "cpu"
        from sana_deploy.plugins.triton_utils import interpreting

        args.no_triton = not interpreting()
    elif not torch.cuda.is_available():
        raise SystemExit("bench_kernels.py needs a CUDA GPU (or --dry-run)")

    rows = []
    for op in args.ops.split(","):
        for model in args.models.split(","):
            for tokens in (int(t) for t in args.tokens.split(",")):
                for dtype in args.dtypes.split(","):
                    for r in bench_case(op, model, tokens, dtype, args):
                        rows.append(r)
                        print(
                            f"{r.op:16s} {r.model:5s} {r.tokens:6d} {r.dtype:4s} {r.provider:9s} "
                            f"median {r.median_ms:8.3f} ms  p90 {r.p90_ms:8.3f} ms  {r.gb_s:7.1f} GB/s  "
                            f"{r.tflop_s:6.1f} TFLOP/s  roofline {r.roofline_frac:5.1%}  "
                            f"x{r.speedup_vs_diffusers:.2f}  diff {r.max_abs_diff_vs_diffusers:.2e}",
                            flush=True,
                        )
    out_dir = Path(args.out_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(args.json) if args.json else out_dir / f"kernels-{'dry-' if args.dry_run else ''}{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": machine_info(),
        "peaks": {"hbm_bytes_s": HBM_BYTES_S, "dense_flops": PEAK_FLOPS, "gpu": "H100 SXM"},
        "settings": {k: v for k, v in vars(args).items()},
        "rows": [asdict(r) for r in rows],
    }
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
