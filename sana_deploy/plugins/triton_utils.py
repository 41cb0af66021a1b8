"""Helpers shared by the Triton launchers of the ``sana::`` ops.

Triton decides process-wide, when ``triton.language`` is first imported, whether ``@triton.jit`` builds GPU
``JITFunction``s or (``TRITON_INTERPRET=1``) NumPy ``InterpretedFunction``s; the two modes cannot be mixed in one
process. So: CUDA tensors use the JIT kernels; CPU tensors can use the kernels only in a process started with
``TRITON_INTERPRET=1`` (the CPU tests run them in such a subprocess); ``triton.compile`` (AOT PTX) needs a process
without it. Nothing here imports Triton at module import.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch


def has_triton() -> bool:
    """True when ``import triton`` would succeed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when this process runs Triton kernels in the interpreter (``TRITON_INTERPRET=1``)."""
    try:
        from triton import knobs
    except ImportError:  # triton < 3.4: the environment variable is the switch
        return os.environ.get("TRITON_INTERPRET", "0") == "1"
    return bool(knobs.runtime.interpret)


def can_run(t: torch.Tensor) -> bool:
    """Whether the Triton kernels can run on ``t``: CUDA tensors, or CPU tensors under the interpreter."""
    return has_triton() and (t.device.type == "cuda" or (t.device.type == "cpu" and interpreting()))


def check_device(t: torch.Tensor) -> None:
    assert can_run(t), (
        f"Triton kernels need CUDA tensors (got {t.device}); on CPU start Python with TRITON_INTERPRET=1 "
        "(set before triton is imported) to run them in Triton's interpreter"
    )


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
    """Launch ``kernel[grid](*args, **kwargs)`` so that it also works inside a ``triton_op``.

    JIT kernels go through ``torch.library.wrap_triton`` (traced into the graph by make_fx / torch.export /
    AOTInductor; a plain launch otherwise). Interpreted kernels cannot be traced: they run eagerly on real tensors
    and are skipped on fake tensors (only the output's metadata matters there).
    """
    from triton.runtime.jit import JITFunction

    if isinstance(kernel, JITFunction):
        torch.library.wrap_triton(kernel)[grid](*args, **kwargs)
        return
    from torch._subclasses.fake_tensor import is_fake

    if any(isinstance(a, torch.Tensor) and is_fake(a) for a in args):
        return
    kernel[grid](*args, **kwargs)


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (132 for an H100 SXM when not on CUDA, for a fixed CPU heuristic)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def triton_dtype_name(dtype: torch.dtype) -> str:
    """Triton's signature spelling of a torch float dtype (``*bf16`` pointers etc.)."""
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    assert dtype in names, f"unsupported dtype {dtype}; use float32, float16 or bfloat16"
    return names[dtype]
