"""``bench`` per Sana variant (img2img, ControlNet, PAG, Sana-Sprint img2img) on the tiny presets at 512², 2 steps:

* one CLI run per variant (torch + the diffusers baseline, 1 run) gives a report whose case names the variant, with
  the baseline being diffusers' pipeline of that variant, or skipped with the reason where diffusers has none
  (base-Sana img2img);
* the torch contender's output is exactly the pipeline's own call with the variant's options, differs from the
  text-to-image output (the options reached the call), and equals the diffusers baseline's output.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from sana_deploy.bench.case import BenchCase
from sana_deploy.bench.contenders.base import CaseContext
from sana_deploy.bench.contenders.diffusers_pipe import DiffusersEager
from sana_deploy.bench.contenders.torch_model import TorchContender
from sana_deploy.bench.harness import load_case_components
from sana_deploy.cli import main
from sana_deploy.models.config import get_preset
from sana_deploy.models.controlnet import random_controlnet, save_controlnet
from sana_deploy.runtime.pipeline import SanaDeployPipeline

BASELINE_TOL = 1e-4  # images in [0, 1]; measured ~1e-6


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A start image (another size than the profile: the pipeline resizes it), a grayscale edge map and a 2-block
    seeded random ControlNet for sana-tiny in diffusers' layout."""
    d = tmp_path_factory.mktemp("bench-variants")
    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(300, 400, 3) * 255).astype(np.uint8)).save(d / "start.png")
    Image.fromarray(((rng.rand(512, 512) > 0.9) * 255).astype(np.uint8), "L").save(d / "edges.png")
    cn = save_controlnet(random_controlnet(get_preset("sana-tiny"), num_layers=2, seed=4), d / "controlnet")
    return {"dir": d, "image": d / "start.png", "edges": d / "edges.png", "controlnet": cn}


# name -> (model, BenchCase options, the case's variant, whether diffusers has the variant's pipeline)
VARIANTS = {
    "img2img": ("sana-tiny", {"image": "image", "strength": 0.5}, "sana img2img", False),
    "controlnet": (
        "sana-tiny",
        {"controlnet": "controlnet", "control_image": "edges", "control_scale": 0.8},
        "sana controlnet",
        True,
    ),
    "pag": ("sana-tiny", {"pag_scale": 3.0, "pag_layers": "1"}, "sana pag", True),
    "sprint-img2img": ("sana-sprint-tiny", {"image": "image", "strength": 0.5}, "sprint img2img", True),
}


def _options(inputs: dict, options: dict) -> dict:
    return {k: inputs[v] if isinstance(v, str) and v in inputs else v for k, v in options.items()}


def _cli_args(options: dict) -> list[str]:
    out = []
    for key, value in options.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_bench_cli_runs_each_variant(inputs, name, tmp_path):
    model, options, variant, has_baseline = VARIANTS[name]
    files = {k: tmp_path / f"r.{k}" for k in ("json", "md")}
    r = CliRunner().invoke(
        main,
        ["bench", "--model", model, "--profiles", "512", "--backends", "torch", "--steps", "2", "--warmup", "0",
         "--runs", "1", "--work-dir", str(tmp_path / "work"), "--json", str(files["json"]),
         "--markdown", str(files["md"]), *_cli_args(_options(inputs, options))],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    result = json.loads(files["json"].read_text())
    (case,) = result["cases"]
    assert case["variant"] == variant
    assert f"512x512 ({variant}" in files["md"].read_text()  # the report's case title names the variant
    assert f"({variant}" in r.output
    by_backend = {e["backend"]: e for e in result["results"]}
    assert by_backend["torch"]["status"] == "ok", by_backend["torch"]["reason"]
    assert by_backend["torch"]["stages"]["e2e"]["runs"] == 1
    baseline = by_backend["diffusers-eager"]
    if has_baseline:
        assert baseline["status"] == "ok", baseline["reason"]
        assert set(by_backend["torch"]["speedup_vs_baseline"]) >= {"step", "e2e"}
    else:
        assert baseline["status"] == "skipped"
        assert "no img2img pipeline for base Sana" in baseline["reason"]
        assert "no img2img pipeline for base Sana" in r.output
        assert by_backend["torch"]["speedup_vs_baseline"] == {}
    if name == "pag":  # CFG + PAG: three rows a step, and the FLOPs counted for them
        assert case["cfg_batch"] == 3
    if name == "controlnet":
        assert case["control_scale"] == 0.8 and case["controlnet"] == str(inputs["controlnet"])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_contender_output_is_the_pipelines_with_the_variant(inputs, name, tmp_path):
    model, options, variant, has_baseline = VARIANTS[name]
    case = BenchCase(model, 512, steps=2, **_options(inputs, options))
    assert case.variant == variant
    ctx = CaseContext(case, load_case_components(case), tmp_path)
    prepared = TorchContender().prepare(ctx)
    prepared.run()
    ours = np.asarray(prepared.last_output)
    assert ours.shape == (1, 512, 512, 3)

    pipe = SanaDeployPipeline.from_components(ctx.comps, "torch", case.precision, device=case.device)
    pipe.set_progress_bar(False)
    kw = {"resolution_binning": False, "output_type": "np"}
    direct = np.asarray(pipe(**case.request(), **case.variant_request(), **kw).images)
    np.testing.assert_allclose(ours, direct, rtol=0, atol=1e-6)
    # the same request without the variant's options gives another image (sana-tiny's random DC-AE flattens
    # differences: the images differ by ~1e-4, far above the 1e-6 above) from other latents
    plain = np.asarray(pipe(**case.request(), **kw).images)
    assert float(np.abs(ours - plain).max()) > 1e-5, "the variant's options did not reach the pipeline call"
    latent = {**kw, "output_type": "latent"}
    with_variant = pipe(**case.request(), **case.variant_request(), **latent).images
    without = pipe(**case.request(), **latent).images
    assert float((with_variant - without).norm() / without.norm()) > 1e-2

    baseline = DiffusersEager()
    if not has_baseline:
        assert "no img2img pipeline for base Sana" in baseline.unavailable(case)
        return
    assert baseline.unavailable(case) is None
    ref = baseline.prepare(ctx)
    ref.run()
    err = float(np.abs(np.asarray(ref.last_output) - ours).max())
    print(f"{name}: torch contender vs diffusers baseline max abs err {err:.2e}")
    assert err <= BASELINE_TOL
    ref.release()
    prepared.release()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["img2img", "controlnet", "pag"])
def test_onnxruntime_contender_runs_the_variant(tiny_export, inputs, name, tmp_path):
    """The onnxruntime contender exports the variant's graphs in its prepare step (none left for the first call) and
    its output = the torch contender's."""
    import shutil

    from sana_deploy.bench.contenders.ort import OrtContender

    model, options, _, _ = VARIANTS[name]
    case = BenchCase(model, 512, steps=2, **_options(inputs, options))
    ctx = CaseContext(case, load_case_components(case), tmp_path)
    shutil.copytree(tiny_export[0], ctx.export_root)  # the base graphs; the variant's are exported on top
    ort = OrtContender().prepare(ctx)
    for graph in case.variant_graphs():
        assert (ctx.export_root / "fp32" / graph / "model.onnx").is_file(), graph
    times = ort.run()
    assert "onnxruntime" in times.backends["transformer"], times.backends
    if case.variant_graphs()[0] == "vae_encoder":  # img2img and control images: the DC-AE encoder graph ran
        assert times.backends["vae_encoder"].startswith("onnxruntime"), times.backends
    ref = TorchContender().prepare(ctx)
    ref.run()
    err = float(np.abs(np.asarray(ort.last_output) - np.asarray(ref.last_output)).max())
    print(f"{name}: onnxruntime contender vs torch contender max abs err {err:.2e}")
    assert err <= 1 / 255


@pytest.mark.slow
@pytest.mark.parametrize("name", ["controlnet", "pag"])
def test_engine_contender_runs_the_variant(inputs, name, tmp_path):
    """An engine contender (openvino, CPU) builds the variant's engines in its prepare step (ControlNet: its graph,
    transformer_control and the DC-AE encoder; CFG + PAG: three rows a step) and its output = the torch contender's."""
    pytest.importorskip("openvino")
    from sana_deploy.bench.contenders.quantized import OpenVinoContender

    model, options, _, _ = VARIANTS[name]
    case = BenchCase(model, 512, steps=2, **_options(inputs, options))
    ctx = CaseContext(case, load_case_components(case), tmp_path)
    engines = OpenVinoContender().prepare(ctx)
    assert engines.missing == {}
    times = engines.run()
    assert all(b.startswith("openvino") for b in times.backends.values()), times.backends
    if name == "controlnet":
        assert times.denoiser == "split+controlnet" and "ControlNet openvino" in times.backends["transformer"]
    ref = TorchContender().prepare(ctx)
    ref.run()
    err = float(np.abs(np.asarray(engines.last_output) - np.asarray(ref.last_output)).max())
    print(f"{name}: openvino contender vs torch contender max abs err {err:.2e}")
    assert err <= 1 / 255
