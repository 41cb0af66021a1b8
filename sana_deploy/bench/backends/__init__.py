"""Benchmark backends by name, and the ``--backends`` parser (``name`` or ``name[key=value,...]``).

``diffusers-eager`` (the baseline) and ``torch-compile`` run diffusers' ``SanaPipeline``; every other backend is a
factory of the product's ``SanaDeployPipeline`` (what ``generate`` and ``serve`` run).
"""

from __future__ import annotations

from sana_deploy.bench.backends.base import Backend, CaseContext, PipelineBackend, Prepared, RunTimes
from sana_deploy.bench.backends.diffusers_pipe import DiffusersBackend, TorchCompileBackend
from sana_deploy.bench.backends.engines import AotiBackend, EngineBackend, EngineRtxBackend
from sana_deploy.bench.backends.ort import OrtBackend
from sana_deploy.bench.backends.torch_model import TorchBackend
from sana_deploy.errors import fail

BACKENDS: dict[str, type[Backend]] = {
    b.name: b
    for b in (
        DiffusersBackend,
        TorchCompileBackend,
        TorchBackend,
        OrtBackend,
        AotiBackend,
        EngineBackend,
        EngineRtxBackend,
    )
}
BASELINE = DiffusersBackend.name


def _split_top_level(spec: str) -> list[str]:
    items, depth, cur = [], 0, ""
    for ch in spec:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    return [s.strip() for s in items if s.strip()]


def parse_backends(spec: str | list[str], add_baseline: bool = True) -> list[Backend]:
    """``"torch,onnxruntime[opt=extended,split=0]"`` -> backend objects; the diffusers eager baseline is
    added first unless it is already there (``add_baseline``)."""
    items = _split_top_level(spec) if isinstance(spec, str) else list(spec)
    if not items:
        fail(f"--backends is empty; choose from {', '.join(BACKENDS)}.")
    out: list[Backend] = []
    for item in items:
        name, _, rest = item.partition("[")
        name = name.strip().lower()
        if name not in BACKENDS:
            fail(f"Unknown backend {name!r}; choose from {', '.join(BACKENDS)}.")
        cls = BACKENDS[name]
        options = {}
        if rest:
            if not rest.endswith("]"):
                fail(f"Backend {item!r}: options go in brackets, e.g. onnxruntime[opt=all,threads=2].")
            for kv in filter(None, (s.strip() for s in rest[:-1].split(","))):
                key, eq, value = kv.partition("=")
                if not eq or key not in cls.option_names:
                    valid = ", ".join(cls.option_names) or "none"
                    fail(f"Backend {name}: unknown option {kv!r}; its options are: {valid} (as key=value).")
                options[key] = value
        out.append(cls(options))
    labels = [b.label for b in out]
    if len(set(labels)) != len(labels):
        fail(f"--backends lists the same backend twice: {', '.join(labels)}.")
    if add_baseline and BASELINE not in labels:
        out.insert(0, DiffusersBackend())
    return out


__all__ = [
    "BACKENDS",
    "BASELINE",
    "Backend",
    "CaseContext",
    "PipelineBackend",
    "Prepared",
    "RunTimes",
    "parse_backends",
]
