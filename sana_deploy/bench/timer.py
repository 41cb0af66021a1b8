"""Peak memory over a backend's timed runs: CUDA max allocated on a GPU, the process's peak RSS on the CPU.

The clocks themselves are the pipeline's (``SanaDeployOutput.seconds`` / ``.step_seconds``, synchronised at stage
and step edges on CUDA); the diffusers baselines take theirs the same way (``backends/diffusers_pipe.py``).
"""

from __future__ import annotations

from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _vm_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where Linux does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    kb = _vm_kb("VmHWM")
    if kb is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return kb * 1024


class MemoryMeter:
    """``reset()`` before the timed runs (returns what is measured), ``peak()`` after them."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def reset(self) -> str:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return "cuda_max_allocated"
        return "peak_rss" if reset_peak_rss() else "peak_rss_since_start"

    def peak(self) -> int | None:
        if self.cuda:
            import torch

            return int(torch.cuda.max_memory_allocated())
        return peak_rss_bytes()
