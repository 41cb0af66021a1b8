"""CPU comparison for Sana-Sprint: Sprint in 2 steps vs the base model in 20 steps (both through sana-deploy's
ONNX Runtime pipeline) vs diffusers' ``SanaSprintPipeline`` eager, end to end and per stage, in one run.

Two ``sana_deploy.bench.bench`` calls on one machine, one after the other: the Sprint preset (its own 2 steps,
guidance 4.5 as the transformer's guidance input, diffusers' SanaSprintPipeline eager measured in the same,
interleaved call) and the base preset of the same size (20 steps of Flow-DPM-Solver++ with CFG 4.5, a batch of 2).
Seeded random weights at the real dimensions (speed does not depend on weight values; nothing is downloaded).
The result JSON holds both bench results and a summary: per stage, the median milliseconds of each contender, the
share of the end-to-end time each stage takes, and the speed-ups (diffusers Sprint / ours Sprint; ours base /
ours Sprint).

The 0.6B case at 1024² (the numbers docs/VARIANTS.md reports) -- heavy: run it on a machine of its own:

    python benchmarks/bench_sprint_cpu.py --sprint-model sana-sprint-0.6b-1024 --base-model sana-0.6b-1024 \\
        --profile 1024 --text-encoder-layers 13 --warmup 1 --runs 3

``--text-encoder-layers 13`` (half of Gemma-2's 26 layers, at the real width) keeps the fp32 text encoder in memory
next to the exports and diffusers' copy, as the other CPU result does; pass 26 for the whole Gemma-2. The tiny
check of the plumbing (seconds): ``python benchmarks/bench_sprint_cpu.py --tiny``. If the base half is killed for
memory, the same command with ``--resume`` keeps the Sprint half from the JSON and runs the base half in a fresh
process (the result then says so in ``note``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sana_deploy.bench import bench
from sana_deploy.bench.case import STAGES
from sana_deploy.bench.report import markdown, text_table, write_atomic

RESULTS = Path(__file__).resolve().parent / "results"


def _median(entry: dict, stage: str) -> float | None:
    got = entry.get("stages", {}).get(stage)
    return None if not got else got.get("median_ms")


def summary(sprint: dict, base: dict) -> dict:
    """Per contender and stage: median ms, share of end to end; and the speed-ups the comparison is about."""
    rows = []
    for label, result in (("sprint", sprint), ("base", base)):
        case = result["cases"][0]
        for entry in result["results"]:
            if entry["status"] != "ok":
                rows.append(
                    {"run": label, "backend": entry["backend"], "status": entry["status"], "reason": entry["reason"]}
                )
                continue
            ms = {s: _median(entry, s) for s in STAGES}
            e2e = ms.get("e2e")
            share = {s: (v / e2e if v is not None and e2e else None) for s, v in ms.items() if s not in ("e2e", "step")}
            rows.append({
                "run": label, "model": case["model"], "steps": case["steps"], "backend": entry["backend"],
                "status": "ok", "median_ms": ms, "share_of_e2e": share,
            })  # fmt: skip

    def e2e(run: str, backend: str) -> float | None:
        for r in rows:
            if r["run"] == run and r["backend"] == backend and r["status"] == "ok":
                return r["median_ms"].get("e2e")
        return None

    ours_sprint, ours_base = e2e("sprint", "onnxruntime"), e2e("base", "onnxruntime")
    theirs = e2e("sprint", "diffusers-eager")
    speedups = {
        "sprint_ours_vs_diffusers_sprint_eager": theirs / ours_sprint if theirs and ours_sprint else None,
        "sprint_ours_vs_base_ours": ours_base / ours_sprint if ours_base and ours_sprint else None,
    }
    for r in rows:  # every other sana-deploy backend of the Sprint run, against the same baseline
        if r["run"] == "sprint" and r["status"] == "ok" and r["backend"] not in ("onnxruntime", "diffusers-eager"):
            got = r["median_ms"].get("e2e")
            speedups[f"sprint_{r['backend']}_vs_diffusers_sprint_eager"] = theirs / got if theirs and got else None
    return {"rows": rows, "speedups": speedups, "goal": "sprint_ours_vs_diffusers_sprint_eager >= 1.5"}


def summary_markdown(s: dict) -> str:
    lines = [
        "| run | model | steps | backend | " + " | ".join(STAGES) + " | VAE share of e2e |",
        "|---" * (5 + len(STAGES)) + "|",
    ]
    for r in s["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['run']} | | | {r['backend']} | {r['status']}: {r['reason']} |")
            continue
        cells = [f"{r['median_ms'][st]:.0f}" if r["median_ms"].get(st) is not None else "" for st in STAGES]
        vae = r["share_of_e2e"].get("vae_decode")
        lines.append(
            f"| {r['run']} | {r['model']} | {r['steps']} | {r['backend']} | " + " | ".join(cells)
            + f" | {'' if vae is None else f'{vae:.0%}'} |"
        )  # fmt: skip
    lines.append("")
    for k, v in s["speedups"].items():
        lines.append(f"- {k}: {'n/a' if v is None else f'{v:.2f}x'}")
    return "\n".join(lines) + "\n"


def resumed_sprint(path: Path, args: argparse.Namespace) -> dict:
    """The Sprint half of an earlier process of this command, from its JSON (refused if it is another case)."""
    if not path.is_file():
        raise SystemExit(f"--resume: {path} does not exist; run without --resume first.")
    sprint = json.loads(path.read_text()).get("sprint")
    case = (sprint or {}).get("cases", [{}])[0]
    if not sprint or case.get("model") != args.sprint_model or case.get("steps") != args.sprint_steps:
        raise SystemExit(f"--resume: {path} holds no Sprint half of {args.sprint_model} in {args.sprint_steps} steps.")
    return sprint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Sana-Sprint vs base Sana vs diffusers' SanaSprintPipeline, on the CPU")
    p.add_argument("--sprint-model", default="sana-sprint-0.6b-1024")
    p.add_argument("--base-model", default="sana-0.6b-1024")
    p.add_argument("--profile", default="1024", help="bucket base; one profile x profile image")
    p.add_argument("--sprint-steps", type=int, default=2)
    p.add_argument("--base-steps", type=int, default=20)
    p.add_argument("--backends", default="onnxruntime", help="sana-deploy backends of both runs")
    p.add_argument(
        "--sprint-backends", default=None,
        help="backends of the Sprint run (default: --backends); e.g. add openvino[precision=bf16] there only",
    )  # fmt: skip
    p.add_argument(
        "--sequential", action="store_true",
        help="time one contender after the other instead of round-robin: one pipeline in memory at a time (at "
        "1024² the interleaved run holds diffusers' and ours together, over 24 GB at 0.6B)",
    )  # fmt: skip
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--text-encoder-layers", type=int, default=None)
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--tag", default="")
    p.add_argument("--tiny", action="store_true", help="plumbing check: sana-sprint-tiny vs sana-tiny at 512, 1 run")
    p.add_argument(
        "--resume", action="store_true",
        help="keep the Sprint half already written to this run's JSON (same models, profile and tag) and run only "
        "the base half, in this fresh process (e.g. after the base half was killed for memory)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.tiny:
        args.sprint_model, args.base_model, args.profile = "sana-sprint-tiny", "sana-tiny", "512"
        args.warmup, args.runs, args.base_steps = 0, 1, 4
    common = {
        "profiles": args.profile, "backends": args.backends, "warmup": args.warmup, "runs": args.runs,
        "precision": "fp32", "device": "cpu", "text_encoder_layers": args.text_encoder_layers,
        "work_dir": args.work_dir, "interleave": not args.sequential,
    }  # fmt: skip
    sprint_common = {**common, "backends": args.sprint_backends or args.backends}
    name = f"cpu-sprint-{args.sprint_model}-vs-{args.base_model}-{args.profile}{'-' + args.tag if args.tag else ''}"
    stem = args.out_dir / name
    args.out_dir.mkdir(parents=True, exist_ok=True)
    resumed = resumed_sprint(stem.with_name(name + ".json"), args) if args.resume else None
    sprint = resumed or bench(model=args.sprint_model, steps=args.sprint_steps, baseline=True, **sprint_common)
    print(text_table(sprint))
    # kept now: the base run (20 CFG steps, batch 2) needs more memory, and a kill there must not lose this one
    partial = {"format": "sprint-cpu-comparison/1", "summary": None, "sprint": sprint, "base": None}
    print(f"wrote {write_atomic(stem.with_name(name + '.json'), json.dumps(partial, indent=2, default=str))}")
    base = bench(model=args.base_model, steps=args.base_steps, baseline=False, **common)
    print(text_table(base))
    s = summary(sprint, base)
    table = summary_markdown(s)
    print(table)
    data = {"format": "sprint-cpu-comparison/1", "summary": s, "sprint": sprint, "base": base}
    if resumed:
        data["note"] = "base half run by --resume in a second process, after the Sprint half of the same command"
    print(f"wrote {write_atomic(stem.with_name(name + '.json'), json.dumps(data, indent=2, default=str))}")
    md = f"# {name}\n\n## Summary\n\n{table}\n## Sprint run\n\n{markdown(sprint)}\n## Base run\n\n{markdown(base)}"
    print(f"wrote {write_atomic(stem.with_name(name + '.md'), md)}")
    failed = [r for r in s["rows"] if r["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
