"""What device this process runs on, as a cache-key tag: ``cpu`` or ``sm<major><minor>`` of CUDA device 0."""

from __future__ import annotations

from functools import cache


@cache
def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA install reads as no GPU
        return False


@cache
def current_device() -> str:
    if not cuda_available():
        return "cpu"
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return f"sm{major}{minor}"


@cache
def device_name() -> str:
    if not cuda_available():
        import platform

        return platform.processor() or platform.machine() or "cpu"
    import torch

    return torch.cuda.get_device_name(0)
