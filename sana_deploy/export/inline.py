"""The ``sana`` local functions inlined into their bodies, keeping track of where every body node came from.

ONNX Runtime runs the local functions as they are; OpenVINO's ONNX reader has no rule for them ("No conversion rule
found for operations: sana.LinearAttention, sana.MixFFN") and the quantizers do not look inside functions, so those
consumers get the inlined graph. ``onnx.inliner`` names the body nodes after the function's own node names (which
our bodies do not set) and drops the calling node's metadata, so this module names every body node
``<calling node>/<Function>/<body output>`` and gives it the calling node's metadata (the PyTorch module scope the
dynamo exporter records in ``pkg.torch.onnx.name_scopes``) plus ``sana.function`` = the function's name: the
quantization recipes find "the linear attention of block 3" by these.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import onnx.inliner

from sana_deploy.export.onnx_functions import DOMAIN

FUNCTION_KEY = "sana.function"  # metadata of inlined body nodes: LinearAttention or MixFFN
SCOPE_KEY = "pkg.torch.onnx.name_scopes"  # the dynamo exporter's module scopes of a node
_BODY_PREFIX = "__sana_body__"


def has_sana_functions(model: onnx.ModelProto) -> bool:
    return any(n.domain == DOMAIN for n in model.graph.node)


def inline_sana_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with the ``sana`` functions inlined, body nodes named and tagged (see the module doc).

    Works on graphs loaded without their external data (initializers keep their references).
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    calls = [n for n in model.graph.node if n.domain == DOMAIN]
    if not calls:
        return model
    for f in model.functions:  # mark body nodes so they can be found after inlining
        if f.domain == DOMAIN:
            for i, n in enumerate(f.node):
                n.name = f"{_BODY_PREFIX}{f.name}/{n.output[0] if n.output else i}"
    inlined = onnx.inliner.inline_local_functions(model)
    produced_by = {o: n for n in inlined.graph.node for o in n.output}
    for call in calls:  # walk back from each call's outputs to its inputs through body nodes
        stop = set(call.input)
        todo, seen = list(call.output), set()
        while todo:
            tensor = todo.pop()
            node = produced_by.get(tensor)
            if node is None or tensor in stop or not node.name.startswith(_BODY_PREFIX) or id(node) in seen:
                continue
            seen.add(id(node))
            function, _, rest = node.name[len(_BODY_PREFIX) :].partition("/")
            node.name = f"{call.name}/{function}/{rest}"
            del node.metadata_props[:]
            node.metadata_props.extend(call.metadata_props)
            node.metadata_props.add(key=FUNCTION_KEY, value=function)
            todo.extend(node.input)
    left = [n.name for n in inlined.graph.node if n.name.startswith(_BODY_PREFIX)]
    if left:
        raise ValueError(f"Inlined sana function nodes not reached from their call: {left[:3]}")
    del inlined.functions[:]
    kept = [o for o in inlined.opset_import if o.domain != DOMAIN]
    del inlined.opset_import[:]
    inlined.opset_import.extend(kept)
    return inlined


def function_of(node: onnx.NodeProto) -> str:
    """The ``sana`` function an inlined node came from (``""`` for nodes of the exported graph itself)."""
    return next((p.value for p in node.metadata_props if p.key == FUNCTION_KEY), "")


def module_scope(node: onnx.NodeProto) -> str:
    """The innermost PyTorch module path of a node (``model.transformer_blocks.3.attn1.to_q``), or ``""``."""
    scopes = next((p.value for p in node.metadata_props if p.key == SCOPE_KEY), "")
    if not scopes:
        return ""
    try:
        import ast

        names = ast.literal_eval(scopes)
    except (ValueError, SyntaxError):
        return ""
    dotted = [n for n in names if isinstance(n, str) and n.startswith("model.")]
    return dotted[-1] if dotted else ""


def write_inlined(onnx_path: Path, folder: Path, name: str = "inlined.onnx") -> Path:
    """``onnx_path`` inlined into ``folder/name``, its external data files copied beside it so the references
    resolve (not hard-linked: onnx refuses to load external data whose file has more than one link); returns the
    new path. Used where a consumer reads ONNX from a file (OpenVINO)."""
    onnx_path, folder = Path(onnx_path), Path(folder)
    model = onnx.load(str(onnx_path), load_external_data=False)
    out = folder / name
    onnx.save_model(inline_sana_functions(model) if has_sana_functions(model) else model, str(out))
    for location in _external_files(model):
        src, dst = onnx_path.parent / location, folder / location
        if dst.exists():
            continue
        shutil.copyfile(src, dst)
    return out


def _external_files(model: onnx.ModelProto) -> set[str]:
    out = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            out |= {e.value for e in t.external_data if e.key == "location"}
    return out


__all__ = [
    "FUNCTION_KEY",
    "function_of",
    "has_sana_functions",
    "inline_sana_functions",
    "module_scope",
    "write_inlined",
]
