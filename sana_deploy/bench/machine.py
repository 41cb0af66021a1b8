"""The machine record every result file carries: CPU, GPU, load, package versions, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

from sana_deploy.versions import package_versions

MACHINE_FIELDS = ("cpu", "gpu", "loadavg", "memory_gb", "python", "platform", "versions", "git", "date")


def _cpuinfo() -> dict:
    info: dict = {"model": platform.processor() or platform.machine(), "logical_cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = (s.strip() for s in line.split(":", 1))
            fields.setdefault(k, v)
    info["model"] = fields.get("model name", info["model"])
    if "cpu MHz" in fields:
        info["mhz"] = float(fields["cpu MHz"])
    flags = set(fields.get("flags", "").split())
    info["flags"] = " ".join(sorted(f for f in flags if f.startswith(("avx", "fma", "amx"))))
    try:
        info["cores_used"] = len(os.sched_getaffinity(0))
    except AttributeError:
        info["cores_used"] = os.cpu_count()
    return info


def _gpu() -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    out = {
        "name": props.name,
        "sm": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "memory_gb": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "count": torch.cuda.device_count(),
    }
    query = "driver_version,clocks.max.sm,clocks.max.mem,power.limit"
    try:
        line = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
        driver, sm_clock, mem_clock, power = (s.strip() for s in line.split(","))
        out.update(driver=driver, max_sm_clock_mhz=sm_clock, max_mem_clock_mhz=mem_clock, power_limit_w=power)
    except (OSError, subprocess.SubprocessError, ValueError):
        out["driver"] = None
    return out


def _git() -> dict:
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_record() -> dict:
    """Everything about the machine and software a reader needs to trust (or discount) a number."""
    import sys

    versions = package_versions()
    versions["python"] = sys.version.split()[0]
    return {
        "cpu": _cpuinfo(),
        "gpu": _gpu(),
        "loadavg": loadavg(),
        "memory_gb": _memory_gb(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "git": _git(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
