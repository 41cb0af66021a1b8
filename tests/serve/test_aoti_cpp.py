"""The C++ runner (cpp/aoti_runner) builds with CMake against the torch wheel, computes the Python runtime's
schedules exactly, and its denoising loop matches ``SanaDeployPipeline`` over the same AOTInductor engines.

Golden test: the engines come from the product build (``build_engines``), the reference is the product pipeline
(``SanaDeployPipeline.from_engines(..., output_type="latent")``); both start from the same latents and the same
text embeddings (``pipe.encode_prompt``), so the only difference left is the loop itself.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from sana_deploy.engines import EngineCache, build_engines
from sana_deploy.runtime import SanaDeployPipeline
from sana_deploy.runtime.solvers import make_solver

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("c++") is None, reason="needs cmake and a C++ compiler"
)
SAMPLERS = ("flow-dpm-solver", "flow-euler")
# Inside the 512 profile without resolution binning: latent 8x12 (both axes within the profile's bucket ranges).
HEIGHT, WIDTH = 256, 384
STEPS = 4
PROMPT = "a red fox in the snow"


@pytest.fixture(scope="module")
def cpp_build(tmp_path_factory) -> tuple[subprocess.Popen, Path]:
    """Configure and build in the background, so the compile overlaps the engine build."""
    build = tmp_path_factory.mktemp("cpp-build")
    prefix = torch.utils.cmake_prefix_path
    script = f'cmake -S "{ROOT / "cpp"}" -B "{build}" -DCMAKE_PREFIX_PATH="{prefix}" && cmake --build "{build}" -j2'
    proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, build


@pytest.fixture(scope="module")
def runner(cpp_build, engines) -> Path:
    """The built sana_aoti_run (waited for after the engines, which build meanwhile)."""
    proc, build = cpp_build
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log[-4000:]
    assert "sana_trt_run: NOT BUILT" in log or "sana_trt_run: building" in log
    return build / "aoti_runner" / "sana_aoti_run"


@pytest.fixture(scope="module")
def engines(cpp_build, tmp_path_factory) -> tuple[Path, Path]:
    """The product build: sana-tiny, profile 512, AOTInductor (engine dir, transformer package).

    The VAE is not built: the latent output needs none, and Inductor on torch 2.13 (CPU) miscompiles the dynamic
    DC-AE (the build refuses it).
    """
    root = tmp_path_factory.mktemp("aoti-engines")
    build_engines(
        model="sana-tiny", profiles=[512], backend="aoti", components=("transformer", "text_encoder"),
        engine_dir=root, export_root=root / "export", progress=False, say=lambda m: None,
    )  # fmt: skip
    entry = EngineCache(root).find("sana-tiny", "transformer", HEIGHT, WIDTH, 2, backend="aoti")
    assert entry is not None and entry.artifact.suffix == ".pt2" and entry.meta["info"]["kernels"] == "inline"
    return root, entry.artifact


@pytest.fixture(scope="module")
def pipe(engines) -> SanaDeployPipeline:
    root, _ = engines
    return SanaDeployPipeline.from_engines(root, model="sana-tiny", backend="aoti", on_miss="error", kv_cache=False)


def run_cpp(runner: Path, args: list[str], tmp: Path | None = None, inputs: dict | None = None) -> str:
    cmd = [str(runner), *args]
    if inputs is not None:
        torch.save(inputs, tmp / "in.pt")
        cmd += ["--inputs", str(tmp / "in.pt"), "--output", str(tmp / "out.pt")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_schedule_is_the_runtimes(runner, sampler):
    """Sigmas and model timesteps bit for bit (fp32), at the step counts people use and the edge ones."""
    for steps in (1, 2, 20, 28):
        for shift in (1.0, 3.0, 4.0):
            out = run_cpp(
                runner, ["--print-schedule", "--sampler", sampler, "--steps", str(steps), "--shift", str(shift)]
            )
            rows = [line.split() for line in out.strip().splitlines()]
            ref = make_solver(sampler, steps, shift)
            sigmas = torch.tensor([float(r[1]) for r in rows], dtype=torch.float32)
            timesteps = torch.tensor([float(r[2]) for r in rows[:-1]], dtype=torch.float32)
            assert torch.equal(sigmas, ref.sigmas), (sampler, steps, shift)
            assert torch.equal(timesteps, ref.timesteps.to(torch.float32)), (sampler, steps, shift)


def test_forward_matches_the_python_runner(runner, engines, pipe, tmp_path):
    _, package = engines
    emb, mask = pipe.encode_prompt(PROMPT, negative_prompt="", do_classifier_free_guidance=True)
    g = torch.Generator().manual_seed(1)
    inputs = {
        "latent": torch.randn(2, 32, HEIGHT // 32, WIDTH // 32, generator=g),
        "timestep": torch.tensor([999.0, 487.5]),
        "encoder_hidden_states": emb,
        "encoder_attention_mask": mask,
    }
    run_cpp(runner, ["--package", str(package)], tmp_path, inputs)
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    ref = torch._inductor.aoti_load_package(str(package))(**inputs)
    ref = ref[0] if isinstance(ref, (list, tuple)) else ref
    err = (out - ref).abs().max().item()
    print(f"C++ vs Python one transformer call: max abs err {err:.3g}")
    assert out.shape == ref.shape and err <= 1e-5


@pytest.mark.parametrize("guidance", [4.5, 1.0], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_denoising_loop_matches_the_pipeline(runner, engines, pipe, tmp_path, sampler, guidance):
    _, package = engines
    cfg = guidance > 1.0
    emb, mask = pipe.encode_prompt(PROMPT, negative_prompt="", do_classifier_free_guidance=cfg)
    x0 = torch.randn(1, 32, HEIGHT // 32, WIDTH // 32, generator=torch.Generator().manual_seed(0))
    inputs = {"latent": x0, "encoder_hidden_states": emb, "encoder_attention_mask": mask}
    args = ["--package", str(package), "--steps", str(STEPS), "--sampler", sampler, "--guidance", str(guidance)]
    run_cpp(runner, [*args, "--shift", repr(pipe.preset.flow_shift)], tmp_path, inputs)
    out = torch.load(tmp_path / "out.pt", weights_only=True)

    ref = pipe(
        PROMPT, height=HEIGHT, width=WIDTH, resolution_binning=False, latents=x0, output_type="latent",
        num_inference_steps=STEPS, guidance_scale=guidance, sampler=sampler,
    )  # fmt: skip
    assert ref.backends["transformer"].startswith("aoti")
    err = (out - ref.images).abs().max().item()
    print(f"C++ vs pipeline, {sampler}, guidance {guidance}, {STEPS} steps: max abs err {err:.3g}")
    assert out.shape == ref.images.shape and err <= 1e-4
    assert (out - x0).abs().max() > 0.1  # it did denoise


def test_errors_exit_non_zero(runner, engines, tmp_path):
    _, package = engines
    bad = subprocess.run([str(runner), "--sampler", "heun", "--steps", "2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown sampler 'heun'" in bad.stderr
    inputs = {"latent": torch.zeros(1, 32, 8, 12), "encoder_hidden_states": torch.zeros(1, 300, 8)}
    torch.save(inputs, tmp_path / "in.pt")
    cmd = [str(runner), "--package", str(package), "--inputs", str(tmp_path / "in.pt"), "--output", "o.pt"]
    missing = subprocess.run([*cmd, "--steps", "2"], capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 1 and "no tensor named 'encoder_attention_mask'" in missing.stderr
