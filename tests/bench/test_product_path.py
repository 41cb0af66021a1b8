"""The bench times the product pipeline: every number of a pipeline backend comes from ``SanaDeployPipeline`` (its
own ``seconds`` / ``step_seconds``), and every denoising step it times runs in the pipeline's denoiser."""

from __future__ import annotations

import time

import pytest

from sana_deploy.bench import bench
from sana_deploy.bench.case import PROMPT
from sana_deploy.runtime.denoiser import OneGraphDenoiser, SplitDenoiser
from sana_deploy.runtime.pipeline import SanaDeployOutput, SanaDeployPipeline


def test_stage_times_are_the_pipelines_own(monkeypatch, tmp_path):
    """A pipeline reporting fixed timings gives exactly those numbers in the bench's stage records."""
    calls = []

    def fake_call(self, prompt, **kwargs):
        calls.append((prompt, kwargs))
        seconds = {"text_encoder": 0.25, "denoise": 1.5, "vae": 0.5, "total": 2.5}
        return SanaDeployOutput(None, 512, 512, seconds, {"transformer": "fake/fp32"}, "off", [0.2, 0.6, 0.4], "split")

    monkeypatch.setattr(SanaDeployPipeline, "__call__", fake_call)
    result = bench(
        "sana-tiny", "512", "torch", steps=3, warmup=2, runs=3, baseline=False, device="cpu", work_dir=tmp_path
    )
    (entry,) = result["results"]
    assert entry["status"] == "ok", entry["reason"]
    assert len(calls) == 2 + 3  # first call + 1 warm-up, 3 timed runs: one pipeline call each
    prompt, kwargs = calls[-1]
    assert prompt == PROMPT
    assert kwargs["height"] == kwargs["width"] == 512 and kwargs["num_inference_steps"] == 3
    assert kwargs["resolution_binning"] is False and kwargs["output_type"] == "np"
    medians = {s: r["median_ms"] for s, r in entry["stages"].items()}
    expected = {"text_encode": 250.0, "step": 400.0, "loop": 1500.0, "vae_decode": 500.0, "e2e": 2500.0}
    assert medians == pytest.approx(expected)
    assert entry["stages"]["step"]["all_steps_ms"] == pytest.approx([200.0, 600.0, 400.0] * 3)
    assert entry["denoiser"] == "split" and entry["backends"] == {"transformer": "fake/fp32"}


def test_every_timed_step_runs_in_the_pipelines_denoiser(monkeypatch, tmp_path):
    """Each step of the pipeline's denoiser sleeps 50 ms and is counted: the bench's step and loop records show
    exactly those steps, for the split and the one-graph transformer alike."""
    counts = {"split": 0, "one-graph": 0}

    def slow(cls, kind):
        original = cls.__call__

        def call(self, latent, timestep, cond):
            counts[kind] += 1
            time.sleep(0.05)
            return original(self, latent, timestep, cond)

        monkeypatch.setattr(cls, "__call__", call)

    slow(SplitDenoiser, "split")
    slow(OneGraphDenoiser, "one-graph")
    result = bench(
        "sana-tiny",
        512,
        "torch,torch[split=0]",
        steps=2,
        stages="step,loop",
        warmup=1,
        runs=2,
        baseline=False,
        device="cpu",
        work_dir=tmp_path,
    )
    assert counts == {"split": 3 * 2, "one-graph": 3 * 2}  # (first call + 2 runs) x 2 steps, per backend
    by_backend = {r["backend"]: r for r in result["results"]}
    for label, kind in (("torch", "split"), ("torch[split=0]", "one-graph")):
        r = by_backend[label]
        assert r["status"] == "ok", r["reason"]
        assert r["denoiser"] == kind
        assert set(r["stages"]) == {"step", "loop"}  # no decode: the requests stopped at the latents
        assert "vae" not in r["backends"]
        assert r["stages"]["step"]["min_ms"] >= 50.0
        assert len(r["stages"]["step"]["all_steps_ms"]) == 4 and min(r["stages"]["step"]["all_steps_ms"]) >= 50.0
        assert r["stages"]["loop"]["min_ms"] >= 100.0


def test_engine_backends_build_the_profile_then_run_from_engines(monkeypatch, tmp_path):
    """aoti (as tensorrt, tensorrt-rtx): the prepare step builds the case's profile with build_engines, the DC-AE
    in a call of its own, then runs ``SanaDeployPipeline.from_engines`` on that folder with on_miss="build". A
    dynamic DC-AE that is refused is retried --static; one that cannot be built at all makes the requests stop at
    the latents, with the reason under missing_stages."""
    import sana_deploy.engines
    from sana_deploy.engines.backends import EngineBuildError

    builds, opened = [], []

    def fake_build(**kwargs):
        builds.append(kwargs)
        if "vae" in kwargs["components"]:
            raise EngineBuildError("AOTInductor miscompiled vae [512] with dynamic shapes.")
        return []

    def fake_from_engines(cls, engine_dir, model, **kwargs):
        opened.append({"engine_dir": engine_dir, "model": model, **kwargs})
        from sana_deploy.models.random import random_components

        return SanaDeployPipeline.from_components(random_components("sana-tiny"), "torch")

    monkeypatch.setattr(sana_deploy.engines, "build_engines", fake_build)
    monkeypatch.setattr(SanaDeployPipeline, "from_engines", classmethod(fake_from_engines))
    result = bench("sana-tiny", 512, "aoti", steps=2, warmup=1, runs=1, baseline=False, device="cpu", work_dir=tmp_path)
    (entry,) = result["results"]
    assert entry["status"] == "ok", entry["reason"]
    split = ("text_encoder", "transformer_text", "transformer_cached")
    assert [b["components"] for b in builds] == [split, ("vae",), ("vae",)]
    assert [b.get("static", False) for b in builds] == [False, False, True]
    assert all(
        b["profiles"] == [512] and b["backend"] == "aoti" and b["engine_dir"] == tmp_path / "engines" for b in builds
    )
    (o,) = opened
    assert o["engine_dir"] == tmp_path / "engines" and o["model"] == "sana-tiny" and o["on_miss"] == "build"
    assert o["backend"] == "aoti" and o["kv_cache"] is True and o["random_weights"] is True
    assert o["build_kwargs"] == {"export_root": str(tmp_path / "export" / "sana-tiny")}
    assert set(entry["stages"]) == {"text_encode", "step", "loop"}
    assert set(entry["missing_stages"]) == {"vae_decode", "e2e"}
    assert "miscompiled" in entry["missing_stages"]["e2e"]
