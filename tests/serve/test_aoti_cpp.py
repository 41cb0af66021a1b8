"""The C++ example (cpp/aoti_runner) builds with CMake against the torch wheel and matches Python on sana-tiny."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("c++") is None, reason="needs cmake and a C++ compiler"
)


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("cpp-build")
    prefix = torch.utils.cmake_prefix_path
    cmd = ["cmake", "-S", str(ROOT / "cpp"), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}"]
    configure = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "sana_trt_run: NOT BUILT" in configure.stdout or "sana_trt_run: building" in configure.stdout
    subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True, text=True, check=True)
    return build / "aoti_runner" / "sana_aoti_run"


@pytest.fixture(scope="module")
def package(tiny, tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """The sana-tiny transformer as an AOTInductor package (dynamic batch and latent size; inline kernels)."""
    from sana_deploy.export import SPECS
    from sana_deploy.plugins import use_kernels

    spec = SPECS["transformer"](tiny)
    module = spec.wrap(tiny).eval()
    ins = spec.dummy_inputs(tiny, {"batch": 2, "latent_h": 8, "latent_w": 12, "text_len": 300})
    b, h, w = (
        torch.export.Dim("batch", min=1, max=4),
        torch.export.Dim("h", min=4, max=64),
        torch.export.Dim("w", min=4, max=64),
    )
    shapes = ({0: b, 2: h, 3: w}, {0: b}, {0: b}, {0: b})
    path = tmp_path_factory.mktemp("aoti") / "transformer.pt2"
    with use_kernels("inline"), torch.no_grad():
        ep = torch.export.export(module, tuple(ins.values()), dynamic_shapes=shapes)
        torch._inductor.aoti_compile_and_package(ep, package_path=str(path))
    return path, module


def run(runner: Path, package: Path, inputs: dict, tmp: Path, *args: str) -> torch.Tensor:
    torch.save(inputs, tmp / "in.pt")
    cmd = [str(runner), "--package", str(package), "--inputs", str(tmp / "in.pt"), "--output", str(tmp / "out.pt")]
    subprocess.run(cmd + list(args), check=True, capture_output=True, text=True, timeout=300)
    return torch.load(tmp / "out.pt", weights_only=True)


def test_forward_matches_python(runner, package, tiny, tmp_path):
    from sana_deploy.export import SPECS

    path, module = package
    ins = SPECS["transformer"](tiny).dummy_inputs(tiny, {"batch": 1, "latent_h": 12, "latent_w": 8, "text_len": 300}, 5)
    out = run(runner, path, ins, tmp_path)
    with torch.no_grad():
        ref = module(*ins.values())
    err = (out - ref).abs().max().item()
    print(f"C++ vs Python transformer max abs err {err:.3g}")
    assert out.shape == ref.shape and err <= 1e-4


def euler_reference(module, noise, cond, cond_mask, uncond, uncond_mask, steps, guidance, shift):
    """Python twin of sana::denoise (Flow-Euler with batched CFG) on the eager module."""
    x = noise.clone()
    s = [1 - i / steps for i in range(steps + 1)]
    sigmas = [shift * v / (1 + (shift - 1) * v) for v in s]
    with torch.no_grad():
        for i in range(steps):
            t = torch.full((2 * x.shape[0],), float(math.floor(sigmas[i] * 1000)))
            v = module(torch.cat([x, x]), t, torch.cat([uncond, cond]), torch.cat([uncond_mask, cond_mask]))
            vu, vc = v.chunk(2)
            x = x + (sigmas[i + 1] - sigmas[i]) * (vu + guidance * (vc - vu))
    return x


def test_denoising_loop_matches_python(runner, package, tiny, tmp_path):
    path, module = package
    g = torch.Generator().manual_seed(0)
    c = tiny.preset.transformer.caption_channels
    ins = {
        "latent": torch.randn(1, 32, 8, 10, generator=g),
        "encoder_hidden_states": torch.randn(1, 300, c, generator=g),
        "encoder_attention_mask": (torch.arange(300) < 40).long()[None],
        "negative_encoder_hidden_states": torch.randn(1, 300, c, generator=g),
        "negative_encoder_attention_mask": (torch.arange(300) < 1).long()[None],
    }
    out = run(runner, path, ins, tmp_path, "--steps", "3", "--guidance", "4.5", "--shift", str(tiny.preset.flow_shift))
    ref = euler_reference(module, *ins.values(), steps=3, guidance=4.5, shift=tiny.preset.flow_shift)
    err = (out - ref).abs().max().item()
    print(f"C++ vs Python 3-step loop max abs err {err:.3g}")
    assert err <= 1e-4 and not torch.equal(out, ins["latent"])
