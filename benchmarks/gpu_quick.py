"""``bash benchmarks/gpu.sh quick``: the GPU checks that fit one 15-minute device lease, in one command.

Parts, in order (each a subprocess; one that fails or times out does not stop the others):

    setup         pip install --no-deps -e . (offline), carried wheels for what the machine lacks, machine record
    gpu-tests     python -m pytest -m gpu tests/plugins (Triton kernels, opcheck, AOTInductor package)
    kernels       benchmarks/bench_kernels.py at 4K and 16K tokens, bf16 (Triton vs diffusers' eager math)
    step-0.6b     sana-deploy bench: 0.6B at 1024², bf16, diffusers eager (baseline) vs our torch + Triton kernels
    aoti-0.6b     the same case, diffusers eager vs aoti (AOTInductor compile timed apart as build_s)
    step-1.6b-4k  sana-deploy bench: one 1.6B 4096² case, our torch backend only

Before anything runs, a table of per-part time estimates is printed; a running clock prefixes every line of this
script. A part is skipped (and recorded so) when the elapsed time plus its estimate would pass the budget
(``QUICK_BUDGET_S``, default 480 s), and a part still running when the budget runs out is stopped (rc 124).
Everything goes to ``$OUT`` (at most 8 files, the device's limit on files coming back):

    summary.json              parts, estimates, actual seconds, rc, skipped (with reason), timed_out, files
    quick.log                 the whole output of every part
    machine.txt               nvidia-smi, versions of torch/triton/diffusers/transformers, what setup installed
    kernels.json              the kernel benchmark
    step-0.6b-1024.json, aoti-0.6b-1024.json, step-1.6b-4k.json    sana-deploy bench results

``--dry-run`` (or ``QUICK_DRY_RUN=1``) runs the same plumbing on the CPU with tiny stand-ins (sana-tiny at 512,
one step, fp32; the kernel benchmark's own ``--dry-run``; nothing installed) and CPU estimates, to prove the
budget logic and ``summary.json`` without a GPU.

Environment: ``OUT`` (default ./gpu-out), ``QUICK_BUDGET_S`` (480), ``QUICK_PARTS`` (comma-separated subset, e.g.
``aoti-0.6b`` to rerun one part), ``QUICK_WORK`` (scratch for engines and exports, default /tmp/sana-quick),
``QUICK_WHEELS`` (folder of carried wheels, default benchmarks/wheels).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

T0 = time.monotonic()  # the running clock counts from the start of this process
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET_S = 480.0
MAX_OUT_FILES = 8  # the device returns at most 8 files from $OUT
# Dense bf16 tensor-core rate used for the step estimates (an H100 SXM sustains about 700 TFLOP/s on large GEMMs;
# an H200 was measured at ~790). Our eager step reaches a fraction of it; diffusers eager a smaller one.
GPU_BF16_TFLOPS = 700.0
STEP_EFFICIENCY = 0.4
# Wheels for what the device image lacks (torch, triton, transformers, tokenizers, onnx, onnxruntime, click, tqdm,
# pillow, safetensors, filelock, huggingface-hub, matplotlib, pytest are in it; diffusers is not). Filled here by
# `bash benchmarks/gpu.sh wheels`; git-ignored; carried with run(carry=["benchmarks/wheels"]).
WHEELS = {"diffusers": "diffusers==0.42.1"}
FALLBACK_WHEELS = {"huggingface_hub": "huggingface_hub==2.4.0"}  # only installed if diffusers fails to import


# ----------------------------------------------------------------------------------------------- parts
@dataclass
class Part:
    name: str
    title: str
    estimate_s: float
    basis: str
    cmd: list[str]
    needs: tuple[str, ...] = ()  # facts from setup that must hold: "diffusers"
    outputs: tuple[str, ...] = ()


@dataclass
class Record:
    name: str
    title: str
    estimate_s: float
    basis: str
    command: str
    skipped: bool = False
    skip_reason: str = ""
    rc: int | None = None
    timed_out: bool = False
    actual_s: float | None = None
    started_at_s: float | None = None
    outputs: list[str] = field(default_factory=list)


def _step_seconds(preset: str, latent: int) -> tuple[float, float]:
    """(TFLOP of one CFG step of the split denoiser, estimated seconds at STEP_EFFICIENCY of GPU_BF16_TFLOPS)."""
    try:
        sys.path.insert(0, str(ROOT))
        from sana_deploy.bench.flops import transformer_flops
        from sana_deploy.models.config import get_preset

        flops = transformer_flops(get_preset(preset).transformer, 2, latent, latent, caption_kv=False)
    except Exception:  # estimates must not need a working package
        flops = {"sana-0.6b-1024": 2.15e12, "sana-1.6b-4k": 90.9e12}.get(preset, 1e12)
    return flops / 1e12, flops / (GPU_BF16_TFLOPS * 1e12 * STEP_EFFICIENCY)


def bench_cmd(py: str, out: Path, work: Path, json_name: str, **kw: str) -> list[str]:
    args = [py, "-m", "sana_deploy", "bench"]
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        args += [flag] if v == "" else [flag, str(v)]
    return args + ["--work-dir", str(work / json_name.removesuffix(".json")), "--json", str(out / json_name)]


def plan(dry: bool, out: Path, work: Path) -> list[Part]:
    py = sys.executable
    me = str(Path(__file__).resolve())
    pytest = [py, "-m", "pytest", "-m", "gpu", "tests/plugins", "-q", "-rfE", "-p", "no:cacheprovider"]
    pytest += ["-o", "addopts=", "-o", "timeout=300"]
    setup = [py, me, "setup", "--out", str(out), "--work", str(work)] + (["--dry-run"] if dry else [])
    if dry:  # CPU stand-ins: same commands, tiny sizes; estimates measured on a 2-core CPU box
        common = dict(profiles="512", precision="fp32", device="cpu", stages="step,loop", steps="1")
        common.update(warmup="1", runs="1", text_encoder_layers="2")
        return [
            Part("setup", "set-up (dry: nothing installed) + machine record", 12, "one probe process: ~12 s", setup),
            Part("gpu-tests", "pytest -m gpu tests/plugins (skips without CUDA)", 12, "collection ~10 s", pytest),
            Part(
                "kernels",
                "bench_kernels.py --dry-run (tiny, CPU)",
                10,
                "tiny CPU timings; Triton rows only under TRITON_INTERPRET=1",
                [py, "benchmarks/bench_kernels.py", "--dry-run", "--json", str(out / "kernels.json")],
                outputs=("kernels.json",),
            ),
            Part(
                "step-0.6b",
                "bench sana-tiny 512 fp32 cpu: diffusers eager vs torch",
                15,
                "sana-tiny: ~13 s measured on 2 cores",
                bench_cmd(py, out, work, "step-0.6b-1024.json", model="sana-tiny", backends="torch", **common),
                needs=("diffusers",),
                outputs=("step-0.6b-1024.json",),
            ),
            Part(
                "aoti-0.6b",
                "bench sana-tiny 512 fp32 cpu: diffusers eager vs aoti",
                160,
                "export + AOTInductor CPU compile of 3 tiny graphs: 155 s measured on 2 cores",
                bench_cmd(py, out, work, "aoti-0.6b-1024.json", model="sana-tiny", backends="aoti", **common),
                needs=("diffusers",),
                outputs=("aoti-0.6b-1024.json",),
            ),
            Part(
                "step-1.6b-4k",
                "bench sana-tiny-pe 512 fp32 cpu: torch only",
                15,
                "sana-tiny-pe: like sana-tiny",
                bench_cmd(
                    py, out, work, "step-1.6b-4k.json", model="sana-tiny-pe", backends="torch", no_baseline="", **common
                ),
                needs=("diffusers",),
                outputs=("step-1.6b-4k.json",),
            ),
        ]

    tf06, s06 = _step_seconds("sana-0.6b-1024", 32)
    tf16, s16 = _step_seconds("sana-1.6b-4k", 128)
    steps06, steps16 = 10, 3
    # 0.6B: python + torch import 15 s, random init of transformer + 2-layer Gemma-2 (256k x 2304 embedding) + DC-AE
    # ~30 s, per backend a first call with Triton JIT ~10 s, then 4 requests of 10 steps (step floor 15 ms: eager
    # launch overhead of 28 blocks).
    req06 = 4 * (steps06 * max(s06, 0.015) + 0.2)
    est06 = 15 + 30 + 2 * (10 + req06)
    # aoti: same build + baseline, then the engine build of text_encoder, transformer_text, transformer_cached: the
    # export with its parity checks (real-size 0.6B: 143 s on a 2-core CPU, guessed ~60 s on 16 cores) and the
    # AOTInductor compile (Inductor's Triton kernels + the C++ wrapper, 16 cores; sana-tiny on 2 CPU cores: 137 s
    # for export + compile), guessed ~3 minutes.
    est_aoti = 15 + 30 + 10 + req06 + 60 + 180 + 10 + req06
    # 1.6B 4K: random init ~40 s (1.6B transformer + Gemma-2 + DC-AE), first call ~20 s (JIT at 16K tokens), then
    # 2 requests of 3 steps.
    est16 = 15 + 40 + 20 + 2 * (steps16 * s16 + 0.3)
    bf16 = dict(precision="bf16", device="cuda", stages="step,loop", text_encoder_layers="2")
    return [
        Part(
            "setup",
            "pip install --no-deps -e . + carried wheels + machine record",
            30,
            "pip install -e ~10 s, wheels ~5 s, torch import + nvidia-smi ~10 s",
            setup,
        ),
        Part(
            "gpu-tests",
            "pytest -m gpu tests/plugins",
            90,
            "26 tests: ~20 Triton JIT compiles ~1.5 s each, one small AOTInductor package ~40 s, import ~10 s",
            pytest,
        ),
        Part(
            "kernels",
            "bench_kernels.py 4K + 16K tokens, bf16, 0.6b + 1.6b",
            45,
            "8 cases x 2 providers: JIT ~3 s per case, 5 + 20 timed reps of a few ms each, import ~10 s",
            [py, "benchmarks/bench_kernels.py", "--tokens", "4096,16384", "--dtypes", "bf16"]
            + ["--warmup", "5", "--reps", "20", "--json", str(out / "kernels.json")],
            outputs=("kernels.json",),
        ),
        Part(
            "step-0.6b",
            "0.6B 1024² bf16: diffusers eager vs torch + Triton kernels",
            round(est06),
            f"{tf06:.2f} TFLOP/step at {STEP_EFFICIENCY:.0%} of {GPU_BF16_TFLOPS:.0f} TFLOP/s = "
            f"{s06 * 1e3:.0f} ms (floor 15 ms); init ~30 s; 2 backends x 4 requests x {steps06} steps",
            bench_cmd(
                py,
                out,
                work,
                "step-0.6b-1024.json",
                model="sana-0.6b-1024",
                profiles="1024",
                backends="torch",
                steps=str(steps06),
                warmup="1",
                runs="3",
                **bf16,
            ),
            needs=("diffusers",),
            outputs=("step-0.6b-1024.json",),
        ),
        Part(
            "aoti-0.6b",
            "0.6B 1024² bf16: diffusers eager vs aoti",
            round(est_aoti),
            "export + parity ~60 s, AOTInductor compile of 3 graphs ~180 s (guesses), init ~30 s, requests as above",
            bench_cmd(
                py,
                out,
                work,
                "aoti-0.6b-1024.json",
                model="sana-0.6b-1024",
                profiles="1024",
                backends="aoti",
                steps=str(steps06),
                warmup="1",
                runs="3",
                **bf16,
            ),
            needs=("diffusers",),
            outputs=("aoti-0.6b-1024.json",),
        ),
        Part(
            "step-1.6b-4k",
            "1.6B 4096² bf16: torch + Triton kernels only",
            round(est16),
            f"{tf16:.1f} TFLOP/step -> {s16:.2f} s; init ~40 s, first call ~20 s; 2 requests x {steps16} steps",
            bench_cmd(
                py,
                out,
                work,
                "step-1.6b-4k.json",
                model="sana-1.6b-4k",
                profiles="4096",
                backends="torch",
                no_baseline="",
                steps=str(steps16),
                warmup="1",
                runs="1",
                **bf16,
            ),
            needs=("diffusers",),
            outputs=("step-1.6b-4k.json",),
        ),
    ]


# ----------------------------------------------------------------------------------------------- running
class Clock:
    def __init__(self, log) -> None:  # noqa: ANN001 (text file)
        self.log = log

    def elapsed(self) -> float:
        return time.monotonic() - T0

    def say(self, msg: str) -> None:
        line = f"[quick {self.elapsed():6.1f}s] {msg}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()


def run_part(cmd: list[str], timeout_s: float, log, env: dict[str, str]) -> tuple[int, bool]:  # noqa: ANN001
    """Run ``cmd`` from the repository root, its output streamed to stdout and ``log``; stopped (its whole process
    group) after ``timeout_s``. Returns (rc, timed_out)."""
    try:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
    except OSError as exc:
        log.write(f"cannot start: {exc}\n")
        return 127, False

    def pump() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            text = raw.decode(errors="replace")
            sys.stdout.write(text)
            sys.stdout.flush()
            log.write(text)
        log.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(timeout_s, 1.0))
    except subprocess.TimeoutExpired:
        timed_out = True
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
    reader.join(timeout=10)
    return (124 if timed_out else proc.returncode), timed_out


def estimate_table(parts: list[Part], budget: float) -> str:
    lines = [f"{'part':13s} {'estimate':>9s} {'cumulative':>11s}  basis"]
    total = 0.0
    for p in parts:
        total += p.estimate_s
        flag = "" if total <= budget else "  (past the budget if all run as estimated)"
        lines.append(f"{p.name:13s} {p.estimate_s:7.0f} s {total:9.0f} s  {p.basis}{flag}")
    lines.append(f"{'total':13s} {total:7.0f} s   budget {budget:.0f} s (QUICK_BUDGET_S)")
    return "\n".join(lines)


def headline(out: Path, name: str) -> list[str]:
    """One line per result of a part's JSON (bench: step/loop medians and speed-ups; kernels: median + speed-up)."""
    try:
        data = json.loads((out / name).read_text())
    except (OSError, ValueError):
        return []
    lines = []
    for r in data.get("rows", []):
        lines.append(
            f"{r['op']} {r['model']} {r['tokens']} {r['dtype']} {r['provider']}: {r['median_ms']:.3f} ms, "
            f"x{r.get('speedup_vs_diffusers') or 0:.2f} vs diffusers, roofline {r['roofline_frac']:.0%}"
        )
    for r in data.get("results", []):
        if r.get("status") != "ok":
            lines.append(f"{r.get('model')} {r.get('profile')} {r.get('backend')}: {r.get('status')} {r.get('reason')}")
            continue
        parts = [f"build {r.get('build_s') or 0:.1f} s"]
        for stage in ("step", "loop"):
            st = r.get("stages", {}).get(stage)
            if st:
                sp = (r.get("speedup_vs_baseline") or {}).get(stage)
                parts.append(f"{stage} {st['median_ms']:.1f} ms" + (f" (x{sp:.2f})" if sp else ""))
        step = r.get("stages", {}).get("step") or {}
        if step.get("tflops"):
            parts.append(f"{step['tflops']:.3g} TFLOP/s")
        lines.append(f"{r.get('model')} {r.get('profile')} {r.get('backend')}: " + ", ".join(parts))
    return lines


def write_summary(
    out: Path, work: Path, dry: bool, budget: float, parts: list[Part], records: list[Record], elapsed: float
) -> None:
    """$OUT/summary.json, rewritten after every part (so a run stopped from outside still leaves one)."""
    facts_path = work / "facts.json"
    facts = json.loads(facts_path.read_text()) if facts_path.exists() else {}
    files = sorted({f.name for f in out.iterdir() if f.is_file()} | {"summary.json"})
    summary = {
        "format": "sana-deploy/gpu-quick/1",
        "mode": "dry-run" if dry else "gpu",
        "budget_s": budget,
        "elapsed_s": round(elapsed, 1),
        "estimate_total_s": sum(p.estimate_s for p in parts),
        "finished": len(records) == len(parts) and all(r.skipped or r.rc is not None for r in records),
        "out": str(out),
        "work": str(work),
        "facts": facts,
        "parts": [asdict(r) for r in records],
        "results": {o: headline(out, o) for r in records for o in r.outputs},
        "files": files,
        "files_over_device_limit": len(files) > MAX_OUT_FILES,
    }
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / "summary.json")


def main_quick(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    work = Path(args.work).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    budget = float(args.budget)
    parts = plan(args.dry_run, out, work)
    wanted = [s.strip() for s in (args.parts or "").split(",") if s.strip()]
    unknown = sorted(set(wanted) - {p.name for p in parts})
    if unknown:
        print(f"unknown part(s) {unknown}; parts: {', '.join(p.name for p in parts)}", file=sys.stderr)
        return 2
    if wanted:
        parts = [p for p in parts if p.name in wanted]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    if args.dry_run:
        env.pop("TRITON_INTERPRET", None)
    facts_path = work / "facts.json"
    if any(p.name == "setup" for p in parts):
        facts_path.unlink(missing_ok=True)  # else: a rerun of some parts trusts the last setup's facts, if any
    records: list[Record] = []
    with open(out / "quick.log", "w") as log:
        clock = Clock(log)
        mode = "dry-run (CPU stand-ins)" if args.dry_run else "GPU"
        clock.say(f"gpu.sh quick, {mode}: out {out}, work {work}, budget {budget:.0f} s")
        table = estimate_table(parts, budget)
        print(table, flush=True)
        log.write(table + "\n")
        for p in parts:
            rec = Record(p.name, p.title, p.estimate_s, p.basis, " ".join(p.cmd))
            records.append(rec)
            for o in p.outputs:
                (out / o).unlink(missing_ok=True)  # no stale result of an earlier run passes for this one's
            facts = json.loads(facts_path.read_text()) if facts_path.exists() else {}
            missing = [n for n in p.needs if facts and not facts.get(n, {}).get("ok", False)]
            elapsed = clock.elapsed()
            if missing:
                why = "; ".join(facts.get(n, {}).get("detail", "setup did not report it") for n in missing)
                rec.skipped, rec.skip_reason = True, f"needs {', '.join(missing)}: {why}"
            elif elapsed + p.estimate_s > budget:
                rec.skipped = True
                rec.skip_reason = (
                    f"elapsed {elapsed:.0f} s + estimate {p.estimate_s:.0f} s = {elapsed + p.estimate_s:.0f} s "
                    f"> budget {budget:.0f} s"
                )
            if rec.skipped:
                clock.say(f"SKIP {p.name}: {rec.skip_reason}")
                write_summary(out, work, args.dry_run, budget, parts, records, clock.elapsed())
                continue
            left = budget - elapsed
            clock.say(f"START {p.name} ({p.title}): estimate {p.estimate_s:.0f} s, {left:.0f} s of budget left")
            log.write(f"$ {rec.command}\n")
            log.flush()
            rec.started_at_s = round(elapsed, 1)
            rc, timed_out = run_part(p.cmd, left, log, env)
            rec.rc, rec.timed_out = rc, timed_out
            rec.actual_s = round(clock.elapsed() - elapsed, 1)
            rec.outputs = [o for o in p.outputs if (out / o).exists()]
            state = "TIMED OUT (budget reached)" if timed_out else ("ok" if rc == 0 else f"FAILED rc={rc}")
            clock.say(f"END {p.name}: {state} in {rec.actual_s:.0f} s (estimate {p.estimate_s:.0f} s)")
            for o in rec.outputs:
                for line in headline(out, o):
                    clock.say(f"  {line}")
            write_summary(out, work, args.dry_run, budget, parts, records, clock.elapsed())
        total = clock.elapsed()
        clock.say("summary:")
        for r in records:
            state = f"skipped ({r.skip_reason})" if r.skipped else f"rc={r.rc} {r.actual_s:.0f} s"
            clock.say(f"  {r.name:13s} estimate {r.estimate_s:4.0f} s  {state}")
        clock.say(f"done in {total:.0f} s (budget {budget:.0f} s)")
    write_summary(out, work, args.dry_run, budget, parts, records, total)
    print(f"wrote {out / 'summary.json'}", flush=True)
    return 0 if all(r.skipped or r.rc == 0 for r in records) else 1


# ----------------------------------------------------------------------------------------------- setup part
PROBE = r"""
import importlib.metadata as m, json, platform, sys
facts, lines = {}, ["python " + platform.python_version() + " " + sys.executable]
for d in ("torch", "triton", "diffusers", "transformers", "huggingface_hub", "tokenizers", "onnx", "onnxruntime",
          "numpy", "click", "sana-deploy"):
    try:
        lines.append(d + " " + m.version(d))
    except Exception:
        lines.append(d + " not installed")
def check(name, fn):
    try:
        facts[name] = {"ok": True, "detail": str(fn() or "importable")}
    except BaseException as exc:
        facts[name] = {"ok": False, "detail": (type(exc).__name__ + ": " + str(exc)).splitlines()[0][:300]}
def cuda():
    import torch
    assert torch.cuda.is_available(), "torch.cuda.is_available() is False (torch " + torch.__version__ + ")"
    sm = "".join(map(str, torch.cuda.get_device_capability()))
    return f"{torch.cuda.get_device_name()} sm{sm} cuda {torch.version.cuda} torch {torch.__version__}"
def diffusers():
    import transformers
    from diffusers import AutoencoderDC, SanaPipeline
def sana_deploy():
    import sana_deploy.bench, sana_deploy.plugins.linear_attention, sana_deploy.plugins.mix_ffn
check("cuda", cuda)
check("diffusers", diffusers)
check("sana_deploy", sana_deploy)
print("\n".join(lines))
print("FACTS " + json.dumps(facts))
"""


def _facts(py: str, rec: list[str]) -> dict[str, dict]:
    """Versions into ``rec``; {"cuda"|"diffusers"|"sana_deploy": {"ok", "detail"}} from one probe process."""
    try:
        r = subprocess.run([py, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
        text = r.stdout + r.stderr
    except (OSError, subprocess.SubprocessError) as exc:
        text = str(exc)
    facts: dict[str, dict] = {}
    for line in text.splitlines():
        if line.startswith("FACTS "):
            facts = json.loads(line[6:])
        else:
            rec.append(line)
    for name in ("cuda", "diffusers", "sana_deploy"):
        facts.setdefault(name, {"ok": False, "detail": "probe failed: " + (text.strip().splitlines() or ["?"])[-1]})
    if not facts["diffusers"]["ok"]:
        facts["diffusers"]["detail"] += (
            "; random DC-AE weights and the diffusers baseline need diffusers: run `bash benchmarks/gpu.sh wheels` "
            "where PyPI is reachable and carry benchmarks/wheels"
        )
    return facts


def _probe(py: str, code: str) -> tuple[bool, str]:
    try:
        r = subprocess.run([py, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    text = (r.stdout + r.stderr).strip()
    return r.returncode == 0, text.splitlines()[-1] if text else ""


def _sh(cmd: list[str], rec: list[str], timeout: float = 300) -> int:
    rec.append("$ " + " ".join(cmd))
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        rec.append(f"  -> {exc}")
        return 127
    rec.append((r.stdout + r.stderr).rstrip())
    return r.returncode


def main_setup(args: argparse.Namespace) -> int:
    """Install (GPU mode) and record the machine into $OUT/machine.txt; facts for the later parts into
    $QUICK_WORK/facts.json. Exit 0 unless the package cannot be imported at all."""
    py = sys.executable
    out, work = Path(args.out), Path(args.work)
    wheels = Path(args.wheels) if Path(args.wheels).is_absolute() else ROOT / args.wheels
    rec: list[str] = [f"# machine record, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", ""]
    pip = [py, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--disable-pip-version-check"]
    if args.dry_run:
        rec.append("dry run: nothing installed (GPU mode runs: " + " ".join(pip + ["-e", "."]) + ")")
    else:
        if _sh(pip + ["-e", "."], rec) != 0:
            rec.append("pip install -e . failed; the parts still import sana_deploy through PYTHONPATH")
        present = sorted(p.name for p in wheels.glob("*.whl")) if wheels.is_dir() else []
        rec.append(f"carried wheels in {wheels}: {present or 'none'}")
        for module, spec in WHEELS.items():
            ok, _ = _probe(py, f"import importlib.util, sys; sys.exit(importlib.util.find_spec('{module}') is None)")
            dist = spec.split("==")[0].replace("-", "_")
            found = [wheels / n for n in present if n.lower().startswith(dist.lower() + "-")]
            if not ok and found:
                _sh(pip + [str(found[0])], rec)
        ok, why = _probe(py, "import diffusers, transformers; from diffusers import AutoencoderDC, SanaPipeline")
        if not ok:
            for spec in FALLBACK_WHEELS.values():
                dist = spec.split("==")[0]
                found = [wheels / n for n in present if n.lower().startswith(dist.lower() + "-")]
                if found:
                    rec.append(f"diffusers does not import ({why}); installing the carried {found[0].name}")
                    _sh(pip + [str(found[0])], rec)
    rec += ["", "## versions and facts"]
    facts = _facts(py, rec)
    rec += ["", "## nvidia-smi"]
    if shutil.which("nvidia-smi"):
        _sh(["nvidia-smi"], rec, timeout=60)
        q = "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,temperature.gpu"
        _sh(["nvidia-smi", f"--query-gpu={q}", "--format=csv"], rec, timeout=60)
    else:
        rec.append("nvidia-smi: not found")
    rec += ["", "## cpu", f"cores {os.cpu_count()}, load {os.getloadavg()}"]
    rec += ["", "## facts for the later parts", json.dumps(facts, indent=2)]
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    (out / "machine.txt").write_text("\n".join(rec) + "\n")
    (work / "facts.json").write_text(json.dumps(facts))
    print("\n".join(rec[-12:]))
    return 0 if facts["sana_deploy"]["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="quick", choices=["quick", "setup", "plan"])
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("QUICK_DRY_RUN", "") not in ("", "0"))
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu-out"))
    p.add_argument("--work", default=os.environ.get("QUICK_WORK") or "/tmp/sana-quick")
    p.add_argument("--budget", type=float, default=float(os.environ.get("QUICK_BUDGET_S") or DEFAULT_BUDGET_S))
    p.add_argument("--parts", default=os.environ.get("QUICK_PARTS", ""), help="comma-separated subset of the parts")
    p.add_argument("--wheels", default=os.environ.get("QUICK_WHEELS") or "benchmarks/wheels")
    args = p.parse_args(argv)
    if args.command == "setup":
        return main_setup(args)
    if args.command == "plan":
        print(estimate_table(plan(args.dry_run, Path(args.out), Path(args.work)), args.budget))
        return 0
    return main_quick(args)


if __name__ == "__main__":
    sys.exit(main())
