"""``onnxruntime``: our ONNX exports (``sana`` local functions) in ONNX Runtime's CPU provider.

Options (``onnxruntime[opt=all,threads=2,spin=1,split=1]``):
  opt      graph optimisation level: disable, basic, extended, all (default all)
  threads  intra-op threads (default: the cores this process may use); inter: inter-op threads (default 1)
  spin     ``session.intra_op.allow_spinning`` 1/0 (default 1)
  mode     execution mode seq/par (default seq)
  split    1: caption K/V once per request (``transformer_text``) + cached step graph (``transformer_cached``);
           0: the one-graph ``transformer`` (default 1)
  profile  1: write ONNX Runtime's profiling JSON for every session into the work folder
The export is the build step: it is cached under the work folder, keyed by the weights' hash.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sana_deploy.bench.backends.base import Backend, Prepared, runner_stages
from sana_deploy.bench.case import BenchCase, CaseInputs
from sana_deploy.errors import fail
from sana_deploy.export import ensure_export
from sana_deploy.models.components import SanaComponents
from sana_deploy.runtime.ort import usable_cores

_LEVELS = ("disable", "basic", "extended", "all")
_OFF = ("0", "off", "false", "no")


def session_options(options: dict[str, str], profile_prefix: str | None = None):
    import onnxruntime as ort

    level = options.get("opt", "all")
    if level not in _LEVELS:
        fail(f"onnxruntime option opt={level!r}: choose one of {', '.join(_LEVELS)}.")
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    so.intra_op_num_threads = int(options.get("threads", usable_cores()))
    so.inter_op_num_threads = int(options.get("inter", 1))
    so.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if options.get("mode", "seq") == "par" else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    so.add_session_config_entry("session.intra_op.allow_spinning", "0" if options.get("spin") in _OFF else "1")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


class OrtRunners:
    def __init__(self, sessions: dict, split: bool) -> None:
        self.sessions, self.split = sessions, split
        self.device = torch.device("cpu")

    def _run(self, name: str, **inputs: torch.Tensor) -> torch.Tensor:
        feeds = {k: np.ascontiguousarray(v.numpy()) for k, v in inputs.items()}
        return torch.from_numpy(self.sessions[name].run(None, feeds)[0])

    def encode(self, input_ids, attention_mask):
        return self._run("text_encoder", input_ids=input_ids, attention_mask=attention_mask)

    def text_kv(self, prompt_embeds):
        if not self.split:
            return None
        return self._run("transformer_text", encoder_hidden_states=prompt_embeds.float())

    def step(self, latent, timestep, text, mask):
        if self.split:
            return self._run(
                "transformer_cached", latent=latent, timestep=timestep, text_kv=text, encoder_attention_mask=mask
            )
        return self._run(
            "transformer", latent=latent, timestep=timestep, encoder_hidden_states=text, encoder_attention_mask=mask
        )

    def decode(self, latent):
        return self._run("vae", latent=latent.float())


class OrtBackend(Backend):
    name = "onnxruntime"
    description = "our ONNX export in ONNX Runtime (CPU provider)"
    option_names = ("opt", "threads", "inter", "spin", "mode", "split", "profile")

    def unavailable(self, case: BenchCase) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        if case.device != "cpu":
            return "benchmarked on the CPU provider only; on a GPU use tensorrt / tensorrt-rtx"
        if case.precision != "fp32":
            return f"ONNX Runtime's CPU provider has no {case.precision} kernels for these graphs; use fp32"
        return None

    def prepare(self, comps: SanaComponents, case: BenchCase, inputs: CaseInputs, workdir: Path) -> Prepared:
        import onnxruntime as ort

        split = self.options.get("split", "1") not in _OFF
        needed = []
        if {"text_encode", "e2e"} & set(case.stages):
            needed.append("text_encoder")
        if {"step", "loop", "e2e"} & set(case.stages):
            needed += ["transformer_text", "transformer_cached"] if split else ["transformer"]
        if {"vae_decode", "e2e"} & set(case.stages):
            needed.append("vae")
        root = workdir / "export" / comps.model_id.replace(os.sep, "_")
        profile = self.options.get("profile", "0") not in _OFF
        sessions, all_cached = {}, True
        for component in needed:
            path, cached = ensure_export(comps, component, case.precision, root)
            all_cached &= cached
            prefix = str(workdir / f"ort-profile-{component}") if profile else None
            sessions[component] = ort.InferenceSession(
                str(path), session_options(self.options, prefix), providers=["CPUExecutionProvider"]
            )
        runners = OrtRunners(sessions, split)
        so = session_options(self.options)
        notes = [
            f"opt={self.options.get('opt', 'all')} intra={so.intra_op_num_threads} inter={so.inter_op_num_threads} "
            f"spin={self.options.get('spin', '1')}",
            "caption K/V once per request" if split else "one-graph transformer",
        ]

        def release() -> None:
            if profile:
                for name, s in sessions.items():
                    notes.append(f"profile {name}: {s.end_profiling()}")
            sessions.clear()

        return Prepared(
            runner_stages(runners, comps, case, inputs),
            notes,
            caption_kv_in_step=not split,
            build_cached=all_cached,
            release=release,
        )
