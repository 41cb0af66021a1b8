"""Which implementation the model's Sana ops run.

* ``reference``: the ``sana::`` torch custom op backed by the pure-PyTorch reference. The op is opaque to
  tracers, so ONNX export sees one node per op (emitted as the ``sana`` local functions).
* ``inline``: the reference math called directly (plain aten ops): for AOTInductor packages that must
  run from C++ without Python-registered ops, and for ``torch.compile``.
* ``triton``: Triton kernels, registered by the kernel modules when Triton is importable.

:func:`use_kernels` picks one set for all ops; an op without the chosen implementation uses its reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sana_deploy.errors import fail

KERNEL_CHOICES = ("reference", "inline", "triton")
_IMPLS: dict[str, dict[str, Callable]] = {}
_active = "reference"


def register_kernel(op: str, name: str, fn: Callable) -> None:
    """Make ``fn`` available as implementation ``name`` of op ``op`` (e.g. ``"linear_attention"``)."""
    _IMPLS.setdefault(op, {})[name] = fn


def implementation(op: str) -> Callable:
    """The implementation of ``op`` for the active kernel set (falls back to the reference). The op packages
    register their kernels when imported, and only their own ``op`` modules call this."""
    impls = _IMPLS[op]
    return impls.get(_active, impls["reference"])


def active_kernels() -> str:
    return _active


def set_kernels(name: str) -> None:
    global _active
    if name not in KERNEL_CHOICES:
        fail(f"Unknown kernel set {name!r}; choose one of {', '.join(KERNEL_CHOICES)}.")
    _active = name


@contextmanager
def use_kernels(name: str) -> Iterator[None]:
    """Run the ``sana::`` ops with kernel set ``name`` inside the ``with`` block."""
    previous = _active
    set_kernels(name)
    try:
        yield
    finally:
        set_kernels(previous)
