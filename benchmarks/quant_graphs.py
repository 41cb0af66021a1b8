"""The int8 recipe's real Q/DQ graphs at 0.6B/512², per solver step: the counterpart of ``quant_sim.py``'s
simulation (a diagnostic, not a benchmark; ~40 minutes on 2 cores, ~20 GB).

The fp32 pipeline records a held-out request (seed 7, 20 steps). ONNX Runtime's quantizer writes the default int8
recipe (2 of the built-in calibration prompts x 20 steps, the default exclusions) with 8-bit and with 7-bit weights.
The step graph runs on the recorded inputs of every step, with the caption K/V from the int8 caption graph or the
recorded fp32 ones, and in two ways:

* ``exact``: ONNX Runtime with its Q/DQ fusions off (``session.disable_quant_qdq``), so every quantized MatMul runs
  as dequantize + fp32 MatMul: the recipe's arithmetic, which is what int8 kernels compute when their integer
  accumulation is exact (VNNI);
* ``kernels``: ONNX Runtime's default optimisations, its int8 kernels on this CPU (which saturate on CPUs without
  VNNI: ``sana_deploy.export.int8_overflow``).

(``kernels`` with 7-bit weights only: 8-bit weights saturate without VNNI.) Prints the transformer output's relative
L2 error against fp32, max / mean over the 20 steps. Usage:
``python benchmarks/quant_graphs.py WORK_DIR [--model sana-tiny]``. The recipes are written where ``bench_quant.py
--work-dir WORK_DIR --tool onnxruntime --calib-prompts 2`` looks for them, so its quality phase reuses them.
"""

import gc
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import sana_deploy.quantize as quantize_mod
from sana_deploy.bench.case import BenchCase
from sana_deploy.bench.contenders import CaseContext
from sana_deploy.bench.harness import load_case_components
from sana_deploy.bench.quality import rel_l2
from sana_deploy.export.int8_overflow import cpu_flags, int8_saturates
from sana_deploy.quantize import quantize_model
from sana_deploy.quantize.calibrate import record_calibration
from sana_deploy.quantize.prompts import DEFAULT_PROMPTS

HELD = "a lighthouse on a cliff above a stormy sea at sunset, oil painting"
STEPS = 20
work = Path(sys.argv[1])
MODEL = sys.argv[sys.argv.index("--model") + 1] if "--model" in sys.argv else "sana-0.6b-512"
case = BenchCase(MODEL, 512, STEPS, 4.5, "fp32", "cpu", seed=0, text_encoder_layers=13)  # as quant_sim.py
comps = load_case_components(case)
t0 = time.time()
held = record_calibration(comps, [HELD], STEPS, 512, seed=7)
print(f"held-out request recorded in {time.time() - t0:.0f}s", flush=True)
_record = quantize_mod.record_calibration
_recorded: dict = {}


def record_once(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 (both recipes calibrate on the same recording)
    key = repr((args[1:], {k: v for k, v in kwargs.items() if k != "progress"}))  # each call has its own logger
    if key not in _recorded:
        _recorded[key] = _record(*args, **kwargs)
    return _recorded[key]


quantize_mod.record_calibration = record_once
recipes = {}
for bits in (8, 7):
    result = quantize_model(
        case.model, "int8", "onnxruntime", list(DEFAULT_PROMPTS[:2]), steps=STEPS, size=512,
        export_root=CaseContext(case, comps, work).export_root, loaded=comps, weight_bits=bits,
        components="transformer-text,transformer-cached",
    )  # fmt: skip
    recipes[bits] = result.folder
    print(f"{bits}-bit weights: {result.recipe.name} in {result.seconds:.0f}s", flush=True)
del comps
_recorded.clear()
gc.collect()
flags = sorted((cpu_flags() or frozenset()) & {"avx2", "avx512_vnni", "avx_vnni", "avx512f"})
print(f"CPU int8 kernels saturate here: {int8_saturates()} ({' '.join(flags)})", flush=True)


def session(path: Path, exact: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    if exact:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


text_feed = next(held.feeds("transformer_text"))
steps = list(held.feeds("transformer_cached"))
runs = [(8, True, True), (8, True, False), (7, True, True), (7, True, False), (7, False, False)]
for bits, exact, text_int8 in runs:  # text_int8: the caption K/V from the int8 caption graph (else fp32, recorded)
    folder = recipes[bits]
    kv = None
    if text_int8:
        text = session(folder / "transformer_text" / "model.onnx", exact)
        kv = text.run(None, text_feed)[0]
        del text
    cached = session(folder / "transformer_cached" / "model.onnx", exact)
    errs = []
    for feed, step in zip(steps, held.steps, strict=True):
        out = cached.run(None, feed if kv is None else {**feed, "text_kv": kv})[0]
        errs.append(rel_l2(torch.from_numpy(out), step["noise_pred"]))
    label = f"{bits}-bit weights, {'exact' if exact else 'kernels'}, {'int8' if text_int8 else 'fp32'} caption K/V"
    print(f"{label:48s} max {max(errs):.2e} mean {np.mean(errs):.2e}  per step " + " ".join(f"{e:.1e}" for e in errs))
    del cached
    gc.collect()
