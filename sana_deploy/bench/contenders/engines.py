"""``aoti``, ``tensorrt``, ``tensorrt-rtx``: the product pipeline over engines
(``SanaDeployPipeline.from_engines``), with the case's profile built in the prepare step by
``sana_deploy.engines.build_engines`` (the build time is the backend's ``build_s``).

Option ``split`` (default 1): build and run the caption K/V split, or (0) the one-graph transformer.

The DC-AE is built in a second ``build_engines`` call. AOTInductor on the CPU refuses the dynamic-shape DC-AE at
profiles 512 and 1024 (its self-check finds Inductor's miscompile), so on a refusal the DC-AE is built with a static
profile (the case's exact size, batch 1..2), which is what a user of ``build --static`` gets. Where even that cannot
be built, the backend's requests stop at the latents and its ``vae_decode`` and ``e2e`` stages are reported as
missing with the reason.
"""

from __future__ import annotations

import torch

from sana_deploy.bench.case import DECODE_STAGES, BenchCase
from sana_deploy.bench.contenders.base import CaseContext, PipelineContender, Prepared
from sana_deploy.contract import pipeline_components
from sana_deploy.errors import SanaDeployError, fail
from sana_deploy.models.fp8 import fp8_unavailable
from sana_deploy.runtime.pipeline import SanaDeployPipeline


class EngineContender(PipelineContender):
    name = "tensorrt"
    description = "SanaDeployPipeline over TensorRT engines with the sana plugins"
    option_names = ("split",)
    needs_cuda = True

    @property
    def backend(self) -> str:
        """The engine backend built and run (the contender's name unless a subclass says otherwise)."""
        return self.name

    def engine_precision(self, case: BenchCase) -> str:
        """The precision the engines are built and looked up at (the case's unless an option says otherwise)."""
        return case.precision

    def unavailable(self, case: BenchCase) -> str | None:
        if self.needs_cuda and (not case.device.startswith("cuda") or not torch.cuda.is_available()):
            return "needs a CUDA GPU (run with --device cuda on a machine with one)"
        from sana_deploy.engines import get_backend

        try:
            get_backend(self.backend)  # installed? (its message says what to install)
        except SanaDeployError as exc:
            return str(exc)
        return None

    def make_pipeline(self, ctx: CaseContext) -> tuple[SanaDeployPipeline, Prepared]:
        from sana_deploy.engines import build_engines

        case = ctx.case
        model, random_weights = ctx.engine_model()
        engine_dir = ctx.work_dir / "engines"
        common = dict(
            model=model,
            profiles=[case.profile],
            backend=self.backend,
            precision=self.engine_precision(case),
            max_batch=2 if case.transformer_batch > 2 else 1,  # CFG + PAG: 3 rows a step
            engine_dir=engine_dir,
            export_root=ctx.export_root,
            random_weights=random_weights,
            progress=False,
            kv_cache=self.split,
            controlnet=case.controlnet,
            loaded=ctx.build_comps,
        )
        # what the pipeline runs (the DC-AE apart, below) and the variant's graphs, built here rather than on the
        # first call
        base = pipeline_components(self.split) + case.variant_graphs(self.split)
        names = tuple(c for c in dict.fromkeys(base) if c != "vae")
        entries = list(build_engines(components=names, **common))
        missing: dict[str, str] = {}
        notes = [f"{self.name} engines, profile {case.profile}, in {engine_dir}"]
        if case.decodes:
            try:
                try:
                    entries += build_engines(components=("vae",), **common)
                except SanaDeployError as exc:
                    notes.append(f"dynamic DC-AE refused ({str(exc).splitlines()[0][:160]}); built it --static")
                    entries += build_engines(components=("vae",), static=True, **common)
            except SanaDeployError as exc:
                why = f"no {self.name} DC-AE for profile {case.profile} here: {str(exc).splitlines()[0].rstrip('.')}"
                missing = {s: why for s in DECODE_STAGES}
                notes.append(f"{why}; requests stop at the latents (vae_decode and e2e not measured)")
        pipe = SanaDeployPipeline.from_engines(
            engine_dir,
            model,
            backend=self.backend,
            precision=self.engine_precision(case),
            on_miss="build",
            random_weights=random_weights,
            device=case.device,
            build_kwargs={"export_root": str(ctx.export_root)},
            kv_cache=self.split,
            controlnet=case.controlnet,
        )
        cached = all(getattr(e, "hit", False) for e in entries)
        return pipe, Prepared(notes=notes, build_cached=cached, missing=missing)


class AotiContender(EngineContender):
    """Option ``precision=fp8``: packages with the transformer blocks' linear layers in FP8 (the rest bf16; a CUDA
    GPU of compute capability 8.9+), built with ``build --backend aoti --quantize fp8``."""

    name = "aoti"
    description = "SanaDeployPipeline over AOTInductor packages"
    needs_cuda = False
    option_names = ("split", "precision")

    def validate(self) -> None:
        super().validate()
        if self.options.get("precision") not in (None, "fp8"):
            fail(f"aoti option precision={self.options['precision']!r}: only fp8 (else the case's precision).")

    def engine_precision(self, case: BenchCase) -> str:
        return self.options.get("precision", case.precision)

    def unavailable(self, case: BenchCase) -> str | None:
        if self.options.get("precision") == "fp8" and (why := fp8_unavailable(case.device)):
            return why
        return super().unavailable(case)


class RtxContender(EngineContender):
    name = "tensorrt-rtx"
    description = "SanaDeployPipeline over TensorRT-RTX engines (plugin-less: sana functions inlined)"
