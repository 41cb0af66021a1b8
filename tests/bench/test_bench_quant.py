"""``benchmarks/bench_quant.py`` at sana-tiny scale (the 0.6B run is for an idle machine): speed of every cell
against diffusers eager in one bench run, per-step quality on the fp32 run's recorded inputs, image PSNR."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script():  # noqa: ANN202 (the benchmarks/bench_quant.py module)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_quant
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return bench_quant


def test_metrics_and_table():
    bq = _script()
    a = np.zeros((1, 8, 8, 3))
    assert bq.psnr(a, a) == float("inf") and bq.psnr(a + 0.1, a) == pytest.approx(20.0)
    assert [bq.cell_precision(c) for c in bq.CELLS.split(",")] == ["fp32", "int8", "fp32", "bf16", "int8"]
    stage = lambda ms: {"median_ms": ms}  # noqa: E731
    speed = {"results": [
        {"backend": "diffusers-eager", "status": "ok", "stages": {"step": stage(400.0), "e2e": stage(10000.0)}},
        {"backend": "openvino[precision=bf16]", "status": "ok", "stages": {"step": stage(100.0), "e2e": stage(4000.0)}},
        {"backend": "onnxruntime-int8", "status": "skipped", "reason": "not here", "stages": {}},
    ]}  # fmt: skip
    qual = {"openvino[precision=bf16]": {"precision": "bf16", "max_rel_l2": 0.006, "bound": 0.01, "psnr_db": 41.25,
                                         "e2e_negative_cached_s": 2.5}}  # fmt: skip
    text = bq.table(speed, qual, {"e2e_negative_cached_s": 9.0})
    assert (
        "| openvino[precision=bf16] | bf16 | 100.0 | 4.00× | 4.00 | 2.50× | 2.50 | 4.00× | 6.00e-03 | 0.01 | 41.2 |"
        in (text)
    )
    assert "| onnxruntime-int8 | - | skipped: not here |" in text


@pytest.mark.slow
def test_runs_end_to_end_at_tiny_scale(tmp_path, tiny_export):
    bq = _script()
    work = tmp_path / "work"
    shutil.copytree(tiny_export[0], work / "export" / "sana-tiny")  # the session's exports: no re-export
    from sana_deploy.runners.openvino import cpu_capabilities

    # the openvino cell at bf16 where the CPU has bf16 kernels (AVX512_BF16 or AMX), else at int8
    ov_precision = "bf16" if "BF16" in cpu_capabilities() else "int8"
    cells = f"onnxruntime-int8,openvino[precision={ov_precision}]"
    out = tmp_path / "q.json"
    common = ["--model", "sana-tiny", "--steps", "2", "--runs", "1", "--warmup", "0", "--calib-steps", "2",
              "--calib-prompts", "1", "--cells", cells, "--work-dir", str(work)]  # fmt: skip
    # speed, then quality in a second run that takes the first one's speed results (one table for both)
    assert bq.main([*common, "--no-quality", "--json", str(tmp_path / "speed.json")]) == 0
    assert json.loads((tmp_path / "speed.json").read_text())["quality"] == {}
    rc = bq.main([*common, "--no-speed", "--speed-from", str(tmp_path / "speed.json"), "--json", str(out),
                  "--markdown", str(tmp_path / "q.md")])  # fmt: skip
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["int8_recipe"].startswith("int8-")
    speed = {r["backend"]: r for r in result["speed"]["results"]}
    assert set(speed) == {"diffusers-eager", *cells.split(",")} and all(r["status"] == "ok" for r in speed.values())
    for label, precision in (("onnxruntime-int8", "int8"), (f"openvino[precision={ov_precision}]", ov_precision)):
        q = result["quality"][label]
        assert q["precision"] == precision and len(q["rel_l2_per_step"]) == 2 and len(set(q["timesteps"])) == 2
        assert 1e-5 < q["max_rel_l2"] <= q["bound"] and q["within_bound"]
        assert 20 < q["psnr_db"] < 200 and q["e2e_negative_cached_s"] > 0
    assert "| onnxruntime-int8 | int8 |" in (tmp_path / "q.md").read_text()


def test_speed_from_needs_no_speed(tmp_path):
    with pytest.raises(SystemExit):
        _script().main(["--speed-from", str(tmp_path / "speed.json"), "--work-dir", str(tmp_path)])


def test_quantized_contenders_parse_and_check_options():
    from sana_deploy.bench.contenders import parse_backends
    from sana_deploy.errors import SanaDeployError

    ov, ort = parse_backends("openvino[precision=bf16],onnxruntime-int8", add_baseline=False)
    assert (ov.label, ov.backend, ort.backend) == ("openvino[precision=bf16]", "openvino", "onnxruntime")
    with pytest.raises(SanaDeployError, match="openvino option precision='fp8': choose fp32, bf16, int8"):
        parse_backends("openvino[precision=fp8]")
