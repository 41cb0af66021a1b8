"""openvino engines: the ONNX export (sana functions inlined) as an IR compiled for the CPU. fp32 matches PyTorch
like the other backends (<= 1e-5) inside the profile, square and non-square; bf16 stays within the bf16 quality
bound (transformer output relative L2 <= 1e-2); bf16 on a CPU without bf16 and fp8 are clear errors; the pipeline
runs on them."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import pixel_sizes, rel_err, torch_reference

from sana_deploy.contract import BASE_GRAPHS
from sana_deploy.engines import EngineCache, build_engines, load_runner
from sana_deploy.engines.backends import BACKENDS, EngineBuildError
from sana_deploy.runners import openvino as ov_runner

pytest.importorskip("openvino")

# bf16 engines need a CPU with bf16 kernels (AVX512_BF16 or AMX); elsewhere the build refuses them (the last tests)
HAS_BF16 = "BF16" in ov_runner.cpu_capabilities()
NEEDS_BF16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 kernels for OpenVINO (AVX512_BF16 or AMX)")

INSIDE = [(512, 512, 2), (384, 640, 1)]


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def ov_engines(export_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("ov-engines")
    for precision in ("fp32", "bf16") if HAS_BF16 else ("fp32",):
        build_engines(
            "sana-tiny", "512", backend="openvino", precision=precision, engine_dir=root, export_root=export_root,
            components=BASE_GRAPHS, progress=False,
        )  # fmt: skip
    return EngineCache(root)


def _find(cache: EngineCache, component: str, h: int, w: int, b: int, precision: str):  # noqa: ANN202
    entry = cache.find("sana-tiny", component, h, w, b, backend="openvino", precision=precision)
    assert entry is not None and entry.backend == "openvino" and entry.precision == precision
    return entry


@pytest.mark.parametrize("precision, bound", [("fp32", 1e-5), pytest.param("bf16", 1e-2, marks=NEEDS_BF16)])
def test_transformer_graphs_match_pytorch(ov_engines, tiny, precision, bound):
    """One-graph and split (caption K/V once) transformer vs PyTorch fp32: fp32 at parity, bf16 within its bound."""
    for h, w, b in INSIDE:
        inputs, ref = torch_reference(tiny, "transformer", pixel_sizes("transformer", h, w, b), seed=h + w)
        out = load_runner(_find(ov_engines, "transformer", h, w, b, precision))(**inputs)["noise_pred"]
        assert out.dtype == torch.float32 and out.shape == ref["noise_pred"].shape
        measure = rel_err if precision == "fp32" else rel_l2
        assert measure(out, ref["noise_pred"]) <= bound, (precision, h, w, b)
        text = load_runner(_find(ov_engines, "transformer_text", h, w, b, precision))
        kv = text(encoder_hidden_states=inputs["encoder_hidden_states"])["text_kv"]
        feeds = {k: v for k, v in inputs.items() if k != "encoder_hidden_states"}
        out = load_runner(_find(ov_engines, "transformer_cached", h, w, b, precision))(text_kv=kv, **feeds)
        assert measure(out["noise_pred"], ref["noise_pred"]) <= bound, (precision, "split", h, w, b)


@NEEDS_BF16
def test_bf16_is_really_bf16_and_keeps_the_timestep_angles_in_f32(ov_engines, tiny):
    """The bf16 engine differs from fp32 (it is not silently fp32), by about what PyTorch's own bf16 differs."""
    h, w, b = INSIDE[0]
    inputs, ref = torch_reference(tiny, "transformer", pixel_sizes("transformer", h, w, b), seed=3)
    out = load_runner(_find(ov_engines, "transformer", h, w, b, "bf16"))(**inputs)["noise_pred"]
    runner = load_runner(_find(ov_engines, "transformer", h, w, b, "bf16"))
    assert runner.hint == "bf16" and runner.output_names == ["noise_pred"]
    assert 1e-4 < rel_l2(out, ref["noise_pred"]) <= 1e-2


@NEEDS_BF16
def test_bf16_runs_gemms_in_bf16_and_the_rest_in_f32(ov_engines, tiny):
    """The bf16 IR marks every layer but GEMMs/convolutions f32; compiled, the GEMMs run in bf16 and the norms in
    f32, and the transformer is closer to fp32 than the same IR with the whole graph in bf16 (the fp32 engine's
    unmarked IR under the bf16 hint)."""
    import xml.etree.ElementTree as ET

    from sana_deploy.engines.backends.openvino import BF16_OPS, runtime_precisions

    h, w, b = INSIDE[0]
    entry = _find(ov_engines, "transformer", h, w, b, "bf16")
    assert entry.meta["info"]["bf16_scope"] == "gemm" and entry.meta["flags"]["bf16_scope"] == "gemm"
    layers = ET.parse(entry.artifact).getroot().iter("layer")
    marks = {
        layer.get("type"): layer.find("rt_info/attribute[@name='precise']") is not None
        for layer in layers
        if layer.get("type") not in ("Parameter", "Result", "Const")
    }
    assert marks["MatMul"] is False and marks["Add"] is True and marks["MVN"] is True
    assert not any(marked for kind, marked in marks.items() if kind in BF16_OPS)
    runner = load_runner(entry)
    counts = runtime_precisions(runner.compiled)
    assert set(counts["FullyConnected"]) == {"bf16"} and set(counts["MVN"]) == {"f32"}
    assert counts["Eltwise"]["f32"] > counts["Eltwise"].get("bf16", 0)

    inputs, ref = torch_reference(tiny, "transformer", pixel_sizes("transformer", h, w, b), seed=5)
    gemm_only = rel_l2(runner(**inputs)["noise_pred"], ref["noise_pred"])
    whole = ov_runner.OpenVinoRunner(_find(ov_engines, "transformer", h, w, b, "fp32").artifact, precision="bf16")
    whole_graph = rel_l2(whole(**inputs)["noise_pred"], ref["noise_pred"])
    assert 1e-5 < gemm_only < whole_graph, (gemm_only, whole_graph)


def test_vae_and_text_encoder_match_pytorch(ov_engines, tiny):
    for h, w, b in INSIDE:
        inputs, ref = torch_reference(tiny, "vae", pixel_sizes("vae", h, w, b), seed=1)
        out = load_runner(_find(ov_engines, "vae", h, w, b, "fp32"))(**inputs)["sample"]
        assert out.shape == (b, 3, h, w) and rel_err(out, ref["sample"]) <= 1e-5
        if HAS_BF16:
            out16 = load_runner(_find(ov_engines, "vae", h, w, b, "bf16"))(**inputs)["sample"]
            assert rel_l2(out16, ref["sample"]) <= 2e-2
    for seq, b in ((300, 2), (77, 1)):
        inputs, ref = torch_reference(tiny, "text_encoder", {"batch": b, "seq": seq})
        out = load_runner(_find(ov_engines, "text_encoder", 0, 0, b, "fp32"))(**inputs)["last_hidden_state"]
        assert rel_err(out, ref["last_hidden_state"]) <= 1e-5
        if HAS_BF16:
            out16 = load_runner(_find(ov_engines, "text_encoder", 0, 0, b, "bf16"))(**inputs)["last_hidden_state"]
            assert rel_l2(out16, ref["last_hidden_state"]) <= 2e-2


def test_engines_are_bounded_by_the_profile(ov_engines, tiny):
    from sana_deploy.errors import ShapeError

    entry = _find(ov_engines, "transformer", 512, 512, 1, "fp32")
    inputs, _ = torch_reference(tiny, "transformer", pixel_sizes("transformer", 512, 512, 3))
    with pytest.raises(ShapeError, match="outside the transformer engine's profile"):
        load_runner(entry)(**inputs)
    info = BACKENDS["openvino"].inspect(entry.artifact, entry.meta)  # the IR's inputs carry the profile's bounds
    assert info["inputs"]["latent"] == "[1..2,32,8..32,8..32]" and info["fake_quantize"] == 0


def test_pipeline_runs_on_openvino_engines(ov_engines):
    from sana_deploy.runtime.pipeline import SanaDeployPipeline

    precision = "bf16" if HAS_BF16 else "fp32"  # the fastest the CPU has
    pipe = SanaDeployPipeline.from_engines(ov_engines.root, "sana-tiny", backend="openvino", precision=precision,
                                           on_miss="error")  # fmt: skip
    out = pipe("a red fox", height=512, width=512, num_inference_steps=2, generator=0, output_type="np")
    assert out.images.shape == (1, 512, 512, 3)
    assert {v.split("/")[0] for v in out.backends.values()} == {"openvino"}
    assert out.backends["transformer"].startswith(f"openvino/{precision}")


def test_bf16_without_cpu_support_says_what_to_use(monkeypatch, export_root, tmp_path):
    monkeypatch.setattr(ov_runner, "cpu_capabilities", lambda: ("FP32", "INT8"))
    with pytest.raises(EngineBuildError, match="no bf16 support.*Use --precision fp32.*--quantize int8"):
        build_engines(
            "sana-tiny", "512", backend="openvino", precision="bf16", engine_dir=tmp_path, export_root=export_root,
            components="transformer-cached", progress=False,
        )  # fmt: skip
    assert not list(tmp_path.glob("sana-tiny/*/*/meta.json"))  # nothing was committed


def test_fp16_and_fp8_are_refused_with_the_alternative(monkeypatch):
    monkeypatch.setattr(ov_runner, "cpu_capabilities", lambda: ("FP32", "BF16", "INT8"))
    with pytest.raises(ov_runner.OpenVinoError, match="fp16.*Use --precision bf16"):
        ov_runner.check_precision("fp16")
    with pytest.raises(ov_runner.OpenVinoError, match="no fp8 kernels.*tensorrt"):
        ov_runner.check_precision("fp8")
    assert ov_runner.check_precision("bf16") == "bf16" and ov_runner.check_precision("int8") == "f32"
