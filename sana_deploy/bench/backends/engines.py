"""``tensorrt`` / ``tensorrt-rtx``: engines built and loaded through ``sana_deploy.engines`` (issue 4's
``build_engines`` + ``EngineCache.find`` + ``load_runner``), run by the benchmark's pipeline.

Needs a CUDA GPU and the TensorRT (or TensorRT-RTX) Python package. Engine building is the build step.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from sana_deploy.bench.backends.base import Backend, Prepared, runner_stages
from sana_deploy.bench.case import BenchCase, CaseInputs
from sana_deploy.models.components import SanaComponents


class EngineRunners:
    def __init__(self, runners: dict, device: torch.device) -> None:
        self.runners, self.device = runners, device

    def _out(self, name: str, **inputs: torch.Tensor) -> torch.Tensor:
        return next(iter(self.runners[name](**inputs).values()))

    def encode(self, input_ids, attention_mask):
        return self._out("text_encoder", input_ids=input_ids, attention_mask=attention_mask)

    def text_kv(self, prompt_embeds):
        return None

    def step(self, latent, timestep, text, mask):
        return self._out(
            "transformer", latent=latent, timestep=timestep, encoder_hidden_states=text, encoder_attention_mask=mask
        )

    def decode(self, latent):
        return self._out("vae", latent=latent)


class EngineBackend(Backend):
    name = "tensorrt"
    module = "tensorrt"
    description = "TensorRT engines with the sana plugins (sana_deploy.engines)"

    def unavailable(self, case: BenchCase) -> str | None:
        if not case.device.startswith("cuda") or not torch.cuda.is_available():
            return "needs a CUDA GPU (run with --device cuda on a machine with one)"
        try:
            importlib.import_module(self.module)
        except ImportError:
            return f"the {self.module} Python package is not installed (pip install 'sana-deploy[{self.extra}]')"
        try:
            engines = importlib.import_module("sana_deploy.engines")
        except ImportError as exc:
            return f"sana_deploy.engines is not available: {exc}"
        if not all(hasattr(engines, n) for n in ("build_engines", "EngineCache", "load_runner")):
            return "sana_deploy.engines does not provide build_engines/EngineCache/load_runner yet"
        return None

    extra = "tensorrt"

    def prepare(self, comps: SanaComponents, case: BenchCase, inputs: CaseInputs, workdir: Path) -> Prepared:
        from sana_deploy.engines import EngineCache, build_engines, load_runner
        from sana_deploy.errors import fail
        from sana_deploy.models.config import PRESETS

        engine_dir = workdir / "engines"
        names = ("transformer", "vae", "text_encoder")
        build_engines(
            model=comps.model_id,
            profiles=[max(case.height, case.width)],
            backend=self.name,
            precision=case.precision,
            max_batch=1,
            engine_dir=str(engine_dir),
            components=names,
            export_root=workdir / "export" / comps.model_id.replace("/", "_"),
            random_weights=comps.model_id in PRESETS,
        )
        cache = EngineCache(str(engine_dir))
        runners = {}
        for name in names:
            batch = 1 if name == "vae" else case.transformer_batch
            entry = cache.find(comps.model_id, name, case.height, case.width, batch, self.name, case.precision)
            if entry is None:
                fail(f"No {self.name} engine for {name} at {case.height}x{case.width} batch {batch} after the build.")
            runners[name] = load_runner(entry)
        er = EngineRunners(runners, torch.device(case.device))
        return Prepared(runner_stages(er, comps, case, inputs), [f"{self.name} engines from sana_deploy.engines"])


class EngineRtxBackend(EngineBackend):
    name = "tensorrt-rtx"
    module = "tensorrt_rtx"
    extra = "rtx"
    description = "TensorRT-RTX engines (plugin-less: sana functions inlined)"
