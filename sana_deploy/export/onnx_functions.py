"""The ``sana`` ONNX local functions: ``sana.LinearAttention`` and ``sana.MixFFN``.

The exporter emits one node per ``sana::`` custom op, in domain ``sana``, with the attributes TensorRT's
ONNX parser uses to look up a plugin (op type = plugin name, ``plugin_version`` (default "1"),
``plugin_namespace``; a registered plugin wins over the local function). :func:`attach_functions` then adds
a ``FunctionProto`` body for each, so ONNX Runtime runs the graph as-is and a plugin-less TensorRT
(tensorrt-rtx) inlines the body.

The bodies keep Sana's numerics: linear attention in fp32 (``Cast`` islands) with the result clamped
to ±65504 before the cast back, no negative slicing (the normaliser is its own MatMul;
docs/SANA.md#linear-attention).
"""

from __future__ import annotations

import onnx
from onnx import AttributeProto, TensorProto, helper
from onnx.defs import OpSchema

DOMAIN = "sana"
FUNCTION_VERSION = 1
PLUGIN_VERSION = "1"
BODY_OPSET = 18
_FLOAT_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
PLUGIN_ATTRS = {"plugin_namespace": DOMAIN, "plugin_version": PLUGIN_VERSION}


def _ref_attr(name: str, ref: str, kind: int) -> AttributeProto:
    attr = AttributeProto()
    attr.name, attr.ref_attr_name, attr.type = name, ref, kind
    return attr


def _const(out: str, **value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [out], **value)


def linear_attention_function() -> onnx.FunctionProto:
    """Body of ``sana.LinearAttention(q, k, v; heads, eps) -> o``, all (B, N, C)."""
    heads = helper.make_node("Constant", [], ["heads_0d"])
    heads.attribute.append(_ref_attr("value_int", "heads", AttributeProto.INT))
    eps = helper.make_node("Constant", [], ["eps_c"])
    eps.attribute.append(_ref_attr("value_float", "eps", AttributeProto.FLOAT))
    nodes = [
        heads,
        eps,
        _const("zeros2", value_ints=[0, 0]),
        _const("minus1", value_ints=[-1]),
        _const("fmax", value_float=65504.0),
        _const("fmin", value_float=-65504.0),
        _const("axis_last", value_ints=[-1]),
        _const("axis0", value_ints=[0]),
        helper.make_node("Unsqueeze", ["heads_0d", "axis0"], ["heads_1d"]),
        helper.make_node("Concat", ["zeros2", "heads_1d", "minus1"], ["split_shape"], axis=0),
        helper.make_node("Concat", ["zeros2", "minus1"], ["merge_shape"], axis=0),
        helper.make_node("Relu", ["q"], ["q_relu"]),
        helper.make_node("Relu", ["k"], ["k_relu"]),
        helper.make_node("Cast", ["q_relu"], ["q32"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["k_relu"], ["k32"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["v"], ["v32"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["q32", "split_shape"], ["q4"]),
        helper.make_node("Reshape", ["k32", "split_shape"], ["k4"]),
        helper.make_node("Reshape", ["v32", "split_shape"], ["v4"]),
        helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),  # (B, h, N, d)
        helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),  # (B, h, d, M)
        helper.make_node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),  # (B, h, M, d)
        helper.make_node("MatMul", ["kt", "vh"], ["kv"]),  # (B, h, d, d)
        helper.make_node("ReduceSum", ["kt", "axis_last"], ["ksum"], keepdims=1),  # (B, h, d, 1)
        helper.make_node("MatMul", ["qh", "kv"], ["num"]),  # (B, h, N, d)
        helper.make_node("MatMul", ["qh", "ksum"], ["den"]),  # (B, h, N, 1)
        helper.make_node("Add", ["den", "eps_c"], ["den_eps"]),
        helper.make_node("Div", ["num", "den_eps"], ["o32"]),
        helper.make_node("Clip", ["o32", "fmin", "fmax"], ["o32c"]),
        helper.make_node("Transpose", ["o32c"], ["o4"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["o4", "merge_shape"], ["o3"]),
        helper.make_node("CastLike", ["o3", "q"], ["o"]),
    ]
    return helper.make_function(
        DOMAIN,
        "LinearAttention",
        ["q", "k", "v"],
        ["o"],
        nodes,
        [helper.make_opsetid("", BODY_OPSET)],
        attributes=["heads", "eps", *PLUGIN_ATTRS],
    )


def mix_ffn_function() -> onnx.FunctionProto:
    """Body of ``sana.MixFFN(x, w_inv, b_inv, w_dw, b_dw, w_pt; dw_channels) -> y``, x/y (B, H, W, C)."""
    conv = helper.make_node("Conv", ["h_nchw", "w_dw", "b_dw"], ["h_dw"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    conv.attribute.append(_ref_attr("group", "dw_channels", AttributeProto.INT))
    nodes = [
        helper.make_node("Transpose", ["w_inv"], ["w_inv_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "w_inv_t"], ["h_mm"]),
        helper.make_node("Add", ["h_mm", "b_inv"], ["h_lin"]),
        helper.make_node("Sigmoid", ["h_lin"], ["h_sig"]),
        helper.make_node("Mul", ["h_lin", "h_sig"], ["h_act"]),
        helper.make_node("Transpose", ["h_act"], ["h_nchw"], perm=[0, 3, 1, 2]),
        conv,
        helper.make_node("Split", ["h_dw"], ["a", "g"], axis=1, num_outputs=2),
        helper.make_node("Sigmoid", ["g"], ["g_sig"]),
        helper.make_node("Mul", ["g", "g_sig"], ["g_act"]),
        helper.make_node("Mul", ["a", "g_act"], ["gated"]),
        helper.make_node("Transpose", ["gated"], ["gated_nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["w_pt"], ["w_pt_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["gated_nhwc", "w_pt_t"], ["y"]),
    ]
    return helper.make_function(
        DOMAIN,
        "MixFFN",
        ["x", "w_inv", "b_inv", "w_dw", "b_dw", "w_pt"],
        ["y"],
        nodes,
        [helper.make_opsetid("", BODY_OPSET)],
        attributes=["dw_channels", *PLUGIN_ATTRS],
    )


FUNCTIONS = {"LinearAttention": linear_attention_function, "MixFFN": mix_ffn_function}


def _schema(name: str, inputs: list[str], attrs: dict[str, int]) -> OpSchema:
    return OpSchema(
        name,
        DOMAIN,
        FUNCTION_VERSION,
        inputs=[OpSchema.FormalParameter(i, "T") for i in inputs],
        outputs=[OpSchema.FormalParameter("out", "T")],
        type_constraints=[("T", _FLOAT_TYPES, "float tensors")],
        attributes=[OpSchema.Attribute(a, t, "", required=False) for a, t in attrs.items()],
    )


def register_schemas() -> None:
    """Register op schemas for the ``sana`` domain so exporters and the checker know the ops (idempotent)."""
    str_t = OpSchema.AttrType.STRING
    plugin = {"plugin_namespace": str_t, "plugin_version": str_t}
    schemas = [
        _schema(
            "LinearAttention",
            ["q", "k", "v"],
            {"heads": OpSchema.AttrType.INT, "eps": OpSchema.AttrType.FLOAT, **plugin},
        ),
        _schema(
            "MixFFN", ["x", "w_inv", "b_inv", "w_dw", "b_dw", "w_pt"], {"dw_channels": OpSchema.AttrType.INT, **plugin}
        ),
    ]
    for s in schemas:
        try:
            onnx.defs.get_schema(s.name, FUNCTION_VERSION, DOMAIN)
        except onnx.defs.SchemaError:
            onnx.defs.register_schema(s)


def attach_functions(model: onnx.ModelProto) -> list[str]:
    """Add the body of every ``sana`` op the graph uses; returns the function names attached."""
    used = {n.op_type for n in model.graph.node if n.domain == DOMAIN}
    present = {(f.domain, f.name) for f in model.functions}
    for name in sorted(used):
        if (DOMAIN, name) not in present:
            model.functions.append(FUNCTIONS[name]())
    if used and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, FUNCTION_VERSION))
    return sorted(used)


def sana_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The ``sana`` domain nodes of a model's main graph."""
    return [n for n in model.graph.node if n.domain == DOMAIN]
