"""Run every (case, backend, stage): build/compile/first call timed apart, warm-ups excluded, timed runs
summarised, peak memory per stage, achieved TFLOP/s of the transformer step. Never crashes on one backend:
a backend that cannot run here is ``skipped`` with its reason, one that fails is ``error`` with the message."""

from __future__ import annotations

import gc
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sana_deploy.bench.backends import BASELINE, Backend, Prepared
from sana_deploy.bench.case import BenchCase, CaseInputs, make_inputs
from sana_deploy.bench.flops import device_peak_tflops, transformer_flops
from sana_deploy.bench.machine import loadavg, machine_record
from sana_deploy.bench.stats import summarize
from sana_deploy.bench.timer import StageTimer
from sana_deploy.errors import fail
from sana_deploy.models.components import SanaComponents, torch_dtype

RESULT_FORMAT = "sana-deploy/bench/1"


@dataclass
class BenchSettings:
    warmup: int = 3
    runs: int = 10
    interleave: bool = False  # time backends round-robin, run by run (same load for all; no per-stage memory)
    work_dir: Path = field(default_factory=lambda: default_work_dir())

    def __post_init__(self) -> None:
        if self.runs < 1:
            fail(f"--runs must be at least 1 (got {self.runs}).")
        if self.warmup < 0:
            fail(f"--warmup cannot be negative (got {self.warmup}).")


def default_work_dir() -> Path:
    return Path(os.environ.get("SANA_DEPLOY_CACHE", Path.home() / ".cache" / "sana-deploy")) / "bench"


def _log(msg: str) -> None:
    print(f"[sana-deploy bench] {msg}", file=sys.stderr, flush=True)


def needed_components(stages: tuple[str, ...]) -> tuple[str, ...]:
    s = set(stages)
    out = []
    if s & {"text_encode", "e2e"}:
        out.append("text_encoder")
    if s & {"step", "loop", "e2e"}:
        out.append("transformer")
    if s & {"vae_decode", "e2e"}:
        out.append("vae")
    return tuple(out)


def load_case_components(case: BenchCase) -> SanaComponents:
    """Seeded random weights for presets (speed does not depend on weight values), or the given checkpoint."""
    from sana_deploy.models.config import PRESETS, get_preset
    from sana_deploy.models.loaders import load_components
    from sana_deploy.models.random import random_components

    dtype = torch_dtype(case.precision)
    names = needed_components(case.stages)
    if case.model.lower() in PRESETS and not Path(case.model).exists():
        preset = get_preset(case.model)
        if case.text_encoder_layers is not None:
            te = {**preset.text_encoder, "num_hidden_layers": case.text_encoder_layers}
            te["vocab_size"] = min(te["vocab_size"], 512)  # the byte tokenizer's ids; lookup cost is size-free
            preset = preset.replace(text_encoder=te)
        comps = random_components(preset, names, dtype, case.seed)
    else:
        comps = load_components(case.model, names, dtype)
    for name in ("transformer", "vae", "text_encoder"):
        module = getattr(comps, name)
        if module is not None:
            setattr(comps, name, module.to(case.device))
    return comps


def _flops(comps: SanaComponents, case: BenchCase) -> dict[str, float]:
    h, w = case.latent_hw
    t = comps.preset.transformer
    full = transformer_flops(t, case.transformer_batch, h, w, case.text_len, caption_kv=True)
    cached = transformer_flops(t, case.transformer_batch, h, w, case.text_len, caption_kv=False)
    return {"step_full": full, "step_cached": cached, "caption_kv": full - cached}


def _stage_flops(stage: str, flops: dict[str, float], prepared: Prepared, steps: int) -> float | None:
    step = flops["step_full"] if prepared.caption_kv_in_step else flops["step_cached"]
    if stage == "step":
        return step
    if stage == "loop":
        return steps * step + (0.0 if prepared.caption_kv_in_step else flops["caption_kv"])
    return None


def _entry(case: BenchCase, backend: Backend, status: str, reason: str = "") -> dict:
    return {
        "model": case.model,
        "height": case.height,
        "width": case.width,
        "backend": backend.label,
        "backend_name": backend.name,
        "options": dict(backend.options),
        "description": backend.description,
        "status": status,
        "reason": reason,
        "build_s": None,
        "build_cached": None,
        "notes": [],
        "stages": {},
    }


def _stage_record(timing, stage: str, prepared: Prepared, flops: dict, case: BenchCase, peak: float | None) -> dict:
    rec = {"first_call_ms": timing.first_call_ms, "runs": len(timing.times_ms), "times_ms": timing.times_ms}
    rec.update(summarize(timing.times_ms))
    rec["images_per_s"] = 1000.0 / rec["median_ms"] if stage == "e2e" else None
    rec["peak_memory_bytes"] = timing.peak_memory_bytes
    rec["memory_kind"] = timing.memory_kind
    f = _stage_flops(stage, flops, prepared, case.steps)
    rec["flops"] = f
    rec["tflops"] = f / (rec["median_ms"] / 1000.0) / 1e12 if f else None
    rec["peak_fraction"] = rec["tflops"] / peak if rec["tflops"] and peak else None
    return rec


def _prepare(backend: Backend, comps, case, inputs, settings, entry) -> Prepared | None:
    reason = backend.unavailable(case)
    if reason:
        entry.update(status="skipped", reason=reason)
        _log(f"{case.label} {backend.label}: skipped ({reason})")
        return None
    _log(f"{case.label} {backend.label}: preparing (build/compile/export, timed apart)")
    t0 = time.perf_counter()
    try:
        prepared = backend.prepare(comps, case, inputs, settings.work_dir)
    except Exception as exc:  # a backend that fails must not take the others down
        entry.update(status="error", reason=_reason(exc))
        _log(f"{case.label} {backend.label}: error while preparing: {entry['reason']}")
        return None
    entry.update(build_s=round(time.perf_counter() - t0, 3), build_cached=prepared.build_cached, notes=prepared.notes)
    return prepared


def _reason(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}{where}"


def _release(prepared: Prepared | None, device: str) -> None:
    if prepared is not None and prepared.release is not None:
        prepared.release()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def run_case(
    case: BenchCase,
    backends: list[Backend],
    settings: BenchSettings,
    machine: dict,
    progress: Callable[[str], None] = _log,
) -> tuple[dict, list[dict]]:
    """All backends of one case; returns the case record and one result entry per backend."""
    progress(f"{case.label}: loading {', '.join(needed_components(case.stages))} (seeded random weights)")
    comps = load_case_components(case)
    inputs: CaseInputs = make_inputs(case, comps.preset.transformer.caption_channels)
    flops = _flops(comps, case)
    peak, peak_source = device_peak_tflops(machine, case.precision)
    timer = StageTimer(case.device)
    entries: list[dict] = []
    if settings.interleave:
        entries = _run_interleaved(case, backends, settings, comps, inputs, flops, peak, timer, progress)
    else:
        for backend in backends:
            entry = _entry(case, backend, "ok")
            entries.append(entry)
            prepared = _prepare(backend, comps, case, inputs, settings, entry)
            if prepared is None:
                continue
            try:
                for stage, fn in prepared.stages.items():
                    progress(f"{case.label} {backend.label}: {stage} ({settings.warmup} warm-up, {settings.runs} runs)")
                    timing = timer.measure(fn, settings.warmup, settings.runs)
                    entry["stages"][stage] = _stage_record(timing, stage, prepared, flops, case, peak)
                    progress(f"    median {entry['stages'][stage]['median_ms']:.2f} ms")
            except Exception as exc:
                entry.update(status="error", reason=_reason(exc))
                progress(f"{case.label} {backend.label}: error: {entry['reason']}")
            finally:
                _release(prepared, case.device)
    record = asdict(case)
    record.pop("extra")
    record.update(flops=flops, peak_tflops=peak, peak_source=peak_source, cfg_batch=case.transformer_batch)
    del comps
    _release(None, case.device)
    return record, entries


def _run_interleaved(case, backends, settings, comps, inputs, flops, peak, timer, progress) -> list[dict]:
    """Round-robin timing: every timed run visits every backend once, so slow drifts in machine load
    (shared CPUs) hit all backends alike. Per-stage memory is not separable here and is left out."""
    entries, ready = [], []
    for backend in backends:
        entry = _entry(case, backend, "ok")
        entries.append(entry)
        prepared = _prepare(backend, comps, case, inputs, settings, entry)
        if prepared is not None:
            ready.append((backend, entry, prepared))
    stages = [s for s in case.stages if any(s in p.stages for _, _, p in ready)]
    for stage in stages:
        live = [(b, e, p) for b, e, p in ready if stage in p.stages and e["status"] == "ok"]
        firsts, times = {}, {id(e): [] for _, e, _ in live}
        for b, e, p in live:
            progress(f"{case.label} {b.label}: {stage} first call + {settings.warmup} warm-up")
            firsts[id(e)] = _safe(lambda fn=p.stages[stage]: timer._once(fn), e, progress)
            for _ in range(max(settings.warmup - 1, 0)):
                _safe(p.stages[stage], e, progress)
        for i in range(settings.runs):
            for _, e, p in live:
                if e["status"] == "ok":
                    times[id(e)].append(_safe(lambda fn=p.stages[stage]: timer._once(fn), e, progress))
            progress(f"{case.label} {stage}: round {i + 1}/{settings.runs} (load {loadavg()})")
        for _, e, p in live:
            if e["status"] != "ok":
                continue
            from sana_deploy.bench.timer import StageTiming

            timing = StageTiming(firsts[id(e)], times[id(e)], None, "not tracked (interleaved runs)")
            e["stages"][stage] = _stage_record(timing, stage, p, flops, case, peak)
    for _, _, p in ready:
        _release(p, case.device)
    return entries


def _safe(fn, entry: dict, progress) -> float:
    try:
        return fn()
    except Exception as exc:
        entry.update(status="error", reason=_reason(exc))
        progress(f"{entry['backend']}: error: {entry['reason']}")
        return float("nan")


def add_speedups(results: list[dict]) -> None:
    """``speedup[stage]`` = baseline median / this backend's median, against diffusers eager of the same case."""
    base = {(r["model"], r["height"], r["width"]): r for r in results if r["backend"] == BASELINE}
    for r in results:
        b = base.get((r["model"], r["height"], r["width"]))
        r["speedup_vs_baseline"] = {
            s: b["stages"][s]["median_ms"] / v["median_ms"]
            for s, v in r["stages"].items()
            if b is not None and s in b["stages"] and v["median_ms"] > 0
        }


def run_bench(cases: list[BenchCase], backends: list[Backend], settings: BenchSettings) -> dict:
    """The whole benchmark: machine record, every case x backend x stage, speedups vs diffusers eager."""
    machine = machine_record()
    settings.work_dir = Path(settings.work_dir)
    case_records, results = [], []
    for case in cases:
        record, entries = run_case(case, backends, settings, machine)
        case_records.append(record)
        results.extend(entries)
    add_speedups(results)
    machine["loadavg_end"] = loadavg()
    s = asdict(settings)
    s["work_dir"] = str(settings.work_dir)
    return {"format": RESULT_FORMAT, "machine": machine, "settings": s, "cases": case_records, "results": results}
