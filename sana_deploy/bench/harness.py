"""Run every (case, backend): build/export/compile timed apart, the first call and warm-ups excluded, timed runs
summarised per stage, peak memory over the timed runs, achieved TFLOP/s of the transformer step.

One timed run is one request through the backend (``SanaDeployPipeline.__call__``, or diffusers' ``SanaPipeline``
for the baselines); every stage's time comes from that call. Never crashes on one backend: a backend that cannot
run here is ``skipped`` with its reason, one that fails is ``error`` with the message.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sana_deploy.bench.case import STAGES, BenchCase
from sana_deploy.bench.contenders import BASELINE, CaseContext, Contender, Prepared, RunTimes
from sana_deploy.bench.flops import device_peak_tflops, transformer_flops
from sana_deploy.bench.machine import loadavg, machine_record
from sana_deploy.bench.stats import summarize
from sana_deploy.bench.timer import MemoryMeter
from sana_deploy.contract import COMPONENTS, torch_dtype
from sana_deploy.errors import fail
from sana_deploy.models.components import SanaComponents
from sana_deploy.runtime.assemble import cast_components

RESULT_FORMAT = "sana-deploy/bench/2"


@dataclass
class BenchSettings:
    warmup: int = 3
    runs: int = 10
    interleave: bool = False  # time backends round-robin, run by run (same load for all; no per-backend memory)
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


def load_case_components(case: BenchCase) -> SanaComponents:
    """Every component (and the case's ControlNet), seeded random weights for presets (speed does not depend on
    weight values) or the given checkpoint, cast to the precision policy of ``case.precision`` on ``case.device``."""
    from sana_deploy.models.config import PRESETS, get_preset
    from sana_deploy.models.controlnet import load_controlnet
    from sana_deploy.models.loaders import load_components
    from sana_deploy.models.random import random_components

    torch_dtype(case.precision)
    if case.model.lower() in PRESETS and not Path(case.model).exists():
        preset = get_preset(case.model)
        if case.text_encoder_layers is not None:
            te = {**preset.text_encoder, "num_hidden_layers": case.text_encoder_layers}
            te["vocab_size"] = min(te["vocab_size"], 512)  # the byte tokenizer's ids; lookup cost is size-free
            preset = preset.replace(text_encoder=te)
        comps = random_components(preset, COMPONENTS, torch.float32, case.seed)
    else:
        if case.text_encoder_layers is not None:
            fail("--text-encoder-layers applies to presets (seeded random weights), not to a checkpoint.")
        comps = load_components(case.model, COMPONENTS)
    if comps.tokenizer is None:
        fail(f"{case.model} has no tokenizer; pass a diffusers folder with tokenizer/ or a preset.")
    if case.controlnet is not None:  # its weights, checked to fit the model (as generate --controlnet loads it)
        comps.controlnet = load_controlnet(case.controlnet, comps.preset)
    return cast_components(comps, case.precision, case.device)


def _flops(comps: SanaComponents, case: BenchCase) -> dict[str, float]:
    h, w = case.latent_hw
    t = comps.preset.transformer
    full = transformer_flops(t, case.transformer_batch, h, w, case.text_len, caption_kv=True)
    cached = transformer_flops(t, case.transformer_batch, h, w, case.text_len, caption_kv=False)
    return {"step_full": full, "step_cached": cached, "caption_kv": full - cached}


def _stage_flops(stage: str, flops: dict[str, float], denoiser: str, steps: int) -> float | None:
    split = denoiser == "split"
    step = flops["step_cached"] if split else flops["step_full"]
    if stage == "step":
        return step
    if stage == "loop":
        return steps * step + (flops["caption_kv"] if split else 0.0)
    return None


def _entry(case: BenchCase, backend: Contender, status: str, reason: str = "") -> dict:
    return {
        "model": case.model,
        "profile": case.profile,
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
        "denoiser": None,  # "split" (caption K/V once per request) or "one-graph", as the timed runs ran
        "backends": {},  # stage -> "backend/precision" as the timed runs ran
        "missing_stages": {},  # stage -> why this backend could not time it here
        "peak_memory_bytes": None,
        "memory_kind": "",
        "stages": {},
    }


def _reason(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}{where}"


def _prepare(backend: Contender, ctx: CaseContext, entry: dict, progress: Callable[[str], None]) -> Prepared | None:
    case = ctx.case
    reason = backend.unavailable(case)
    if reason:
        entry.update(status="skipped", reason=reason)
        progress(f"{case.label} {backend.label}: skipped ({reason})")
        return None
    progress(f"{case.label} {backend.label}: preparing (build/compile/export, timed apart)")
    t0 = time.perf_counter()
    try:
        prepared = backend.prepare(ctx)
    except Exception as exc:  # a backend that fails must not take the others down
        entry.update(status="error", reason=_reason(exc))
        progress(f"{case.label} {backend.label}: error while preparing: {entry['reason']}")
        return None
    entry.update(
        build_s=round(time.perf_counter() - t0, 3),
        build_cached=prepared.build_cached,
        notes=prepared.notes,
        missing_stages={s: why for s, why in prepared.missing.items() if s in case.stages},
    )
    return prepared


def release_prepared(prepared: Prepared | None, device: str) -> None:
    """Free a contender's pipeline now, before the next one loads. Its ``run``/``release`` closures reference the
    pipeline and ``prepared`` (a cycle): dropped here, or the pipeline (at 0.6B, gigabytes of sessions) lives on
    until some later full collection, next to the next contender's."""
    if prepared is not None:
        if prepared.release is not None:
            prepared.release()
        prepared.run = prepared.release = None
    gc.collect()
    _trim_heap()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _trim_heap() -> None:
    """Hand the C heap's freed pages back to the OS (glibc's ``malloc_trim``), so the next contender starts from
    what is really in use: after a 1024² decode, freed activation blocks otherwise stay resident. No-op elsewhere."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


@dataclass
class _Timings:
    """What one backend's runs gave: the first call, and every timed run."""

    first: RunTimes | None = None
    runs: list[RunTimes] = field(default_factory=list)


def _stage_records(timings: _Timings, case: BenchCase, flops: dict, peak: float | None) -> dict[str, dict]:
    """Per stage: the first call apart, the statistics over the timed runs, FLOPs and achieved TFLOP/s.

    ``step``: each timed run contributes the median of its own steps (so every stage has one value per run);
    ``all_steps_ms`` pools every step of every timed run."""
    out = {}
    last = timings.runs[-1]
    for stage in case.stages:
        if not all(stage in r.stages_ms for r in timings.runs):
            continue
        times = [r.stages_ms[stage] for r in timings.runs]
        first = timings.first.stages_ms.get(stage) if timings.first is not None else None
        rec = {"first_call_ms": first, "runs": len(times), "times_ms": times}
        rec.update(summarize(times))
        if stage == "step":
            rec["steps_per_run"] = len(last.step_ms)
            rec["all_steps_ms"] = [t for r in timings.runs for t in r.step_ms]
        rec["images_per_s"] = 1000.0 / rec["median_ms"] if stage == "e2e" else None
        f = _stage_flops(stage, flops, last.denoiser, case.steps)
        rec["flops"] = f
        rec["tflops"] = f / (rec["median_ms"] / 1000.0) / 1e12 if f else None
        rec["peak_fraction"] = rec["tflops"] / peak if rec["tflops"] and peak else None
        out[stage] = rec
    return out


def _finish(entry: dict, timings: _Timings, case: BenchCase, flops: dict, peak: float | None) -> None:
    if entry["status"] != "ok" or not timings.runs:
        return
    last = timings.runs[-1]
    entry.update(denoiser=last.denoiser, backends=last.backends)
    entry["stages"] = _stage_records(timings, case, flops, peak)


def _call(prepared: Prepared, entry: dict, progress: Callable[[str], None]) -> RunTimes | None:
    """One request; a failure marks the backend ``error`` (and None) instead of raising."""
    if entry["status"] != "ok":
        return None
    try:
        return prepared.run()
    except Exception as exc:
        entry.update(status="error", reason=_reason(exc))
        progress(f"{entry['backend']}: error: {entry['reason']}")
        return None


def _warm(prepared: Prepared, entry: dict, warmup: int, timings: _Timings, progress: Callable[[str], None]) -> None:
    """The first call (kept apart: lazy init, autotuning, compilation) and ``warmup - 1`` more untimed calls."""
    timings.first = _call(prepared, entry, progress)
    for _ in range(max(warmup - 1, 0)):
        _call(prepared, entry, progress)


def run_case(
    case: BenchCase,
    backends: list[Contender],
    settings: BenchSettings,
    machine: dict,
    progress: Callable[[str], None] = _log,
) -> tuple[dict, list[dict]]:
    """All backends of one case; returns the case record and one result entry per backend."""
    progress(f"{case.label}: loading the components (seeded random weights for presets)")
    ctx = CaseContext(case, load_case_components(case), Path(settings.work_dir))
    flops = _flops(ctx.comps, case)
    peak, peak_source = device_peak_tflops(machine, case.precision)
    if settings.interleave:
        entries = _run_interleaved(ctx, backends, settings, flops, peak, progress)
    else:
        entries = [_run_one(ctx, b, settings, flops, peak, progress) for b in backends]
    record = case.record()
    record.update(flops=flops, peak_tflops=peak, peak_source=peak_source, cfg_batch=case.transformer_batch)
    ctx.comps = None
    release_prepared(None, case.device)
    return record, entries


def _run_one(ctx, backend, settings, flops, peak, progress) -> dict:  # noqa: ANN001
    case = ctx.case
    entry = _entry(case, backend, "ok")
    prepared = _prepare(backend, ctx, entry, progress)
    if prepared is None:
        return entry
    try:
        timings = _Timings()
        progress(f"{case.label} {backend.label}: first call + {max(settings.warmup - 1, 0)} warm-up")
        _warm(prepared, entry, settings.warmup, timings, progress)
        meter = MemoryMeter(case.device)
        entry["memory_kind"] = meter.reset()
        for i in range(settings.runs):
            t = _call(prepared, entry, progress)
            if t is None:
                break
            timings.runs.append(t)
            progress(f"{case.label} {backend.label}: run {i + 1}/{settings.runs}: {_brief(t)}")
        entry["peak_memory_bytes"] = meter.peak()
        _finish(entry, timings, case, flops, peak)
    finally:
        release_prepared(prepared, case.device)
    return entry


def _brief(t: RunTimes) -> str:
    return ", ".join(f"{s} {t.stages_ms[s]:.1f} ms" for s in STAGES if s in t.stages_ms)


def _run_interleaved(ctx, backends, settings, flops, peak, progress) -> list[dict]:  # noqa: ANN001
    """Round-robin: every timed run visits every backend once, so slow drifts in machine load (shared CPUs) hit all
    backends alike. The backends share the process, so peak memory is not separable and is left out."""
    case = ctx.case
    entries, ready = [], []
    for backend in backends:
        entry = _entry(case, backend, "ok")
        entries.append(entry)
        prepared = _prepare(backend, ctx, entry, progress)
        if prepared is not None:
            ready.append((backend, entry, prepared, _Timings()))
    try:
        for backend, entry, prepared, timings in ready:
            progress(f"{case.label} {backend.label}: first call + {max(settings.warmup - 1, 0)} warm-up")
            _warm(prepared, entry, settings.warmup, timings, progress)
            entry["memory_kind"] = "not tracked (interleaved runs)"
        for i in range(settings.runs):
            for _, entry, prepared, timings in ready:
                t = _call(prepared, entry, progress)
                if t is not None:
                    timings.runs.append(t)
            progress(f"{case.label}: round {i + 1}/{settings.runs} (load {loadavg()})")
        for _, entry, _, timings in ready:
            _finish(entry, timings, case, flops, peak)
    finally:
        for _, _, prepared, _ in ready:
            release_prepared(prepared, case.device)
    return entries


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


def run_bench(cases: list[BenchCase], backends: list[Contender], settings: BenchSettings) -> dict:
    """The whole benchmark: machine record, every case x backend, speed-ups vs diffusers eager."""
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
    s["step_statistic"] = "median of each run's steps; all_steps_ms pools every step"
    return {"format": RESULT_FORMAT, "machine": machine, "settings": s, "cases": case_records, "results": results}
