"""Build benchmark: time, peak RSS and engine size per backend x profile x component (not a test).

Every build runs in a fresh child process with an empty engine folder, so its peak RSS (``getrusage`` in the
child) is its own and nothing is a cache hit. The export runs first, also in a child, and is reported separately.
One JSON file per run:

    python benchmarks/bench_build.py --model sana-tiny --backends tensorrt-rtx,onnxruntime,aoti \
        --profiles 1024,2048,4096 --out benchmarks/results/build_sana-tiny.json
    python benchmarks/bench_build.py --model sana-0.6b-1024 --random-weights --precision fp16 \
        --components transformer --backends tensorrt-rtx --profiles 1024 \
        --out benchmarks/results/build_sana-0.6b-1024_rtx_fp16.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(spec: dict) -> None:
    """Runs in the child: one export or one build; prints one JSON line."""
    if spec["step"] == "export":
        from sana_deploy.contract import parse_components
        from sana_deploy.export import export_model
        from sana_deploy.models.loaders import load_components

        names = parse_components(spec["components"])
        c = load_components(spec["model"], names, random_weights=spec["random_weights"])
        export_model(c, names, spec["precision"], spec["export_root"], unsafe_skip_parity=not spec["parity"])
        print("RESULT " + json.dumps(_rss()), flush=True)
        return
    from sana_deploy.engines import build_engines

    (e,) = build_engines(
        model=spec["model"],
        profiles=[spec["profile"]],
        backend=spec["backend"],
        precision=spec["precision"],
        components=[spec["component"]],
        engine_dir=spec["engine_dir"],
        export_root=spec["export_root"],
        random_weights=spec["random_weights"],
        progress=False,
        say=lambda m: None,
    )
    out = {"build_seconds": e.build_seconds, "engine_bytes": e.size, "device": e.device, "key": e.key, **_rss()}
    print("RESULT " + json.dumps(out), flush=True)


def _run_child(spec: dict, timeout: float) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"ok": False, "error": f"timeout after {timeout} s"}
    wall = time.perf_counter() - t0
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        return {"ok": False, "wall_seconds": round(wall, 2), "error": (err or out).strip().splitlines()[-1:]}
    res = json.loads(line[7:])
    res.update(ok=True, wall_seconds=round(wall, 2))
    return res


def _rss() -> dict:
    """Peak RSS of this process and of its largest child (AOTInductor's C++ compiler runs as children)."""
    import resource

    return {
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


def machine() -> dict:
    from sana_deploy.versions import package_versions

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(mem, 1),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "versions": package_versions(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default="sana-tiny")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--backends", default="tensorrt-rtx,onnxruntime,aoti")
    ap.add_argument("--profiles", default="1024,2048,4096")
    ap.add_argument("--components", default="transformer,vae,text_encoder")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--export-root", default=None, help="reuse an export here (default: a fresh temp export)")
    ap.add_argument("--no-parity", action="store_true", help="skip the export's parity check (big models)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", default=None, help="result JSON (required)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary exports and engines")
    args = ap.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    if not args.out:
        ap.error("--out is required")
    work = Path(tempfile.mkdtemp(prefix="bench-build-"))
    export_root = Path(args.export_root) if args.export_root else work / "export"
    base = {"model": args.model, "random_weights": args.random_weights, "precision": args.precision}
    rows = []
    if not (export_root / args.precision).exists():
        spec = {**base, "step": "export", "components": args.components, "export_root": str(export_root)}
        res = _run_child({**spec, "parity": not args.no_parity}, args.timeout)
        rows.append({"step": "export", "components": args.components, **res})
        print(json.dumps(rows[-1]), flush=True)
    for backend in args.backends.split(","):
        for component in args.components.split(","):
            profiles = args.profiles.split(",")[:1] if component == "text_encoder" else args.profiles.split(",")
            for profile in profiles:
                spec = {
                    **base,
                    "step": "build",
                    "backend": backend,
                    "component": component,
                    "profile": int(profile),
                    "engine_dir": str(work / f"engines-{backend}-{component}-{profile}"),
                    "export_root": str(export_root),
                }
                res = _run_child(spec, args.timeout)
                rows.append({"step": "build", "backend": backend, "component": component, "profile": profile, **res})
                print(json.dumps(rows[-1]), flush=True)
    result = {
        "benchmark": "build",
        "model": args.model,
        "precision": args.precision,
        "machine": machine(),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
