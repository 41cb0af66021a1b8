"""Bad input: unknown backend / stage / option, runs < 1, bad profiles; unavailable backends are skipped."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sana_deploy.bench import BenchSettings, parse_backends
from sana_deploy.bench.case import BenchCase, parse_profiles, parse_stages
from sana_deploy.bench.contenders import CONTENDERS
from sana_deploy.cli import main
from sana_deploy.errors import SanaDeployError


def _cli(*args: str):
    return CliRunner().invoke(main, ["bench", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backends", "torch,warp-drive"], "Unknown backend 'warp-drive'"),
        (["--stages", "step,teleport"], "Unknown stage"),
        (["--runs", "0"], "--runs must be at least 1"),
        (["--warmup", "-1"], "cannot be negative"),
        (["--profiles", "1000"], "No profile 1000"),
        (["--profiles", "big"], "not a number"),
        (["--profiles", "768x1344"], "not a number"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--backends", "onnxruntime[turbo=1]"], "unknown option 'turbo=1'"),
        (["--backends", "torch,torch"], "same backend twice"),
        (["--backends", "torch[split=maybe]"], "split='maybe'"),
    ],
)
def test_cli_rejects_bad_input_with_a_message(args, message):
    r = _cli(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output


def test_parsers():
    assert parse_profiles("512, 1024,512") == [512, 1024]
    assert (BenchCase("sana-tiny", 1024).height, BenchCase("sana-tiny", 1024).width) == (1024, 1024)
    assert parse_stages("vae-decode,step") == ("step", "vae_decode")
    backends = parse_backends("torch,onnxruntime[opt=extended,split=0]")
    assert [b.label for b in backends] == ["diffusers-eager", "torch", "onnxruntime[opt=extended,split=0]"]
    assert {"diffusers-eager", "torch-compile", "torch", "onnxruntime", "aoti", "tensorrt", "tensorrt-rtx"} <= set(
        CONTENDERS
    )
    with pytest.raises(SanaDeployError):
        BenchSettings(runs=0)


def test_gpu_backends_explain_why_they_cannot_run_on_cpu():
    case = BenchCase("sana-tiny", 512, steps=2, device="cpu")
    for name in ("tensorrt", "tensorrt-rtx"):
        reason = CONTENDERS[name]().unavailable(case)
        assert reason and "GPU" in reason
    assert "fp32" in CONTENDERS["onnxruntime"]().unavailable(BenchCase("sana-tiny", 512, precision="bf16"))
