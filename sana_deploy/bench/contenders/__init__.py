"""Benchmark backends by name, and the ``--backends`` parser (``name`` or ``name[key=value,...]``).

``diffusers-eager`` (the baseline) and ``torch-compile`` run diffusers' ``SanaPipeline``; every other backend is a
factory of the product's ``SanaDeployPipeline`` (what ``generate`` and ``serve`` run).
"""

from __future__ import annotations

from sana_deploy.bench.contenders.base import CaseContext, Contender, PipelineContender, Prepared, RunTimes
from sana_deploy.bench.contenders.diffusers_pipe import DiffusersCompiled, DiffusersEager
from sana_deploy.bench.contenders.engines import AotiContender, EngineContender, RtxContender
from sana_deploy.bench.contenders.ort import OrtContender
from sana_deploy.bench.contenders.quantized import OpenVinoContender, OrtInt8Contender
from sana_deploy.bench.contenders.torch_model import TorchContender
from sana_deploy.errors import fail

CONTENDERS: dict[str, type[Contender]] = {
    b.name: b
    for b in (
        DiffusersEager,
        DiffusersCompiled,
        TorchContender,
        OrtContender,
        OrtInt8Contender,
        OpenVinoContender,
        AotiContender,
        EngineContender,
        RtxContender,
    )
}
BASELINE = DiffusersEager.name


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


def parse_backends(spec: str | list[str], add_baseline: bool = True) -> list[Contender]:
    """``"torch,onnxruntime[opt=extended,split=0]"`` -> backend objects; the diffusers eager baseline is
    added first unless it is already there (``add_baseline``)."""
    items = _split_top_level(spec) if isinstance(spec, str) else list(spec)
    if not items:
        fail(f"--backends is empty; choose from {', '.join(CONTENDERS)}.")
    out: list[Contender] = []
    for item in items:
        name, _, rest = item.partition("[")
        name = name.strip().lower()
        if name not in CONTENDERS:
            fail(f"Unknown backend {name!r}; choose from {', '.join(CONTENDERS)}.")
        cls = CONTENDERS[name]
        options = {}
        if rest:
            if not rest.endswith("]"):
                fail(f"Contender {item!r}: options go in brackets, e.g. onnxruntime[opt=all,threads=2].")
            for kv in filter(None, (s.strip() for s in rest[:-1].split(","))):
                key, eq, value = kv.partition("=")
                if not eq or key not in cls.option_names:
                    valid = ", ".join(cls.option_names) or "none"
                    fail(f"Contender {name}: unknown option {kv!r}; its options are: {valid} (as key=value).")
                options[key] = value
        out.append(cls(options))
    labels = [b.label for b in out]
    if len(set(labels)) != len(labels):
        fail(f"--backends lists the same backend twice: {', '.join(labels)}.")
    if add_baseline and BASELINE not in labels:
        out.insert(0, DiffusersEager())
    return out


__all__ = [
    "CONTENDERS",
    "BASELINE",
    "Contender",
    "CaseContext",
    "PipelineContender",
    "Prepared",
    "RunTimes",
    "parse_backends",
]
