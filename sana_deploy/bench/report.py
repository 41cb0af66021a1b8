"""Turn result dicts into a text table, markdown, JSON files (written atomically) and a collated table."""

from __future__ import annotations

import json
from pathlib import Path

from sana_deploy.bench.case import STAGE_LABELS, STAGES
from sana_deploy.fileio import write_atomic


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.2f} s" if v >= 10000 else f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms"


def _mem(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**30:.2f} GiB"


def _stages_present(results: list[dict]) -> list[str]:
    present = {s for r in results for s in r["stages"]}
    return [s for s in STAGES if s in present]


def machine_line(machine: dict) -> str:
    cpu, gpu = machine.get("cpu") or {}, machine.get("gpu")
    dev = f"{gpu['name']} (SM {gpu['sm']}, driver {gpu.get('driver')})" if gpu else "no GPU"
    v = machine.get("versions", {})
    sw = ", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "diffusers", "triton", "tensorrt") if k in v)
    git = machine.get("git") or {}
    commit = (git.get("commit") or "?")[:10] + ("+dirty" if git.get("dirty") else "")
    return (
        f"{cpu.get('model')} x{cpu.get('cores_used') or cpu.get('logical_cores')} cores; {dev}; "
        f"load {machine.get('loadavg')} -> {machine.get('loadavg_end')}; {sw}; sana-deploy {commit}"
    )


def _case_groups(result: dict) -> list[tuple[dict, list[dict]]]:
    out = []
    for case in result["cases"]:
        key = (case["model"], case["height"], case["width"])
        out.append((case, [r for r in result["results"] if (r["model"], r["height"], r["width"]) == key]))
    return out


def _case_title(case: dict) -> str:
    te = "" if case.get("text_encoder_layers") is None else f", text encoder {case['text_encoder_layers']} layers"
    guidance = "embedded guidance" if case.get("sprint") else "CFG"  # Sana-Sprint: a transformer input, no CFG
    return (
        f"{case['model']} {case['height']}x{case['width']} ({_variant(case)}), {case['steps']} steps, "
        f"{guidance} {case['guidance_scale']} "
        f"(transformer batch {case['cfg_batch']}), {case['precision']}, {case['device']}{te}"
    )


def _variant(case: dict) -> str:
    """The case's variant with its settings, e.g. ``sana pag (scale 3.0, blocks 1)`` (older results: text to
    image)."""
    variant = case.get("variant") or ("sprint text-to-image" if case.get("sprint") else "sana text-to-image")
    extra = []
    if case.get("image"):
        extra.append(f"strength {case['strength']}")
    if case.get("control_image"):
        extra.append(f"control scale {case['control_scale']}")
    if case.get("pag_scale"):
        blocks = case.get("pag_layers") or "default"
        extra.append(f"PAG scale {case['pag_scale']}, blocks {blocks}")
    return variant + (f": {'; '.join(extra)}" if extra else "")


def _cell(r: dict, stage: str) -> str:
    s = r["stages"].get(stage)
    if s is None:
        return "-"
    speed = r.get("speedup_vs_baseline", {}).get(stage)
    return _ms(s["median_ms"]) + (f" ({speed:.2f}x)" if speed is not None and r["backend"] != "diffusers-eager" else "")


def _rows(results: list[dict], stages: list[str]) -> list[list[str]]:
    rows = []
    for r in results:
        if r["status"] != "ok" and not r["stages"]:
            rows.append([r["backend"], f"{r['status']}: {r['reason']}"] + [""] * len(stages))
            continue
        step = r["stages"].get("step") or {}
        tf = step.get("tflops")
        frac = step.get("peak_fraction")
        extra = f"{tf:.2f}" + (f" ({100 * frac:.0f}%)" if frac else "") if tf else "-"
        build = "-" if r["build_s"] is None else f"{r['build_s']:.1f} s" + (" (cached)" if r["build_cached"] else "")
        rows.append([r["backend"], build] + [_cell(r, s) for s in stages] + [extra])
    return rows


def text_table(result: dict) -> str:
    """Human-readable table per case: median per stage with speed-up vs diffusers eager."""
    lines = [f"machine: {machine_line(result['machine'])}"]
    st = result["settings"]
    lines.append(
        f"warm-up {st['warmup']} (first call timed apart), {st['runs']} timed requests, median shown "
        "(stage times from the pipeline; step = median of each request's steps)"
    )
    for case, results in _case_groups(result):
        stages = _stages_present(results)
        header = ["backend", "build"] + [STAGE_LABELS[s] for s in stages] + ["step TFLOP/s"]
        rows = _rows(results, stages)
        widths = [
            max(len(str(row[i])) for row in [header] + [r for r in rows if len(r) == len(header)])
            for i in range(len(header))
        ]
        lines += ["", _case_title(case)]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        for row in rows:
            if len(row) != len(header):
                lines.append(f"{row[0].ljust(widths[0])}  {row[1]}")
            else:
                lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
        lines.extend(_detail_lines(results))
    return "\n".join(lines)


def _detail_lines(results: list[dict]) -> list[str]:
    out = []
    for r in results:
        if r["status"] != "ok" and r["stages"]:
            out.append(f"  {r['backend']}: {r['status']} after some runs: {r['reason']}")
        if r["stages"]:
            ran = ", ".join(f"{k}={v}" for k, v in (r.get("backends") or {}).items())
            out.append(
                f"  {r['backend']}: denoiser {r.get('denoiser') or '-'}, peak mem {_mem(r.get('peak_memory_bytes'))}"
                f" ({r.get('memory_kind') or '-'}); {ran}"
            )
        for stage, why in (r.get("missing_stages") or {}).items():
            out.append(f"  {r['backend']} {stage}: not measured: {why}")
        for stage, s in r["stages"].items():
            ips = f", {s['images_per_s']:.3f} img/s" if s.get("images_per_s") else ""
            out.append(
                f"  {r['backend']} {stage}: median {_ms(s['median_ms'])} p90 {_ms(s['p90_ms'])} "
                f"p99 {_ms(s['p99_ms'])} min {_ms(s['min_ms'])} first {_ms(s['first_call_ms'])}{ips}"
            )
    return out


def markdown(result: dict) -> str:
    lines = ["# sana-deploy bench", "", f"Machine: {machine_line(result['machine'])}", ""]
    st = result["settings"]
    lines.append(
        f"{st['warmup']} warm-up requests (first call reported apart), {st['runs']} timed requests per backend"
        + (", backends interleaved run by run" if st.get("interleave") else "")
        + ". Stage times are the pipeline's own, per request; step = median of each request's steps. "
        + "Cells: median (speed-up vs diffusers eager)."
    )
    for case, results in _case_groups(result):
        stages = _stages_present(results)
        lines += ["", f"## {_case_title(case)}", ""]
        lines.append("| backend | build | " + " | ".join(STAGE_LABELS[s] for s in stages) + " | step TFLOP/s |")
        lines.append("|---" * (len(stages) + 3) + "|")
        for row in _rows(results, stages):
            if len(row) != len(stages) + 3:
                row = [row[0], row[1]] + [""] * (len(stages) + 1)
            lines.append("| " + " | ".join(str(c) for c in row) + " |")
        lines += [
            "",
            "| backend | stage | median | p90 | p99 | min | first call | img/s |",
            "|---" * 8 + "|",
        ]
        for r in results:
            for stage, s in r["stages"].items():
                ips = f"{s['images_per_s']:.3f}" if s.get("images_per_s") else "-"
                lines.append(
                    f"| {r['backend']} | {stage} | {_ms(s['median_ms'])} | {_ms(s['p90_ms'])} | {_ms(s['p99_ms'])} | "
                    f"{_ms(s['min_ms'])} | {_ms(s['first_call_ms'])} | {ips} |"
                )
        lines += ["", "| backend | denoiser | stages ran on | peak memory over the timed runs |", "|---" * 4 + "|"]
        for r in results:
            if r["stages"]:
                ran = ", ".join(f"{k}: {v}" for k, v in (r.get("backends") or {}).items())
                mem = f"{_mem(r.get('peak_memory_bytes'))} ({r.get('memory_kind') or '-'})"
                lines.append(f"| {r['backend']} | {r.get('denoiser') or '-'} | {ran} | {mem} |")
        notes = [f"- {r['backend']}: {'; '.join(r['notes'])}" for r in results if r["notes"]]
        notes += [
            f"- {r['backend']}: {stage} not measured: {why}"
            for r in results
            for stage, why in (r.get("missing_stages") or {}).items()
        ]
        if notes:
            lines += [""] + notes
    return "\n".join(lines) + "\n"


def write_json(result: dict, path: Path | str) -> Path:
    return write_atomic(path, json.dumps(result, indent=2, default=str))


def collate(files: list[Path | str], stages: tuple[str, ...] = ("step", "loop", "e2e")) -> str:
    """One markdown table from several result files: a row per (machine, case, backend)."""
    lines = [
        "| device | model | size | steps | precision | backend | "
        + " | ".join(f"{STAGE_LABELS[s]} (median)" for s in stages)
        + " | step speed-up vs diffusers | step TFLOP/s | load | commit |",
        "|---" * (len(stages) + 10) + "|",
    ]
    for f in files:
        result = json.loads(Path(f).read_text())
        m = result["machine"]
        gpu = m.get("gpu")
        dev = gpu["name"] if gpu else f"{(m.get('cpu') or {}).get('model')} x{(m.get('cpu') or {}).get('cores_used')}"
        commit = ((m.get("git") or {}).get("commit") or "?")[:8]
        for case, results in _case_groups(result):
            for r in results:
                if not r["stages"]:
                    continue
                cells = [_ms(r["stages"][s]["median_ms"]) if s in r["stages"] else "-" for s in stages]
                speed = r.get("speedup_vs_baseline", {}).get("step")
                tf = (r["stages"].get("step") or {}).get("tflops")
                lines.append(
                    f"| {dev} | {case['model']} | {case['height']}x{case['width']} | {case['steps']} | "
                    f"{case['precision']} | {r['backend']} | " + " | ".join(cells) + f" | "
                    f"{'-' if speed is None else f'{speed:.2f}x'} | {'-' if not tf else f'{tf:.2f}'} | "
                    f"{m.get('loadavg')} | {commit} |"
                )
    return "\n".join(lines) + "\n"
