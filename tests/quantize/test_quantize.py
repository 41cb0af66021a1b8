"""Quantized engines on sana-tiny: calibration on the pipeline, Q/DQ exactly where the recipe says, int8 engines
(onnxruntime, openvino) within the int8 bound of fp32 at every solver step of a request calibration never saw, the
fp8 graph in ONNX Runtime within the fp8 bound and built by tensorrt-rtx, cache keys by recipe, bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from sana_deploy.engines import EngineCache, build_engines, load_runner
from sana_deploy.engines.backends.openvino import runtime_precisions
from sana_deploy.export.quantized import (
    DEFAULT_EXCLUDE,
    QUALITY_BOUNDS,
    QuantizeError,
    QuantRecipe,
    check_backend,
    check_mode,
    confine_qdq,
    dq_consumers,
    find_quantized,
    plan_layers,
    prepare_graph,
    qdq_layers,
    qdq_types,
)
from sana_deploy.runners.onnxruntime import ort_session

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engines"))
from engine_helpers import torch_reference  # noqa: E402

SPLIT = ("transformer_text", "transformer_cached")


def rel_l2(a, b) -> float:  # noqa: ANN001
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def fp32_outputs(export_root, component: str, feeds: list[dict]) -> list[np.ndarray]:  # noqa: ANN001
    session = ort_session(export_root / "fp32" / component / "model.onnx")
    return [session.run(None, f)[0] for f in feeds]


# --- the recipe and its graphs ------------------------------------------------------------------------------
def test_calibration_records_every_solver_step_of_every_prompt(int8_recipe, held_out):
    manifest = int8_recipe.exports["transformer_cached"][1]
    calibration = json.loads((int8_recipe.folder / "recipe.json").read_text())["calibration"]
    assert calibration["prompts"] == ["a red fox in the snow", "a city street at night"] and calibration["steps"] == 4
    assert len(manifest["quality"]["rel_l2"]) == 4  # the first prompt's 4 steps, each measured
    assert len(set(manifest["quality"]["timesteps"])) == 4  # at the 4 distinct timesteps the solver visits
    assert held_out.count("transformer_cached") == 6 and held_out.count("transformer_text") == 1
    feed = next(held_out.feeds("transformer_cached"))
    assert feed["latent"].shape == (2, 32, 8, 8) and feed["text_kv"].shape[2] == 2  # the CFG pair


def test_sana_aware_layer_plan(export_root):
    model = prepare_graph(export_root / "fp32" / "transformer_cached" / "model.onnx")
    plan = plan_layers(model)
    quantized = {plan.layers[n] for n in plan.quantize}
    excluded = {plan.layers[n]: why for n, why in plan.exclude.items()}
    block = "model.transformer_blocks.0"
    for layer in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_out.0",
                  "ff.conv_inverted", "ff.conv_point"):  # fmt: skip
        assert f"{block}.{layer}" in quantized, layer
    assert "fp32 accumulation" in excluded[f"{block}.attn1.linear_attention"]
    assert "two activations" in excluded[f"{block}.attn2.attention"]
    assert "model.time_embed*" in excluded["model.time_embed.linear"]
    assert "model.proj_out*" in excluded["model.proj_out"]
    # every other op of the graph (norms, convolutions, softmax) is never a candidate
    assert {n.op_type for n in model.graph.node if n.name in plan.layers} <= {"MatMul", "Gemm"}
    fewer = plan_layers(model, (*DEFAULT_EXCLUDE, "*.ff.*"))
    assert len(fewer.quantize) == len(plan.quantize) - 4  # two Mix-FFN MatMuls per block, two blocks


@pytest.mark.parametrize("recipe_fixture", ["int8_recipe", "fp8_recipe"])
def test_qdq_exactly_where_the_recipe_says(request, recipe_fixture):
    result = request.getfixturevalue(recipe_fixture)
    for component in SPLIT:
        path, manifest = result.exports[component]
        graph = onnx.load(str(path), load_external_data=False)
        layers = manifest["quantization"]["layers"]
        placed = qdq_layers(graph)
        assert {n for n, q in placed.items() if q} == set(layers["quantized"]), component
        # quantized values reach the quantized layers only: not an excluded layer, a residual Add or a product
        assert set(layers["excluded"]) and dq_consumers(graph) <= set(layers["quantized"]), component
        inside = {n.name for n in graph.graph.node if "/LinearAttention/" in n.name}  # the inlined kernel
        assert bool(inside) == (component == "transformer_cached")
        assert not (inside & dq_consumers(graph))  # the linear attention stays float throughout
        assert not list(graph.functions)  # inlined: what OpenVINO and the quantizers read
    types = qdq_types(onnx.load(str(result.exports["transformer_cached"][0]), load_external_data=False))
    assert types == ({"FLOAT8E4M3FN"} if result.recipe.mode == "fp8" else {"INT8", "UINT8"})


def test_int8_weights_fit_this_cpus_kernels(int8_recipe, export_root):
    """On a CPU whose int8 kernels saturate (no VNNI) the default recipe has 7-bit weights, elsewhere 8-bit; the
    graphs' int8 weights use that range and no more."""
    from onnx import numpy_helper

    from sana_deploy.export.int8_overflow import default_weight_bits

    bits = default_weight_bits("int8", int8_recipe.recipe.tool)
    assert int8_recipe.recipe.weight_bits == bits
    for component in SPLIT:
        path, manifest = int8_recipe.exports[component]
        assert manifest["quantization"].get("weight_bits", 8) == bits
        graph = onnx.load(str(path))
        weights = {n.input[0] for n in graph.graph.node if n.op_type == "DequantizeLinear"}
        peak = max(
            int(np.abs(numpy_helper.to_array(t).astype(np.int32)).max())
            for t in graph.graph.initializer
            if t.name in weights and t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2
        )
        assert peak <= 2 ** (bits - 1) and (bits == 7 or peak > 64), (component, peak)
        # what a build on this CPU looks for: graphs with these weight bits, never the other kind
        assert find_quantized(export_root, component, "int8", int8_recipe.recipe.name, weight_bits=bits)[0] == path
        assert find_quantized(export_root, component, "int8", weight_bits=15 - bits) is None


def test_recipe_is_in_the_folder_name_and_manifest(int8_recipe, fp8_recipe, export_root):
    for result in (int8_recipe, fp8_recipe):
        assert result.folder.name == result.recipe.name and result.folder.parent == export_root
        for component, (path, manifest) in result.exports.items():
            q = manifest["quantization"]
            assert q["recipe"] == result.recipe.name and q["mode"] == result.recipe.mode
            assert q["calibration_sha256"] == result.recipe.calibration_sha256 and q["exclude"] == list(DEFAULT_EXCLUDE)
            assert manifest["precision"] == result.recipe.mode and manifest["component"] == component
            assert find_quantized(export_root, component, result.recipe.mode, result.recipe.name)[0] == path
    assert int8_recipe.recipe.tool == "nncf" and fp8_recipe.recipe.tool in ("modelopt", "onnxruntime")
    base = QuantRecipe("int8", "nncf", "a" * 64)
    assert len({base.digest, QuantRecipe("int8", "nncf", "b" * 64).digest,
                QuantRecipe("int8", "nncf", "a" * 64, ("x*",)).digest, QuantRecipe("fp8", "nncf", "a" * 64).digest,
                QuantRecipe("int8", "onnxruntime", "a" * 64).digest}) == 5  # fmt: skip


def test_confine_qdq_gives_float_readers_the_float_tensor():
    """One Q/DQ pair on the residual stream x, read by a quantized MatMul and by the skip connection's Add; a second
    pair on the MatMul's product, read by a float node only: the Add reads x again and the second pair is dropped."""
    h = onnx.helper
    w = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    scale = onnx.numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = onnx.numpy_helper.from_array(np.array(128, np.uint8), "zp")
    nodes = [
        h.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
        h.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xdq"], name="dq"),
        h.make_node("MatMul", ["xdq", "w"], ["y"], name="mm"),
        h.make_node("QuantizeLinear", ["y", "s", "zp"], ["yq"], name="q2"),
        h.make_node("DequantizeLinear", ["yq", "s", "zp"], ["ydq"], name="dq2"),
        h.make_node("Add", ["xdq", "ydq"], ["out"], name="skip"),
    ]
    info = lambda n: h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2, 4])  # noqa: E731
    model = h.make_model(h.make_graph(nodes, "g", [info("x")], [info("out")], [w, scale, zp]))
    assert dq_consumers(model) == {"mm", "skip"}
    assert confine_qdq(model, {"mm"}) == 2
    assert dq_consumers(model) == {"mm"}
    assert [n.name for n in model.graph.node] == ["q", "dq", "mm", "skip"]
    assert list(model.graph.node[-1].input) == ["x", "y"]
    onnx.checker.check_model(model)


def test_caption_graph_stays_fp32_unless_a_recipe_covers_it(tmp_path, monkeypatch):
    """The caption K/V graph runs once a request: quantize and build --quantize leave it in fp32 unless asked."""
    import sana_deploy.quantize as q
    from sana_deploy.engines.quantized import quantized_export

    assert q.DEFAULT_COMPONENTS == ("transformer_cached",)
    assert quantized_export(tmp_path, "transformer_text", "int8", None, "0" * 64, "onnxruntime", "sana-tiny") is None
    with pytest.raises(QuantizeError, match="No int8 graph of transformer_cached"):
        quantized_export(tmp_path, "transformer_cached", "int8", None, "0" * 64, "onnxruntime", "sana-tiny")
    asked = []
    monkeypatch.setattr(q, "quantize_model", lambda *a, **k: asked.append(k["components"]) or SimpleNamespace(
        recipe=SimpleNamespace(name="int8-x")))  # fmt: skip
    components = ("text_encoder", "transformer_text", "transformer_cached", "vae")
    assert q.ensure_quantized("sana-tiny", "int8", "onnxruntime", components, tmp_path) == "int8-x"
    assert asked == [("transformer_cached",)]


def test_graphs_of_an_older_placement_are_not_picked_unless_named(tmp_path):
    """An onnxruntime-tool graph written before its products stopped being Q/DQ'd is passed over by an automatic
    pick (a new recipe name gets calibrated instead), and still served when its recipe is named."""
    new = QuantRecipe("int8", "onnxruntime", "a" * 64)
    assert new.fields()["placement"] == 2 and "placement" not in QuantRecipe("int8", "nncf", "a" * 64).fields()
    fields = {k: v for k, v in new.fields().items() if k != "placement"}
    old = "int8-" + hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
    for name, q in ((old, fields), (new.name, new.fields())):
        folder = tmp_path / name / "transformer_cached"
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"")
        manifest = {"quantization": {**q, "recipe": name}, "created": "2026" if name == old else "2025"}
        (folder / "manifest.json").write_text(json.dumps(manifest))
    assert old != new.name
    assert find_quantized(tmp_path, "transformer_cached", "int8")[1]["quantization"]["recipe"] == new.name
    assert find_quantized(tmp_path, "transformer_cached", "int8", old)[1]["quantization"]["recipe"] == old
    shutil.rmtree(tmp_path / new.name)
    assert find_quantized(tmp_path, "transformer_cached", "int8") is None


def test_same_recipe_is_reused_without_calibrating(tiny, int8_recipe, export_root, monkeypatch):
    import sana_deploy.quantize as q

    monkeypatch.setattr(q, "record_calibration", lambda *a, **k: pytest.fail("calibrated again"))
    again = q.quantize_model("sana-tiny", "int8", "nncf", ["a red fox in the snow", "a city street at night"],
                             steps=4, size=256, export_root=export_root, loaded=tiny, say=print)  # fmt: skip
    assert again.reused and again.recipe == int8_recipe.recipe


# --- quality on a request calibration never saw -------------------------------------------------------------
def test_int8_graphs_within_the_int8_bound_at_every_step(int8_recipe, held_out, export_root):
    for component in SPLIT:
        feeds = list(held_out.feeds(component))
        ref = fp32_outputs(export_root, component, feeds)
        session = ort_session(int8_recipe.exports[component][0])
        errors = [rel_l2(session.run(None, f)[0], r) for f, r in zip(feeds, ref, strict=True)]
        assert max(errors) <= QUALITY_BOUNDS["int8"], (component, errors)
        assert min(errors) > 1e-5  # it is really quantized


def test_fp8_graph_runs_in_onnxruntime_within_the_fp8_bound(fp8_recipe, held_out, export_root):
    feeds = list(held_out.feeds("transformer_cached"))
    ref = fp32_outputs(export_root, "transformer_cached", feeds)
    session = ort_session(fp8_recipe.exports["transformer_cached"][0], providers=["CPUExecutionProvider"])
    errors = [rel_l2(session.run(None, f)[0], r) for f, r in zip(feeds, ref, strict=True)]
    assert 1e-4 < max(errors) <= QUALITY_BOUNDS["fp8"], errors


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_engines_build_run_and_match_fp32(backend, int8_recipe, held_out, export_root, tmp_path, tiny):
    if backend == "openvino":
        pytest.importorskip("openvino")
    entries = build_engines(
        "sana-tiny", "512", backend=backend, quantize="int8", engine_dir=tmp_path, export_root=export_root,
        progress=False,
    )  # fmt: skip
    assert {e.precision for e in entries} == {"int8"}
    by = {e.component: e for e in entries}
    assert by["transformer_cached"].meta["flags"]["quantize"]["recipe"] == int8_recipe.recipe.name
    assert "quantize" not in by["vae"].meta["flags"]  # the DC-AE and Gemma graphs stay fp32
    text = load_runner(by["transformer_text"])
    cached = load_runner(by["transformer_cached"])
    feeds = list(held_out.feeds("transformer_cached"))
    ref = fp32_outputs(export_root, "transformer_cached", feeds)
    ehs = torch.from_numpy(next(held_out.feeds("transformer_text"))["encoder_hidden_states"])
    kv = text(encoder_hidden_states=ehs)["text_kv"]  # the int8 caption K/V graph feeds the int8 step graph
    errors = []
    for feed, r in zip(feeds, ref, strict=True):
        inputs = {k: torch.from_numpy(v) for k, v in feed.items() if k != "text_kv"}
        errors.append(rel_l2(cached(text_kv=kv, **inputs)["noise_pred"], r))
    assert max(errors) <= QUALITY_BOUNDS["int8"], errors
    if backend == "openvino":  # OpenVINO runs the Q/DQ layers in int8 (FakeQuantize -> i8 FullyConnected)
        assert by["text_encoder"].meta["info"]["weights"].startswith("int8 weight-only")  # Gemma-2's weights too
        inputs, ref_te = torch_reference(tiny, "text_encoder", {"batch": 2, "seq": 300})
        te = load_runner(by["text_encoder"])(**inputs)["last_hidden_state"]
        assert 1e-5 < rel_l2(te, ref_te["last_hidden_state"]) <= QUALITY_BOUNDS["int8"]
        precisions = set(runtime_precisions(cached.compiled)["FullyConnected"])
        assert precisions & {"i8", "u8"}, precisions
    else:  # ONNX Runtime fuses Q/DQ MatMuls into integer kernels; its text encoder stays fp32
        assert by["text_encoder"].meta["info"].get("weights") is None
        graph = onnx.load(str(by["transformer_cached"].artifact), load_external_data=False)
        assert sum(n.op_type == "MatMulIntegerToFloat" for n in graph.graph.node) >= 12


def test_pipeline_runs_on_int8_engines_and_fp32_lookups_never_see_them(int8_recipe, export_root, tmp_path):
    from sana_deploy.runtime.pipeline import SanaDeployPipeline

    common = dict(engine_dir=tmp_path, export_root=export_root, progress=False)
    int8 = build_engines("sana-tiny", "512", backend="onnxruntime", precision="int8", **common)
    fp32 = build_engines("sana-tiny", "512", backend="onnxruntime", **common)
    assert not {e.key for e in int8} & {e.key for e in fp32}
    cache = EngineCache(tmp_path)
    for component in ("transformer_cached", "text_encoder"):
        assert cache.find("sana-tiny", component, 512, 512, 2, precision="fp32").precision == "fp32"
        assert cache.find("sana-tiny", component, 512, 512, 2).precision == "fp32"  # no precision: never int8
        assert cache.find("sana-tiny", component, 512, 512, 2, precision="int8").precision == "int8"
    pipe = SanaDeployPipeline.from_engines(tmp_path, "sana-tiny", backend="onnxruntime", precision="int8",
                                           on_miss="error")  # fmt: skip
    out = pipe("a red fox", height=512, width=512, num_inference_steps=2, generator=0, output_type="np")
    assert out.images.shape == (1, 512, 512, 3) and out.backends["transformer"].startswith("onnxruntime/int8")


def test_cache_key_changes_with_the_recipe(tiny, int8_recipe, export_root, tmp_path):
    """A second recipe (other exclusions) gives other graphs and other keys; ``--recipe`` picks one."""
    from sana_deploy.quantize import quantize_model

    other = quantize_model(
        "sana-tiny", "int8", "nncf", ["a red fox in the snow", "a city street at night"], steps=4, size=256,
        components="transformer-cached", exclude=(*DEFAULT_EXCLUDE, "*.ff.*"), export_root=export_root, loaded=tiny,
        say=print,
    )  # fmt: skip
    assert other.recipe.name != int8_recipe.recipe.name
    keys = {}
    for recipe in (int8_recipe.recipe.name, other.recipe.digest[:6]):
        (entry,) = build_engines("sana-tiny", "512", backend="onnxruntime", quantize="int8", recipe=recipe,
                                 components="transformer-cached", engine_dir=tmp_path, export_root=export_root,
                                 progress=False)  # fmt: skip
        keys[entry.meta["flags"]["quantize"]["recipe"]] = entry.key
    assert set(keys) == {int8_recipe.recipe.name, other.recipe.name} and len(set(keys.values())) == 2


# --- fp8 and TensorRT-RTX -----------------------------------------------------------------------------------
def test_tensorrt_rtx_builds_an_fp8_engine_on_the_cpu(fp8_recipe, export_root, tmp_path):
    pytest.importorskip("tensorrt_rtx")
    (entry,) = build_engines("sana-tiny", "512", backend="tensorrt-rtx", quantize="fp8",
                             components="transformer-cached", engine_dir=tmp_path, export_root=export_root,
                             progress=False)  # fmt: skip
    assert entry.precision == "fp8" and entry.device == "sm89+sm120"  # FP8 tensor cores only
    assert entry.artifact.read_bytes()[:4] == b"vtrt" or entry.size > 0
    assert entry.meta["flags"]["quantize"]["recipe"] == fp8_recipe.recipe.name


def test_fp8_for_targets_without_fp8_is_refused(fp8_recipe, export_root, tmp_path):
    pytest.importorskip("tensorrt_rtx")
    from sana_deploy.engines.backends import BuildOptions

    with pytest.raises(QuantizeError, match="FP8 tensor cores.*sm86"):
        build_engines(
            "sana-tiny", "512", backend="tensorrt-rtx", quantize="fp8", options=BuildOptions(targets=("sm86",)),
            components="transformer-cached", engine_dir=tmp_path, export_root=export_root, progress=False,
        )  # fmt: skip


# --- bad input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "aoti"])
def test_fp8_on_a_backend_without_fp8_says_what_to_use(backend, export_root, tmp_path):
    """aoti has FP8 layers of its own (models/fp8.py), but compiles them for this machine, which has no GPU."""
    why = "FP8 GEMMs for this machine's GPU.*int8" if backend == "aoti" else f"fp8 kernels.*{backend} has none.*int8"
    with pytest.raises(QuantizeError, match=why):
        build_engines("sana-tiny", "512", backend=backend, quantize="fp8", engine_dir=tmp_path,
                      export_root=export_root, progress=False)  # fmt: skip
    assert not list(tmp_path.glob("sana-tiny/*/*/meta.json"))


def test_unknown_mode_tool_and_mismatches():
    with pytest.raises(QuantizeError, match="Unknown quantization mode 'int4'; choose int8 or fp8"):
        check_mode("int4")
    with pytest.raises(QuantizeError, match="Unknown quantization mode 'int4'"):
        build_engines("sana-tiny", "512", quantize="int4", progress=False)
    with pytest.raises(QuantizeError, match="cannot write fp8 graphs; choose modelopt, onnxruntime"):
        from sana_deploy.export.quantized import check_tool

        check_tool("fp8", "nncf")
    with pytest.raises(QuantizeError, match="asymmetric activation.*--tool modelopt"):
        check_backend("int8", "tensorrt-rtx", "nncf")
    with pytest.raises(QuantizeError, match="--quantize int8 quantizes the fp32 graphs; drop --precision bf16"):
        build_engines("sana-tiny", "512", precision="bf16", quantize="int8", progress=False)


def test_empty_calibration_set_is_refused(tmp_path, tiny):
    from sana_deploy.quantize import quantize_model
    from sana_deploy.quantize.prompts import read_calibration_prompts

    empty = tmp_path / "prompts.txt"
    empty.write_text("\n# only a comment\n   \n")
    with pytest.raises(QuantizeError, match="calibration set is empty.*prompts.txt has no prompts.*built-in set"):
        read_calibration_prompts(empty)
    with pytest.raises(QuantizeError, match="calibration set is empty"):
        quantize_model("sana-tiny", "int8", prompts=[], loaded=tiny, export_root=tmp_path)
    with pytest.raises(QuantizeError, match="calib-steps must be at least 1"):
        quantize_model("sana-tiny", "int8", prompts=["x"], steps=0, loaded=tiny, export_root=tmp_path)
    assert len(read_calibration_prompts(None)) == 8


def test_build_without_a_graph_names_the_quantize_command(tmp_path, export_root):
    with pytest.raises(QuantizeError, match=r"No int8 graph of transformer for these weights.*sana-deploy quantize "
                       r"--model sana-tiny --mode int8 --components transformer"):  # fmt: skip
        build_engines("sana-tiny", "512", backend="onnxruntime", quantize="int8", components="transformer",
                      engine_dir=tmp_path, export_root=export_root, progress=False)  # fmt: skip


def test_cli_bad_input_is_one_line(tmp_path):
    from click.testing import CliRunner

    from sana_deploy.cli import main

    empty = tmp_path / "p.txt"
    empty.write_text("")
    out = CliRunner().invoke(main, ["quantize", "--mode", "int8", "--calib-prompts", str(empty)])
    assert out.exit_code == 2 and "error: The calibration set is empty" in out.output
    out = CliRunner().invoke(main, ["quantize", "--mode", "int4"])
    assert out.exit_code == 2 and "Invalid value for '--mode'" in out.output
    out = CliRunner().invoke(main, ["build", "--backend", "onnxruntime", "--quantize", "fp8", "--engine-dir",
                                    str(tmp_path / "e")])  # fmt: skip
    assert out.exit_code == 2 and "fp8 needs a backend with fp8 kernels" in out.output


# --- the other tools (heavier: -m slow) ---------------------------------------------------------------------
@pytest.mark.slow
def test_onnxruntime_int8_tool_within_the_int8_bound(tiny, held_out, export_root):
    from sana_deploy.quantize import quantize_model

    result = quantize_model(
        "sana-tiny", "int8", "onnxruntime", ["a red fox in the snow"], steps=4, size=256,
        components="transformer-cached", export_root=export_root, loaded=tiny, say=print,
    )  # fmt: skip
    path, manifest = result.exports["transformer_cached"]
    graph = onnx.load(str(path), load_external_data=False)
    assert {n for n, q in qdq_layers(graph).items() if q} == set(manifest["quantization"]["layers"]["quantized"])
    assert dq_consumers(graph) <= set(manifest["quantization"]["layers"]["quantized"])  # not the residual stream
    assert manifest["quantization"]["placement"] == 2
    feeds = list(held_out.feeds("transformer_cached"))
    ref = fp32_outputs(export_root, "transformer_cached", feeds)
    session = ort_session(path)
    assert max(rel_l2(session.run(None, f)[0], r) for f, r in zip(feeds, ref, strict=True)) <= QUALITY_BOUNDS["int8"]


@pytest.mark.slow
def test_modelopt_int8_recipe_builds_for_tensorrt_rtx_ampere(tiny, export_root, tmp_path):
    """TensorRT needs symmetric int8: modelopt's recipe (picked for --for-backend tensorrt-rtx) builds for sm86."""
    pytest.importorskip("tensorrt_rtx")
    pytest.importorskip("modelopt")
    from sana_deploy.engines.backends import BuildOptions
    from sana_deploy.quantize import quantize_model

    result = quantize_model("sana-tiny", "int8", None, ["a red fox in the snow"], steps=4, size=256,
                            components="transformer-cached", export_root=export_root, loaded=tiny,
                            backend="tensorrt-rtx", say=print)  # fmt: skip
    assert result.recipe.tool == "modelopt"
    (entry,) = build_engines(
        "sana-tiny", "512", backend="tensorrt-rtx", quantize="int8", recipe=result.recipe.name,
        options=BuildOptions(targets=("sm86",)), components="transformer-cached", engine_dir=tmp_path,
        export_root=export_root, progress=False,
    )  # fmt: skip
    assert entry.precision == "int8" and entry.device == "sm86" and entry.size > 0
