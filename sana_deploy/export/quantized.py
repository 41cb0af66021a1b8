"""Quantized (Q/DQ) transformer graphs: recipes, which layers a recipe quantizes, where the graphs live, and what a
Q/DQ graph actually contains.

A **recipe** is what makes one quantized graph differ from another: the mode (``int8``, ``fp8``), the tool that
placed the Q/DQ nodes (``nncf``, ``modelopt``, ``onnxruntime``), the hash of the calibration set (the prompts, steps,
size, seed, guidance, sampler and the transformer's weights it was recorded with) and the exclusion patterns. Its
digest names the export folder, ``<export root>/<mode>-<digest>/<component>/`` (beside ``fp32/``), is in the export
manifest, and goes into the engine cache key, so a quantized engine is never the answer to an fp32 request.

Which layers (:func:`plan_layers`): only MatMul/Gemm nodes with a constant weight (the Linear layers, and Mix-FFN's
1x1 convolutions, which are MatMuls inside ``sana.MixFFN``) are candidates; products of two activations (the
linear-attention ``K^T V`` / ``Q (K^T V)`` / normaliser inside ``sana.LinearAttention``, the cross-attention
``Q K^T`` and ``A V``) never are. The default exclusions keep the timestep embedder, the caption projection, the
patch embedding and the final layer (``proj_out``) in fp32; normalisations, convolutions, softmax and the linear
attention's fp32 accumulation are never quantized (their ops are not MatMul/Gemm with a weight). The layer names are
PyTorch module paths, read from the dynamo exporter's ``pkg.torch.onnx.name_scopes`` metadata (inlined function
bodies carry their call's scope, ``sana_deploy.export.inline``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import numpy_helper

from sana_deploy.errors import SanaDeployError, fail
from sana_deploy.export.inline import function_of, has_sana_functions, inline_sana_functions, module_scope

QUANT_MODES = ("int8", "fp8")
# the tools that can write each mode's Q/DQ graph, default first (the CPU engines' int8 default; see docs)
TOOLS = {"int8": ("nncf", "modelopt", "onnxruntime"), "fp8": ("modelopt", "onnxruntime")}
# which engine backends run a recipe's graph: TensorRT needs symmetric int8 (modelopt's); fp8 is TensorRT only
BACKENDS = {
    ("int8", "nncf"): ("onnxruntime", "openvino"),
    ("int8", "onnxruntime"): ("onnxruntime", "openvino"),
    ("int8", "modelopt"): ("onnxruntime", "openvino", "tensorrt", "tensorrt-rtx"),
    ("fp8", "modelopt"): ("tensorrt", "tensorrt-rtx"),
    ("fp8", "onnxruntime"): ("tensorrt", "tensorrt-rtx"),
}
# backends that quantize the PyTorch model themselves (no Q/DQ graph, nothing to calibrate): aoti's FP8 layers
# with dynamic per-row scales (sana_deploy.models.fp8)
SELF_QUANTIZING = {"fp8": ("aoti",), "int8": ()}
# transformer output relative L2 error against fp32, per solver step: the bounds quality is held to
QUALITY_BOUNDS = {"int8": 3e-2, "fp8": 5e-2, "bf16": 1e-2}
QUANTIZABLE = ("transformer_text", "transformer_cached", "transformer")
DEFAULT_COMPONENTS = ("transformer_cached",)
# graphs a build quantizes only when a recipe covers them (``--components``), else runs in fp32: the caption K/V
# graph runs once a request, so it has no per-step time to win, and at 0.6B its int8 K/V made up a quarter of the
# int8 step error (simulated: 2.0e-2 with them, 1.6e-2 without)
FP32_UNLESS_COVERED = ("transformer_text",)
DEFAULT_EXCLUDE = (
    "model.time_embed*",  # timestep embedder: sinusoid -> MLP -> adaLN modulation of every block
    "model.caption_projection*",  # caption embedder
    "model.caption_norm*",
    "model.patch_embed*",  # first layer (a convolution: never quantized anyway)
    "model.norm_out*",
    "model.proj_out*",  # final layer
)
# How sana-deploy drives a tool, where that changed what the tool's graphs hold; recorded in the recipe (so the name
# changes) and in each graph's manifest, and graphs of an older placement are not picked automatically.
# 2: quantized values reach the quantized GEMMs only (confine_qdq). Before, the residual stream was rounded to
# 8 bits in every block (onnxruntime, modelopt), and onnxruntime also rounded every quantized GEMM's product.
PLACEMENT = {"onnxruntime": 2, "modelopt": 2}
_QUANT_OPS = ("MatMul", "Gemm")
_Q_OPS = ("QuantizeLinear", "DequantizeLinear")
MANIFEST_FORMAT = "sana-deploy/export/1"


class QuantizeError(SanaDeployError):
    """A quantization request cannot be served (bad mode, tool, backend, calibration set); the message says why."""


def check_mode(mode: str) -> str:
    if mode not in QUANT_MODES:
        fail(f"Unknown quantization mode {mode!r}; choose int8 or fp8.", QuantizeError)
    return mode


def default_tool(mode: str, backend: str | None = None) -> str:
    """The tool a recipe uses unless told: nncf for int8 on the CPU backends, modelopt (symmetric Q/DQ) for int8
    on TensorRT and for fp8 (onnxruntime's quantizer when modelopt is not installed)."""
    import importlib.util

    check_mode(mode)
    have_modelopt = importlib.util.find_spec("modelopt") is not None
    if mode == "int8" and backend not in ("tensorrt", "tensorrt-rtx"):
        return "nncf" if importlib.util.find_spec("nncf") is not None else "onnxruntime"
    return "modelopt" if have_modelopt else "onnxruntime"


def check_tool(mode: str, tool: str) -> str:
    check_mode(mode)
    if tool not in TOOLS[mode]:
        fail(f"Quantization tool {tool!r} cannot write {mode} graphs; choose {', '.join(TOOLS[mode])}.", QuantizeError)
    return tool


def tools_for(mode: str, backend: str) -> tuple[str, ...]:
    """The tools whose ``mode`` graphs ``backend`` runs (what a build may pick from the exports)."""
    return tuple(t for (m, t), backends in BACKENDS.items() if m == mode and backend in backends)


def check_backend(mode: str, backend: str, tool: str | None = None) -> None:
    """Refuse a mode (or a recipe's tool) the backend cannot run, saying what to use instead."""
    check_mode(mode)
    runs_on = {b for (m, t), bs in BACKENDS.items() if m == mode and (tool is None or t == tool) for b in bs}
    if backend in runs_on:
        return
    if mode == "fp8" and backend in SELF_QUANTIZING["fp8"] and tool is None:
        return
    if mode == "fp8":
        fail(
            f"--quantize fp8 needs a backend with fp8 kernels: tensorrt, tensorrt-rtx or aoti (FP8 tensor cores, "
            f"compute capability 8.9+); {backend} has none. On a CPU use --quantize int8 (onnxruntime, openvino) or "
            f"--backend openvino --precision bf16.",
            QuantizeError,
        )
    if tool is not None and backend in ("tensorrt", "tensorrt-rtx"):
        fail(
            f"The int8 graph of tool {tool!r} has asymmetric activation quantization, which TensorRT does not take; "
            f"write a TensorRT int8 recipe with `sana-deploy quantize --mode int8 --tool modelopt`.",
            QuantizeError,
        )
    fail(f"Backend {backend} cannot run {mode} graphs; use one of {', '.join(sorted(runs_on))}.", QuantizeError)


# --- recipes ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantRecipe:
    """What identifies a quantized graph (see the module doc). ``calibration_sha256`` hashes the calibration
    set's definition (:func:`calibration_hash`)."""

    mode: str
    tool: str
    calibration_sha256: str
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    weight_bits: int = 8  # 7 on CPUs whose int8 kernels saturate (sana_deploy.export.int8_overflow)

    def fields(self) -> dict:
        fields = {
            "mode": self.mode,
            "tool": self.tool,
            "calibration_sha256": self.calibration_sha256,
            "exclude": list(self.exclude),
        }
        if self.weight_bits != 8:  # 8-bit recipes keep the names they had before the field existed
            fields["weight_bits"] = self.weight_bits
        if PLACEMENT.get(self.tool, 1) != 1:  # likewise for tools whose placement never changed
            fields["placement"] = PLACEMENT[self.tool]
        return fields

    @property
    def digest(self) -> str:
        blob = json.dumps(self.fields(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def name(self) -> str:
        """``int8-3f2a9c1b7d10``: the export folder of the recipe's graphs and its id on the command line."""
        return f"{self.mode}-{self.digest}"

    @classmethod
    def from_json(cls, data: dict) -> QuantRecipe:
        return cls(
            data["mode"], data["tool"], data["calibration_sha256"], tuple(data["exclude"]), data.get("weight_bits", 8)
        )


def calibration_hash(definition: dict) -> str:
    """sha256 of a calibration set's definition (prompts, steps, size, seed, guidance, sampler, weights)."""
    return hashlib.sha256(json.dumps(definition, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def recipe_dir(root: str | Path, recipe: QuantRecipe) -> Path:
    return Path(root) / recipe.name


def find_quantized(
    root: str | Path,
    component: str,
    mode: str,
    recipe: str | None = None,
    weights_sha256: str | None = None,
    tools: tuple[str, ...] | None = None,
    weight_bits: int | None = None,
) -> tuple[Path, dict] | None:
    """The newest quantized export of ``component`` under ``root`` for ``mode`` (and recipe name/digest prefix,
    weights, tools, weight bits when given): ``(model.onnx path, manifest)``, or None. Unless ``recipe`` names it,
    a graph of an older :data:`PLACEMENT` is passed over."""
    found = []
    for manifest_path in Path(root).glob(f"{mode}-*/{component}/manifest.json"):
        try:
            manifest = json.loads(manifest_path.read_text())
            q = manifest["quantization"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        name = manifest_path.parent.parent.name
        if q.get("mode") != mode or q.get("recipe") != name:
            continue
        if recipe and not (name == recipe or name.startswith(recipe) or name.split("-", 1)[1].startswith(recipe)):
            continue
        if weights_sha256 and manifest.get("weights_sha256") != weights_sha256:
            continue
        if tools and q.get("tool") not in tools:
            continue
        if weight_bits and q.get("weight_bits", 8) != weight_bits:
            continue
        if not recipe and q.get("placement", 1) != PLACEMENT.get(q.get("tool"), 1):
            continue
        if not (manifest_path.parent / "model.onnx").exists():
            continue
        found.append((manifest.get("created", ""), manifest_path.parent / "model.onnx", manifest))
    if not found:
        return None
    _, path, manifest = max(found, key=lambda f: f[0])
    return path, manifest


# --- layers -------------------------------------------------------------------------------------------------
@dataclass
class LayerPlan:
    """Every MatMul/Gemm of a graph: the ones to quantize and the excluded ones with the reason (by node name),
    and each node's layer name (module path)."""

    quantize: list[str] = field(default_factory=list)
    exclude: dict[str, str] = field(default_factory=dict)
    layers: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "quantized": {n: self.layers[n] for n in self.quantize},
            "excluded": {n: {"layer": self.layers[n], "why": why} for n, why in self.exclude.items()},
        }


def layer_name(node: onnx.NodeProto) -> str:
    """The module path of a MatMul/Gemm: its scope, refined inside the inlined ``sana`` functions
    (``...ff.conv_inverted`` / ``...ff.conv_point`` for Mix-FFN, ``...attn1.linear_attention`` for the kernel)."""
    scope = module_scope(node)
    function = function_of(node)
    if function == "MixFFN":
        body = node.name.rsplit("/", 1)[-1]
        return f"{scope}.{'conv_inverted' if body.startswith('h_mm') else 'conv_point'}"
    if function == "LinearAttention":
        return f"{scope}.attn1.linear_attention"
    return scope


def _constants(model: onnx.ModelProto) -> set[str]:
    out = {t.name for t in model.graph.initializer}
    out |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return out


def plan_layers(model: onnx.ModelProto, exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> LayerPlan:
    """Which MatMul/Gemm nodes of an inlined graph a recipe quantizes (see the module doc)."""
    constants = _constants(model)
    plan = LayerPlan()
    for node in model.graph.node:
        if node.op_type not in _QUANT_OPS:
            continue
        name = layer_name(node)
        plan.layers[node.name] = name
        if function_of(node) == "LinearAttention":
            plan.exclude[node.name] = "linear attention: fp32 accumulation of K^T V and its normaliser"
        elif not any(i in constants for i in node.input[:2]):
            if re.fullmatch(r".*\.transformer_blocks\.\d+", name):  # SDPA's products carry the block's scope
                plan.layers[node.name] = name = f"{name}.attn2.attention"
            plan.exclude[node.name] = "product of two activations (attention scores or values)"
        elif pattern := next((p for p in exclude if fnmatch.fnmatchcase(name, p)), None):
            plan.exclude[node.name] = f"excluded by the recipe ({pattern})"
        else:
            plan.quantize.append(node.name)
    if not plan.quantize:
        fail("No layer of this graph is left to quantize with these exclusions; exclude fewer layers.", QuantizeError)
    return plan


def prepare_graph(onnx_path: str | Path) -> onnx.ModelProto:
    """The graph a quantizer gets: weights loaded, ``sana`` functions inlined (named, tagged), and the
    Reshape/Transpose chains that turn a weight into a MatMul operand folded into the weight, so every Linear-like
    MatMul takes a constant (Mix-FFN's 1x1 convolution weights are reshaped and transposed inside the function)."""
    model = onnx.load(str(onnx_path), load_external_data=True)
    if has_sana_functions(model):
        model = inline_sana_functions(model)
    fold_weight_transforms(model)
    return model


def fold_weight_transforms(model: onnx.ModelProto) -> int:
    """Fold Reshape/Transpose nodes whose inputs are all initializers into new initializers; drop initializers no
    node uses any more. Returns how many nodes were folded."""
    inits = {t.name: t for t in model.graph.initializer}
    folded = 0
    changed = True
    while changed:
        changed = False
        keep = []
        for node in model.graph.node:
            if node.op_type in ("Reshape", "Transpose") and node.input and all(i in inits for i in node.input):
                value = numpy_helper.to_array(inits[node.input[0]])
                if node.op_type == "Transpose":
                    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
                    value = value.transpose(perm) if perm else value.T
                else:
                    shape = numpy_helper.to_array(inits[node.input[1]]).tolist()
                    value = value.reshape([value.shape[i] if d == 0 else int(d) for i, d in enumerate(shape)])
                tensor = numpy_helper.from_array(value.copy(), node.output[0])
                model.graph.initializer.append(tensor)
                inits[node.output[0]] = tensor
                folded += 1
                changed = True
                continue
            keep.append(node)
        del model.graph.node[:]
        model.graph.node.extend(keep)
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return folded


# --- what a Q/DQ graph contains -----------------------------------------------------------------------------
def qdq_layers(model: onnx.ModelProto) -> dict[str, bool]:
    """For each MatMul/Gemm: whether it runs quantized, i.e. both its operands come out of DequantizeLinear."""
    produced = {o: n for n in model.graph.node for o in n.output}
    out = {}
    for node in model.graph.node:
        if node.op_type in _QUANT_OPS:
            operands = [produced.get(i) for i in node.input[:2]]
            out[node.name] = all(p is not None and p.op_type == "DequantizeLinear" for p in operands)
    return out


def confine_qdq(model: onnx.ModelProto, quantized: set[str]) -> int:
    """Make every reader of an activation's Q/DQ pair other than a quantized MatMul/Gemm (``quantized``: node names)
    read the float tensor again, and drop the pairs nobody reads any more. Returns how many inputs were rewired.

    A quantizer makes one pair per tensor and hands its output to every reader of that tensor (ONNX Runtime's and
    Model Optimizer's do; NNCF quantizes the one edge). In Sana the cross-attention's query projection reads the
    residual stream itself, so the skip connection of every block ran on the stream rounded to 8 bits; ONNX
    Runtime's quantizer also rounded every quantized product, read by float nodes only."""
    produced = {o: n for n in model.graph.node for o in n.output}
    rewired = 0
    for node in model.graph.node:
        if node.name in quantized or node.op_type in _Q_OPS:
            continue
        for i, name in enumerate(node.input):
            dq = produced.get(name)
            q = produced.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
                rewired += 1
    outputs = {o.name for o in model.graph.output}
    while True:  # drop Q/DQ nodes whose outputs nobody reads (a dropped DQ can leave its Q unread)
        read = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if n.op_type in _Q_OPS and not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    return rewired


def dq_consumers(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that read a DequantizeLinear output (where quantized values enter the float graph)."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node if n.op_type not in _Q_OPS and any(i in dq_out for i in n.input)}


def qdq_types(model: onnx.ModelProto) -> set[str]:
    """The element types the graph quantizes to (``INT8``, ``UINT8``, ``FLOAT8E4M3FN``, ...)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = set()
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            out.add(onnx.TensorProto.DataType.Name(inits[n.input[0]].data_type))
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits:
            out.add(onnx.TensorProto.DataType.Name(inits[n.input[2]].data_type))
    return out


def recipe_name_ok(name: str) -> bool:
    return re.fullmatch(r"(int8|fp8)-[0-9a-f]{12}", name) is not None


__all__ = [
    "DEFAULT_COMPONENTS",
    "FP32_UNLESS_COVERED",
    "DEFAULT_EXCLUDE",
    "QUALITY_BOUNDS",
    "QUANTIZABLE",
    "QUANT_MODES",
    "TOOLS",
    "LayerPlan",
    "QuantRecipe",
    "QuantizeError",
    "calibration_hash",
    "check_backend",
    "check_mode",
    "check_tool",
    "default_tool",
    "dq_consumers",
    "find_quantized",
    "fold_weight_transforms",
    "layer_name",
    "plan_layers",
    "prepare_graph",
    "qdq_layers",
    "qdq_types",
    "tools_for",
]
