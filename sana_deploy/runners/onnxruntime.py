"""ONNX Runtime: the one place sessions are opened (:func:`ort_session`), and the runner over one session.

The same runner serves a plain export (``export/<model>/<precision>/<component>/model.onnx``, optimised when the
session starts) and an engine-cache entry (the graph saved after optimisation at build time: ``opt="disable"``).
Execution providers: TensorRT, CUDA, CPU, as installed. ONNX Runtime's CPU provider has no bf16 kernels, so a bf16
graph there is refused with a message saying what to use instead.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sana_deploy.errors import fail
from sana_deploy.runners.base import Runner, Shapes
from sana_deploy.runners.weights import (
    WeightRef,
    WeightSwapError,
    read_weight_map,
    require_map,
    stored_weights,
    to_layout,
)

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
OPT_LEVELS = ("disable", "basic", "extended", "all")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one): ONNX Runtime's thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def available_providers() -> list[str]:
    import onnxruntime as ort

    have = ort.get_available_providers()
    return [p for p in PROVIDER_ORDER if p in have]


@dataclass(frozen=True)
class OrtOptions:
    """Session settings; ``None`` means ONNX Runtime's (or this machine's) default."""

    opt: str = "all"  # graph optimisation level: disable, basic, extended, all
    threads: int | None = None  # intra-op threads (default: the cores this process may use)
    inter_threads: int = 1
    # session.intra_op.allow_spinning. On by default, for the dedicated host a deployment runs on: on an otherwise
    # idle CPU spinning is ~5% faster per step (0.6B at 512², 2 threads). On a CPU shared with other heavy work, a
    # spinning thread that waits for a descheduled partner burns its time slice: pass spin=False there (median step
    # 0.82-0.89x of spinning's under load).
    spin: bool = True
    parallel: bool = False  # execution mode ORT_PARALLEL instead of sequential
    profile_prefix: str | None = None  # write ONNX Runtime's profiling JSON with this prefix
    providers: tuple[str, ...] | None = None  # default: the best available (TensorRT, CUDA, CPU)

    def __post_init__(self) -> None:
        if self.opt not in OPT_LEVELS:
            fail(f"ONNX Runtime optimisation level {self.opt!r}: choose one of {', '.join(OPT_LEVELS)}.")
        if self.threads is not None and self.threads < 1:
            fail(f"ONNX Runtime threads must be at least 1, got {self.threads}.")

    def session_options(self):  # noqa: ANN201 (onnxruntime.SessionOptions)
        import onnxruntime as ort

        levels = ort.GraphOptimizationLevel
        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "disable": levels.ORT_DISABLE_ALL,
            "basic": levels.ORT_ENABLE_BASIC,
            "extended": levels.ORT_ENABLE_EXTENDED,
            "all": levels.ORT_ENABLE_ALL,
        }[self.opt]
        so.intra_op_num_threads = self.threads or usable_cores()
        so.inter_op_num_threads = self.inter_threads
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if self.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        if self.profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = self.profile_prefix
        return so


def ort_session(
    path: str | Path, options: OrtOptions | None = None, providers: Sequence | None = None, session_options=None
):  # noqa: ANN001, ANN201 (onnxruntime.InferenceSession)
    """An ``InferenceSession`` over ``path``; a graph this ONNX Runtime cannot load is a clear error.

    ``providers`` may carry provider options (``(name, {...})`` pairs); ``session_options`` replaces the ones made
    from ``options`` (the engine build uses it to save the optimised graph).
    """
    import onnxruntime as ort

    options = options or OrtOptions()
    so = session_options or options.session_options()
    chosen = list(providers) if providers else list(options.providers or available_providers())
    try:
        return ort.InferenceSession(str(path), so, providers=chosen)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        fail(
            f"ONNX Runtime cannot load {path}: {type(exc).__name__}: {first}. ONNX Runtime's CPU provider has no "
            f"bf16 kernels: use precision fp32 or fp16 with the onnxruntime backend, or the torch backend for bf16."
        )


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """fp32 for float inputs, int64 for ids and masks (the export's boundary types)."""
    t = t.detach().cpu()
    return np.ascontiguousarray(t.float().numpy() if t.is_floating_point() else t.long().numpy())


class OrtRunner(Runner):
    """One ``InferenceSession``; ``run`` is thread-safe, so calls are not serialised.

    Weight swaps (:meth:`set_weight_deltas`) open a new session over the same file with the changed weights
    supplied from memory (``SessionOptions.add_external_initializers``, applied before graph optimisation); the
    file and its external data are never rewritten. ``weight_map`` defaults to the ``weights.json`` beside the graph.
    """

    backend = "onnxruntime"
    reentrant = True

    def __init__(
        self,
        path: str | Path,
        component: str = "",
        precision: str = "fp32",
        options: OrtOptions | None = None,
        shapes: Shapes | None = None,
        providers: Sequence | None = None,
        weight_map: Mapping[str, WeightRef] | None = None,
    ) -> None:
        self.session = ort_session(path, options, providers)
        super().__init__(
            component or Path(path).parent.name,
            [i.name for i in self.session.get_inputs()],
            [o.name for o in self.session.get_outputs()],
            precision,
            shapes,
            detail=str(path),
        )
        self.path = Path(path)
        self.providers = self.session.get_providers()
        self._options, self._chosen = options, providers
        self._weight_map = dict(weight_map) if weight_map is not None else read_weight_map(self.path.parent)
        self._base: dict[str, torch.Tensor] = {}
        self._swap_lock = threading.Lock()
        self._keepalive: list = []  # the OrtValues a session with overrides reads (they must outlive it)

    def swappable_weights(self) -> dict[str, tuple[int, ...]]:
        return {n: ref.shape for n, ref in (self._weight_map or {}).items()}

    def set_weight_deltas(self, deltas: Mapping[str, torch.Tensor]) -> None:
        import onnxruntime as ort

        if not deltas and not self._keepalive and not self._base:
            return  # already the file's own weights
        refs = require_map(self.component, self._weight_map)
        with self._swap_lock:
            missing = {n for n in deltas if n not in self._base}
            if missing:
                self._base.update(stored_weights(self.path, refs, missing))
            so = (self._options or OrtOptions()).session_options()
            names, values = [], []
            for name, d in deltas.items():
                base = self._base[name]
                if tuple(d.shape) != tuple(base.shape):
                    raise ValueError(f"{name}: delta {tuple(d.shape)} vs weight {tuple(base.shape)}")
                fused = to_layout((base.float() + d.float()).to(base.dtype), refs[name].layout).contiguous()
                names.append(refs[name].name)
                values.append(ort.OrtValue.ortvalue_from_numpy(fused.numpy()))
            if names:
                # replaces external weights as the graph loads, before optimisation (add_initializer would come
                # after constant folding, which then keeps the file's values for folded weights)
                so.add_external_initializers(names, values)
            try:
                session = ort.InferenceSession(str(self.path), so, providers=list(self._chosen or self.providers))
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                fail(
                    f"ONNX Runtime could not swap weights into {self.path}: {first}. Weight swaps need the "
                    f"transformer's weights in external data (model.onnx.data); export it again with this version.",
                    WeightSwapError,
                )
            keep = values
            self.session, self._keepalive = session, keep  # calls already running finish on the old session

    def infer(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outs = self.session.run(self.output_names, {n: _to_numpy(t) for n, t in inputs.items()})
        return {n: torch.from_numpy(np.ascontiguousarray(o)) for n, o in zip(self.output_names, outs, strict=True)}

    def end_profiling(self) -> str | None:
        """The profiling JSON's path when the options turned profiling on."""
        return self.session.end_profiling() or None
