"""A whole bench run on sana-tiny (profile 512, 2 steps, 1 warm-up, 2 runs): every stage x backend x statistic x
machine field is in the JSON, speed-ups are against diffusers eager, how each backend ran (denoiser, stage
backends) is recorded, the plot is a PNG, markdown and collate render."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from sana_deploy.bench import RESULT_FORMAT, STAGES, STATISTICS, collate
from sana_deploy.bench.machine import MACHINE_FIELDS
from sana_deploy.cli import main

CONTENDERS = "torch,onnxruntime[split=0],tensorrt"
RAN = ("diffusers-eager", "torch", "onnxruntime[split=0]")


@pytest.fixture(scope="module")
def bench_run(tiny_export, tmp_path_factory):
    """One CLI run; the ONNX export is the session's sana-tiny export (reused through the export cache)."""
    out, _ = tiny_export
    work = tmp_path_factory.mktemp("bench-work")
    (work / "export").mkdir()
    os.symlink(out, work / "export" / "sana-tiny")
    files = {k: work / f"result.{k}" for k in ("json", "md", "png")}
    r = CliRunner().invoke(
        main,
        ["bench", "--model", "sana-tiny", "--profiles", "512", "--backends", CONTENDERS, "--steps", "2",
         "--warmup", "1", "--runs", "2", "--work-dir", str(work), "--json", str(files["json"]),
         "--markdown", str(files["md"]), "--plot", str(files["png"])],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return r.output, files, json.loads(files["json"].read_text())


def test_json_has_every_stage_backend_statistic(bench_run):
    _, _, result = bench_run
    assert result["format"] == RESULT_FORMAT
    by_backend = {r["backend"]: r for r in result["results"]}
    assert set(by_backend) == {*RAN, "tensorrt"}
    for name in RAN:
        r = by_backend[name]
        assert r["status"] == "ok", r["reason"]
        assert set(r["stages"]) == set(STAGES)
        assert r["build_s"] is not None and r["build_s"] >= 0
        assert r["peak_memory_bytes"] > 0 and r["memory_kind"]
        for stage, s in r["stages"].items():
            assert set(STATISTICS) <= set(s)
            assert s["runs"] == 2 and len(s["times_ms"]) == 2
            assert s["min_ms"] <= s["median_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]
            assert s["first_call_ms"] > 0
            assert (s["images_per_s"] is not None) == (stage == "e2e")
        step = r["stages"]["step"]
        assert step["steps_per_run"] == 2 and len(step["all_steps_ms"]) == 4
        assert step["tflops"] > 0
        # the request's parts add up to no more than the request
        for i in range(2):
            parts = sum(r["stages"][s]["times_ms"][i] for s in ("text_encode", "loop", "vae_decode"))
            assert parts <= r["stages"]["e2e"]["times_ms"][i] * 1.001
        assert set(r["speedup_vs_baseline"]) == set(STAGES)
        assert set(r["backends"]) == {"text_encoder", "transformer", "vae"}
    assert by_backend["diffusers-eager"]["speedup_vs_baseline"]["step"] == pytest.approx(1.0)
    assert by_backend["diffusers-eager"]["denoiser"] == "one-graph"
    assert by_backend["torch"]["denoiser"] == "split"
    assert by_backend["torch"]["backends"]["transformer"].startswith("torch/fp32")
    assert by_backend["onnxruntime[split=0]"]["denoiser"] == "one-graph"
    assert by_backend["onnxruntime[split=0]"]["backends"]["transformer"].startswith("onnxruntime")
    assert by_backend["onnxruntime[split=0]"]["build_cached"] is True  # the session's export, found by hash
    # the split computes the caption K/V once per request: its step graph is credited without them
    case = result["cases"][0]
    assert (case["profile"], case["height"], case["width"]) == (512, 512, 512)
    assert by_backend["torch"]["stages"]["step"]["flops"] == pytest.approx(case["flops"]["step_cached"])
    assert by_backend["onnxruntime[split=0]"]["stages"]["step"]["flops"] == pytest.approx(case["flops"]["step_full"])


def test_unavailable_backend_is_skipped_with_reason(bench_run):
    output, _, result = bench_run
    trt = next(r for r in result["results"] if r["backend"] == "tensorrt")
    assert trt["status"] == "skipped" and "GPU" in trt["reason"] and not trt["stages"]
    assert "skipped: needs a CUDA GPU" in output


def test_machine_record(bench_run):
    _, _, result = bench_run
    m = result["machine"]
    assert set(MACHINE_FIELDS) <= set(m)
    assert m["cpu"]["model"] and m["cpu"]["logical_cores"] >= 1
    assert len(m["loadavg"]) == 3 and len(m["loadavg_end"]) == 3
    assert {"torch", "onnxruntime", "sana-deploy", "python"} <= set(m["versions"])
    assert "commit" in m["git"]


def test_outputs_render(bench_run, tmp_path):
    output, files, result = bench_run
    png = files["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    md = files["md"].read_text()
    assert "| diffusers-eager |" in md and "denoising step" in md and "| torch | split |" in md
    assert "denoising step" in output and "diffusers-eager" in output
    table = collate([files["json"], files["json"]])
    rows = [line for line in table.splitlines() if "| sana-tiny |" in line]
    assert len(rows) == 2 * len(RAN)


def test_a_released_contender_frees_its_pipeline_before_the_next_loads(tiny, tiny_export, tmp_path, monkeypatch):
    """The harness drops a contender's pipeline when it releases it, not at a later full collection: at 0.6B two
    contenders' sessions side by side did not fit in 24 GB. (The onnxruntime contender's release closure holds its
    pipeline, as any contender's may.)"""
    import weakref

    from sana_deploy.bench import harness
    from sana_deploy.bench.case import BenchCase
    from sana_deploy.bench.contenders import CaseContext, parse_backends

    (contender,) = parse_backends("onnxruntime", add_baseline=False)
    refs = []
    make = type(contender).make_pipeline

    def spy(self, ctx):  # noqa: ANN001, ANN202
        pipe, prepared = make(self, ctx)
        refs.append(weakref.ref(pipe))
        return pipe, prepared

    monkeypatch.setattr(type(contender), "make_pipeline", spy)
    case = BenchCase("sana-tiny", 512, 2)
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "sana-tiny").symlink_to(tiny_export[0], target_is_directory=True)
    ctx = CaseContext(case, tiny, tmp_path)
    prepared = contender.prepare(ctx)
    assert prepared.run() is not None and refs[0]() is not None
    harness.release_prepared(prepared, "cpu")
    assert refs[0]() is None  # gone although ``prepared`` is still referenced here
