"""The int8 recipe's real Q/DQ graphs at 0.6B/512², per solver step: the counterpart of ``quant_sim.py``'s
simulation (a diagnostic, not a benchmark; ~40 minutes on 2 cores, ~20 GB).

The fp32 pipeline records a held-out request (seed 7, 20 steps). ONNX Runtime's quantizer writes the default int8
recipe (2 of the built-in calibration prompts x 20 steps, the default exclusions) with 8-bit and with 7-bit weights.
Each graph pair (caption K/V graph, then the step graph) runs on the recorded inputs of every step twice:

* ``exact``: ONNX Runtime with its Q/DQ fusions off (``session.disable_quant_qdq``), so every quantized MatMul runs
  as dequantize + fp32 MatMul: the recipe's arithmetic, which is what int8 kernels compute when their integer
  accumulation is exact (VNNI);
* ``kernels``: ONNX Runtime's default optimisations, its int8 kernels on this CPU (which saturate on CPUs without
  VNNI: ``sana_deploy.export.int8_overflow``).

Prints the transformer output's relative L2 error against fp32, max / mean over the 20 steps. Usage:
``python benchmarks/quant_graphs.py WORK_DIR [--model sana-tiny]``.
"""

import gc
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from sana_deploy.bench.case import BenchCase
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
recipes = {}
for bits in (8, 7):
    result = quantize_model(
        case.model, "int8", "onnxruntime", list(DEFAULT_PROMPTS[:2]), steps=STEPS, size=512,
        export_root=work / "export", loaded=comps, weight_bits=bits,
    )  # fmt: skip
    recipes[bits] = result.folder
    print(f"{bits}-bit weights: {result.recipe.name} in {result.seconds:.0f}s", flush=True)
del comps
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
for bits, folder in recipes.items():
    for exact in (True, False):
        text = session(folder / "transformer_text" / "model.onnx", exact)
        kv = text.run(None, text_feed)[0]
        cached = session(folder / "transformer_cached" / "model.onnx", exact)
        errs = []
        for feed, step in zip(steps, held.steps, strict=True):
            out = cached.run(None, {**feed, "text_kv": kv})[0]
            errs.append(rel_l2(torch.from_numpy(out), step["noise_pred"]))
        label = f"{bits}-bit weights, {'exact' if exact else 'kernels'}"
        print(
            f"{label:28s} max {max(errs):.2e} mean {np.mean(errs):.2e}  per step " + " ".join(f"{e:.1e}" for e in errs)
        )
        del text, cached
        gc.collect()
