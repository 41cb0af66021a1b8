"""Time one stage: CUDA events on a GPU (synchronised only at the stage's edges), ``perf_counter_ns`` on CPU,
plus the stage's peak memory (CUDA max allocated, or the process's peak RSS on CPU)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass
class StageTiming:
    """Raw measurements of one stage of one backend."""

    first_call_ms: float
    times_ms: list[float] = field(default_factory=list)
    peak_memory_bytes: int | None = None
    memory_kind: str = ""


class StageTimer:
    """Runs a stage callable with warm-up and timed runs on ``device`` ("cpu" or "cuda")."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        if self.cuda:
            import torch

            self._torch = torch

    def _sync(self) -> None:
        if self.cuda:
            self._torch.cuda.synchronize()

    def _once(self, fn: Callable[[], object]) -> float:
        """Milliseconds of one call; the only synchronisation is before and after it."""
        if self.cuda:
            start = self._torch.cuda.Event(enable_timing=True)
            end = self._torch.cuda.Event(enable_timing=True)
            self._sync()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t0) / 1e6

    def measure(self, fn: Callable[[], object], warmup: int, runs: int) -> StageTiming:
        """First call (timed on its own: includes lazy init, autotuning, compilation), ``warmup - 1`` more
        untimed calls, then ``runs`` timed calls with peak memory tracked over them."""
        first = self._once(fn)
        for _ in range(max(warmup - 1, 0)):
            fn()
        self._sync()
        kind = self._reset_memory()
        times = [self._once(fn) for _ in range(runs)]
        return StageTiming(first, times, self._peak_memory(), kind)

    def _reset_memory(self) -> str:
        if self.cuda:
            self._torch.cuda.reset_peak_memory_stats()
            return "cuda_max_allocated"
        return "peak_rss" if reset_peak_rss() else "peak_rss_since_start"

    def _peak_memory(self) -> int | None:
        if self.cuda:
            return int(self._torch.cuda.max_memory_allocated())
        return peak_rss_bytes()
