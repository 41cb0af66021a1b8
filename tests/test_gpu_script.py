"""``bash benchmarks/gpu.sh quick``: its CPU dry run (tiny stand-ins) proves the plumbing, the budget logic and
``summary.json`` without a GPU; the GPU plan's estimates are checked without running anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["setup", "gpu-tests", "kernels", "step-0.6b", "aoti-0.6b", "step-1.6b-4k"]


def _gpu_quick():  # noqa: ANN202 (the benchmarks/gpu_quick.py module)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_quick
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return gpu_quick


def _quick(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ, OUT=str(tmp_path / "out"), QUICK_WORK=str(tmp_path / "work"), **env)
    full.pop("QUICK_DRY_RUN", None)
    return subprocess.run(
        ["bash", "benchmarks/gpu.sh", "quick", *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=300
    )


def test_dry_run_budget_skips_and_summary(tmp_path: Path) -> None:
    """setup, the kernel benchmark and one sana-tiny bench run; the aoti part (estimate 160 s) does not fit a 120 s
    budget and is skipped with its reason; summary.json records every part."""
    r = _quick(tmp_path, "--dry-run", QUICK_BUDGET_S="120", QUICK_PARTS="setup,kernels,step-0.6b,aoti-0.6b")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "estimate" in r.stdout and "SKIP aoti-0.6b" in r.stdout
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "dry-run" and summary["budget_s"] == 120 and summary["finished"]
    parts = {p["name"]: p for p in summary["parts"]}
    assert list(parts) == ["setup", "kernels", "step-0.6b", "aoti-0.6b"]
    for name in ("setup", "kernels", "step-0.6b"):
        p = parts[name]
        assert not p["skipped"] and p["rc"] == 0 and not p["timed_out"], p
        assert p["actual_s"] > 0 and p["estimate_s"] > 0
    aoti = parts["aoti-0.6b"]
    assert aoti["skipped"] and aoti["rc"] is None and "> budget 120 s" in aoti["skip_reason"]
    assert parts["kernels"]["outputs"] == ["kernels.json"]
    assert parts["step-0.6b"]["outputs"] == ["step-0.6b-1024.json"]
    bench = json.loads((out / "step-0.6b-1024.json").read_text())
    assert {r["backend"] for r in bench["results"]} == {"diffusers-eager", "torch"}
    assert any("torch" in line and "step" in line for line in summary["results"]["step-0.6b-1024.json"])
    assert summary["facts"]["diffusers"]["ok"] and not summary["facts"]["cuda"]["ok"]
    assert "torch" in (out / "machine.txt").read_text()
    assert (out / "quick.log").exists() and not summary["files_over_device_limit"]
    assert len(summary["files"]) <= 8


def test_missing_diffusers_skips_the_bench_parts(tmp_path: Path) -> None:
    """When setup found no importable diffusers, the sana-deploy bench parts are skipped with that reason (the
    random DC-AE weights and the baseline need it) instead of failing."""
    (tmp_path / "work").mkdir()
    facts = {"diffusers": {"ok": False, "detail": "ModuleNotFoundError: No module named 'diffusers'"}}
    (tmp_path / "work" / "facts.json").write_text(json.dumps(facts))
    r = _quick(tmp_path, "--dry-run", QUICK_PARTS="step-0.6b,step-1.6b-4k")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [p["name"] for p in summary["parts"]] == ["step-0.6b", "step-1.6b-4k"]
    for p in summary["parts"]:
        assert p["skipped"] and p["skip_reason"].startswith("needs diffusers: ModuleNotFoundError")


def test_gpu_plan_estimates_fit_the_lease() -> None:
    """The GPU plan: every part estimated, the step estimates from the analytic FLOP count; run to the estimates
    under the default 480 s budget, only the aoti part (AOTInductor compile minutes) may be left for a rerun."""
    gpu_quick = _gpu_quick()
    parts = gpu_quick.plan(False, Path("/tmp/o"), Path("/tmp/w"))
    assert [p.name for p in parts] == PARTS
    assert all(p.estimate_s > 0 and p.basis for p in parts)
    elapsed, skipped = 0.0, []
    for p in parts:
        if elapsed + p.estimate_s > gpu_quick.DEFAULT_BUDGET_S:
            skipped.append(p.name)
        else:
            elapsed += p.estimate_s
    assert set(skipped) <= {"aoti-0.6b"}
    assert next(p for p in parts if p.name == "aoti-0.6b").estimate_s < 540  # a rerun fits one 10-minute command
    step = next(p for p in parts if p.name == "step-0.6b")
    assert "2.15 TFLOP/step" in step.basis
    assert "--backends torch" in " ".join(step.cmd) and "--precision bf16" in " ".join(step.cmd)
    big = next(p for p in parts if p.name == "step-1.6b-4k")
    assert "--model sana-1.6b-4k" in " ".join(big.cmd) and "--no-baseline" in big.cmd
    table = gpu_quick.estimate_table(parts, 480)
    assert "budget 480 s" in table and "aoti-0.6b" in table


def test_unknown_part_is_refused(tmp_path: Path) -> None:
    r = _quick(tmp_path, "--dry-run", QUICK_PARTS="nope")
    assert r.returncode == 2 and "unknown part" in r.stderr


def test_part_past_the_budget_is_stopped(tmp_path: Path) -> None:
    """A part still running when the budget runs out is stopped with its process group: rc 124, timed_out."""
    gpu_quick = _gpu_quick()
    with open(tmp_path / "log", "w") as log:
        rc, timed_out = gpu_quick.run_part(["bash", "-c", "echo started; sleep 60 & wait"], 1.5, log, dict(os.environ))
    assert (rc, timed_out) == (124, True)
    assert "started" in (tmp_path / "log").read_text()
