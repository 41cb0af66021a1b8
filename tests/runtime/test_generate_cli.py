"""``sana-deploy generate`` writes real PNGs of the requested size, and says clearly what it cannot do."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from PIL import Image

from sana_deploy.cli import main


def test_generate_writes_png_of_requested_size(tmp_path):
    out = tmp_path / "fox.png"
    args = ["generate", "a red fox in the snow", "-o", str(out), "--height", "200", "--width", "328"]
    r = CliRunner().invoke(main, [*args, "--steps", "2", "--no-progress", "--engine-dir", str(tmp_path / "none")])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (328, 200) and im.mode == "RGB"
        assert len(np.unique(np.asarray(im).reshape(-1, 3), axis=0)) > 100  # an image, not a constant fill
    assert "transformer=torch/fp32" in r.output


def test_generate_prompts_file_and_batch(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\na dog\n")
    out = tmp_path / "img.png"
    args = ["generate", "--prompts", str(prompts), "--batch", "2", "-o", str(out), "--height", "128", "--width", "128"]
    args += ["--steps", "1", "--no-progress", "--no-resolution-binning", "--backend", "torch"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    written = sorted(p.name for p in tmp_path.glob("img_*.png"))
    assert written == [f"img_{i}.png" for i in range(4)]


def test_generate_errors_are_messages_not_tracebacks(tmp_path):
    base = ["generate", "x", "-o", str(tmp_path / "x.png"), "--backend", "torch", "--steps", "1"]
    base += ["--engine-dir", str(tmp_path / "engines")]
    r = CliRunner().invoke(main, [*base, "--height", "960", "--width", "720", "--no-resolution-binning"])
    assert r.exit_code == 2 and "960x704" in r.output and "960x736" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, [*base, "--height", "0"])
    assert r.exit_code == 2 and "height must be positive" in r.output
    r = CliRunner().invoke(main, [*base, "--backend", "tensorrt"])
    assert r.exit_code == 2 and ("CUDA" in r.output or "not installed" in r.output)
    r = CliRunner().invoke(main, [*base, "--backend", "tensorrt-rtx"])
    assert r.exit_code == 2 and ("CUDA" in r.output or "not installed" in r.output)
    r = CliRunner().invoke(main, ["generate", "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "--prompts" in r.output
