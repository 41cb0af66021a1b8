"""Which layers cost the per-step error: the int8 and bf16 recipes simulated in PyTorch at 0.6B/512² (a diagnostic,
not a benchmark; ~25 minutes on 2 cores).

The fp32 pipeline records a held-out request (seed 7, 20 steps) and 2 calibration prompts; int8 is simulated as
ONNX Runtime's recipe does it (per-tensor asymmetric uint8 activations from the min/max of 16 calibration samples,
per-output-channel symmetric int8 weights, the default exclusions), with groups of layers left in fp32 in turn;
bf16 as rounding only the GEMMs' inputs and weights (everything else fp32), and as PyTorch's whole model in bf16.
Prints the transformer output's relative L2 error against fp32 at 4 of the 20 steps. Usage:
``python benchmarks/quant_sim.py [--clip] [--model sana-tiny]`` (``--clip``: percentile activation ranges too;
``--model``: another preset, e.g. a quick check on sana-tiny).
"""

import fnmatch
import sys
import time
import types

import torch
import torch.nn as nn

from sana_deploy.bench.case import BenchCase
from sana_deploy.bench.harness import load_case_components
from sana_deploy.bench.quality import rel_l2
from sana_deploy.export.quantized import DEFAULT_EXCLUDE
from sana_deploy.models.transformer import MixFFN
from sana_deploy.plugins.mix_ffn.ref import dw_glu_ref
from sana_deploy.quantize.calibrate import record_calibration
from sana_deploy.quantize.prompts import DEFAULT_PROMPTS

torch.manual_seed(0)
HELD = "a lighthouse on a cliff above a stormy sea at sunset, oil painting"
STEPS = 20
EVAL = [0, 6, 13, 19]
MODEL = sys.argv[sys.argv.index("--model") + 1] if "--model" in sys.argv else "sana-0.6b-512"
case = BenchCase(MODEL, 512, STEPS, 4.5, "fp32", "cpu", seed=0, text_encoder_layers=13)
comps = load_case_components(case)
model = comps.transformer.eval()
t0 = time.time()
held = record_calibration(comps, [HELD], STEPS, 512, seed=7)
cal = record_calibration(comps, list(DEFAULT_PROMPTS[:2]), STEPS, 512, seed=0)
print(f"recorded in {time.time() - t0:.0f}s", flush=True)
del comps.text_encoder
# 16 calibration samples spread over prompts and steps, as the tool gets
idx = [round(i * (len(cal.steps) - 1) / 15) for i in range(16)]
cal_steps = [cal.steps[i] for i in idx]

STATE = {
    "outputs": False,
    "mode": "off",
    "ranges": {},
    "quant": set(),
    "clip": "--clip" in sys.argv,
    "fmt": "int8",
    "bits": 8,
}


def fq_act(name, x):
    m = STATE["mode"]
    if m == "observe":
        if STATE["clip"]:  # a subsample of the values, for percentile ranges
            STATE["ranges"].setdefault(name, []).append(x.detach().float().flatten()[:: max(1, x.numel() // 2_000_000)])
        lo, hi = STATE["ranges"].setdefault(name + "#mm", [0.0, 0.0])
        STATE["ranges"][name + "#mm"] = [min(lo, float(x.min())), max(hi, float(x.max()))]
        return x
    if m == "quant" and name in STATE["quant"]:
        if STATE["fmt"] == "bf16":
            return x.to(torch.bfloat16).float()
        lo, hi = STATE["lohi"][name]
        scale = max(hi - lo, 1e-12) / 255
        zp = round(-lo / scale)
        q = torch.clamp(torch.round(x / scale) + zp, 0, 255)
        return (q - zp) * scale
    return x


def fq_w(w):
    if STATE["fmt"] == "bf16":
        return w.to(torch.bfloat16).float()
    top = 2 ** (STATE["bits"] - 1) - 1  # 127, or 63 for 7-bit weights
    s = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / top
    return torch.clamp(torch.round(w / s), -top, top) * s


orig_w = {}
for n, mod in model.named_modules():
    if isinstance(mod, nn.Linear):
        orig_w[n] = mod.weight.data.clone()

        def pre(mod, args, n=n):
            return (fq_act(n, args[0]),)

        def post(mod, args, out, n=n):
            if STATE["mode"] == "off" or not STATE["outputs"] and STATE["mode"] == "quant":
                return out
            b = 0 if mod.bias is None else mod.bias
            return fq_act(n + "#out", out - b) + b

        mod.register_forward_pre_hook(pre)
        mod.register_forward_hook(post)
    if isinstance(mod, MixFFN):
        orig_w[n + ".conv_inverted"] = mod.conv_inverted.weight.data.clone()
        orig_w[n + ".conv_point"] = mod.conv_point.weight.data.clone()

        def fwd(self, x, n=n):
            xi = fq_act(n + ".conv_inverted", x)
            h = xi @ self.conv_inverted.weight.flatten(1).T
            if STATE["outputs"] or STATE["mode"] == "observe":
                h = fq_act(n + ".conv_inverted#out", h)
            g = dw_glu_ref(h + self.conv_inverted.bias, self.conv_depth.weight, self.conv_depth.bias)
            g = fq_act(n + ".conv_point", g)
            y = g @ self.conv_point.weight.flatten(1).T
            if STATE["outputs"] or STATE["mode"] == "observe":
                y = fq_act(n + ".conv_point#out", y)
            return y

        mod.forward = types.MethodType(fwd, mod)


def run(step, text_kv_cache):
    return model.forward_cached(
        step["latent"], step["timestep"], text_kv_cache, held.texts[0]["encoder_attention_mask"]
    ).float()


@torch.no_grad()
def observe():
    STATE["mode"] = "observe"
    for s in cal_steps:
        t = cal.texts[s["prompt"]]
        kv = model.text_kv(t["encoder_hidden_states"])
        model.forward_cached(s["latent"], s["timestep"], kv, t["encoder_attention_mask"])
    STATE["mode"] = "off"


@torch.no_grad()
def evaluate(label, quant, fmt="int8", clip=None, outputs=False, bits=8):
    STATE["fmt"], STATE["outputs"], STATE["bits"] = fmt, outputs, bits
    STATE["quant"] = set(quant) | ({n + "#out" for n in quant} if outputs else set())
    lohi = {}
    for n in STATE["quant"]:
        lo, hi = STATE["ranges"][n + "#mm"]
        if clip is not None and STATE["ranges"].get(n):
            allv = torch.cat(STATE["ranges"][n])
            lo = min(0.0, float(torch.quantile(allv[:: max(1, allv.numel() // 8_000_000)], 1 - clip)))
            hi = max(0.0, float(torch.quantile(allv[:: max(1, allv.numel() // 8_000_000)], clip)))
        lohi[n] = (lo, hi)
    STATE["lohi"] = lohi
    for n, w in orig_w.items():
        mod = model.get_submodule(n)
        mod.weight.data.copy_(fq_w(w.flatten(1)).reshape(w.shape) if n in quant else w)
    STATE["mode"] = "quant"
    kv = model.text_kv(held.texts[0]["encoder_hidden_states"])
    errs = [rel_l2(run(held.steps[i], kv), held.steps[i]["noise_pred"]) for i in EVAL]
    STATE["mode"] = "off"
    for n, w in orig_w.items():
        model.get_submodule(n).weight.data.copy_(w)
    print(f"{label:50s} max {max(errs):.2e} per step {' '.join(f'{e:.2e}' for e in errs)}", flush=True)
    return errs


observe()
# the recipe's default exclusions, matched as the layer plan matches them (module paths under "model.")
allq = [n for n in orig_w if not any(fnmatch.fnmatchcase(f"model.{n}", p) for p in DEFAULT_EXCLUDE)]
print(len(allq), "quantizable layers", flush=True)
evaluate("fp32 (sanity, ~0)", [])
evaluate("bf16 GEMM inputs+weights only (rest fp32)", allq, "bf16")
evaluate("int8 default recipe", allq)
evaluate("int8 default, products Q/DQ too (placement 1)", allq, outputs=True)
evaluate("int8 default, 7-bit weights", allq, bits=7)
evaluate(
    "int8 minus attn2.to_k/to_v (caption K/V, once a request)",
    [n for n in allq if not n.endswith(("attn2.to_k", "attn2.to_v"))],
)
evaluate(
    "int8 minus attn2.to_q/to_out (per step)", [n for n in allq if ".attn2.to_q" not in n and ".attn2.to_out" not in n]
)
evaluate("int8 minus ff.conv_point", [n for n in allq if not n.endswith("conv_point")])
evaluate("int8 minus ff.conv_inverted", [n for n in allq if not n.endswith("conv_inverted")])
evaluate("int8 minus attn2.*", [n for n in allq if ".attn2." not in n])
evaluate("int8 minus attn1.*", [n for n in allq if ".attn1." not in n])
evaluate("int8 minus to_out", [n for n in allq if "to_out" not in n])
evaluate(
    "int8 minus blocks 0,27",
    [n for n in allq if not (n.startswith("transformer_blocks.0.") or n.startswith("transformer_blocks.27."))],
)
if STATE["clip"]:
    for c in (0.9999, 0.99999):
        evaluate(f"int8 default, percentile {c}", allq, clip=c)
# whole model in bf16 (torch): weights, activations, norms
m16 = model.to(torch.bfloat16)
STATE["mode"] = "off"
with torch.no_grad():
    kv = m16.text_kv(held.texts[0]["encoder_hidden_states"].bfloat16())
    errs = [
        rel_l2(
            m16.forward_cached(
                held.steps[i]["latent"].bfloat16(),
                held.steps[i]["timestep"],
                kv,
                held.texts[0]["encoder_attention_mask"],
            ).float(),
            held.steps[i]["noise_pred"],
        )
        for i in EVAL
    ]
print(f"{'torch bf16 whole model':50s} max {max(errs):.2e} per step {' '.join(f'{e:.2e}' for e in errs)}", flush=True)
