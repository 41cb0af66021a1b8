"""What a benchmark backend is: a name, options, a reason it cannot run here, and a ``prepare`` step that does the
build/compile/export work (timed apart) and returns one callable that runs the case's request once.

Every backend but the diffusers baselines is a factory of the product's :class:`SanaDeployPipeline`
(:class:`PipelineContender`): one timed run is one ``pipe(...)`` call, and the stage times are the pipeline's own
(``SanaDeployOutput.seconds`` and ``.step_seconds``). Nothing in the benchmark runs a denoising step itself.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from sana_deploy.bench.case import DECODE_STAGES, BenchCase
from sana_deploy.contract import model_dirname
from sana_deploy.errors import fail
from sana_deploy.models.components import SanaComponents
from sana_deploy.runtime.pipeline import SanaDeployOutput, SanaDeployPipeline

_OFF = ("0", "off", "false", "no")
_ON = ("1", "on", "true", "yes")


def flag(options: dict[str, str], key: str, default: bool) -> bool:
    """A 1/0 (on/off, true/false) backend option."""
    value = options.get(key)
    if value is None:
        return default
    if value.lower() not in _OFF + _ON:
        fail(f"Contender option {key}={value!r}: use 1 or 0.")
    return value.lower() in _ON


@dataclass
class RunTimes:
    """One timed request: milliseconds per stage, every denoising step's milliseconds, and how it ran."""

    stages_ms: dict[str, float]
    step_ms: list[float]
    denoiser: str = ""  # "split", "one-graph"
    backends: dict[str, str] = field(default_factory=dict)  # stage -> "backend/precision" as it ran


@dataclass
class Prepared:
    """A backend ready to time: ``run()`` performs the case's request once and returns its stage times."""

    run: Callable[[], RunTimes] | None = None
    notes: list[str] = field(default_factory=list)
    build_cached: bool | None = None  # the build work was found in a cache (build time is then a load time)
    release: Callable[[], None] | None = None
    missing: dict[str, str] = field(default_factory=dict)  # stage -> why this backend cannot time it here
    last_output: Any = field(default=None, repr=False)  # the last call's images (or latents); not in the results


@dataclass
class CaseContext:
    """What every backend of one case shares: the case, its loaded (seeded) components and the work folder."""

    case: BenchCase
    comps: SanaComponents
    work_dir: Path
    _engine_model: tuple[str, bool] | None = field(default=None, repr=False)

    @property
    def export_root(self) -> Path:
        """Where this model's ONNX exports go (keyed by weights hash inside, so reruns reuse them)."""
        return self.work_dir / "export" / model_dirname(self.comps.model_id).replace(os.sep, "_")

    @property
    def build_comps(self) -> SanaComponents | None:
        """What a build or calibration reuses instead of loading the model again: on the CPU, ``comps`` (at 0.6B,
        two copies and an engine being optimised do not fit in 24 GB); elsewhere None (the builder loads its own)."""
        return self.comps if self.case.device == "cpu" else None

    def engine_model(self) -> tuple[str, bool]:
        """``(model, random_weights)`` for ``build_engines``/``from_engines``: the same weights as ``comps``.

        A preset at the default seed with its full text encoder is rebuilt identically by name with random
        weights; otherwise (other seed, ``--text-encoder-layers``) the components are written once as a diffusers
        folder under the work folder and the engines are built from that.
        """
        if self._engine_model is None:
            from sana_deploy.models.config import PRESETS
            from sana_deploy.models.loaders import save_diffusers_folder
            from sana_deploy.models.random import DEFAULT_SEED

            case = self.case
            is_preset = case.model.lower() in PRESETS and not Path(case.model).exists()
            if not is_preset:
                self._engine_model = (case.model, False)
            elif case.seed == DEFAULT_SEED and case.text_encoder_layers is None:
                self._engine_model = (case.model, True)
            else:
                te = "full" if case.text_encoder_layers is None else case.text_encoder_layers
                folder = self.work_dir / "models" / f"{case.model}-seed{case.seed}-te{te}"
                if not (folder / "model_index.json").exists():
                    save_diffusers_folder(self.comps, folder)
                self._engine_model = (str(folder), False)
        return self._engine_model


class Contender(ABC):
    """Subclasses set ``name`` and implement :meth:`unavailable` and :meth:`prepare`."""

    name = ""
    description = ""
    option_names: tuple[str, ...] = ()

    def __init__(self, options: dict[str, str] | None = None) -> None:
        self.options = dict(options or {})
        self.validate()

    def validate(self) -> None:
        """Check the option values (called when ``--backends`` is parsed, before anything is built)."""
        return None

    @property
    def label(self) -> str:
        if not self.options:
            return self.name
        return f"{self.name}[{','.join(f'{k}={v}' for k, v in sorted(self.options.items()))}]"

    def unavailable(self, case: BenchCase) -> str | None:
        """Why this backend cannot run ``case`` on this machine, or None when it can."""
        return None

    @abstractmethod
    def prepare(self, ctx: CaseContext) -> Prepared:
        """Do the build/compile/export work and return the callable that runs the request once."""


def pipeline_times(out: SanaDeployOutput) -> RunTimes:
    """The bench stages of one ``SanaDeployPipeline`` call, from the pipeline's own timings:

    ``text_encode`` = ``seconds["text_encoder"]``, ``step`` = the median of the call's ``step_seconds``,
    ``loop`` = ``seconds["denoise"]`` (the caption K/V once + every step), ``vae_decode`` = ``seconds["vae"]``,
    ``e2e`` = ``seconds["total"]`` (only when the call decoded: a latent-only call is not end to end).
    """
    s = out.seconds
    ms = {"text_encode": s["text_encoder"] * 1e3, "loop": s["denoise"] * 1e3}
    if out.step_seconds:
        ms["step"] = median(out.step_seconds) * 1e3
    if "vae" in s:
        ms["vae_decode"] = s["vae"] * 1e3
        ms["e2e"] = s["total"] * 1e3
    return RunTimes(ms, [t * 1e3 for t in out.step_seconds], out.denoiser, dict(out.backends))


def call_pipeline(pipe: SanaDeployPipeline, case: BenchCase, output_type: str | None = None) -> SanaDeployOutput:
    """The case's request, once: fixed prompt, seed, steps and CFG, ``profile``×``profile`` without binning, and
    the variant's options (img2img, ControlNet, PAG) in the same call."""
    return pipe(
        **case.request(),
        **case.variant_request(),
        resolution_binning=False,
        output_type=output_type or case.output_type,
    )


def run_pipeline(pipe: SanaDeployPipeline, case: BenchCase, output_type: str | None = None) -> RunTimes:
    """:func:`call_pipeline`'s stage times."""
    return pipeline_times(call_pipeline(pipe, case, output_type))


class PipelineContender(Contender):
    """A backend that is a factory of :class:`SanaDeployPipeline`; option ``split`` (default 1) chooses the
    caption K/V split (``kv_cache=True``) or the one-graph transformer (``split=0``)."""

    @property
    def split(self) -> bool:
        return flag(self.options, "split", True)

    def validate(self) -> None:
        self.split  # noqa: B018 (raises on a bad value)

    @abstractmethod
    def make_pipeline(self, ctx: CaseContext) -> tuple[SanaDeployPipeline, Prepared]:
        """Build (export, compile, ...) and return the pipeline, with the notes and cache state in ``Prepared``
        (its ``run`` is filled in by :meth:`prepare`)."""

    def prepare(self, ctx: CaseContext) -> Prepared:
        pipe, prepared = self.make_pipeline(ctx)
        pipe.sync_timings = True  # CUDA synchronised at stage and step edges: exact per-stage wall times
        pipe.prompt_cache = None  # every timed request encodes its texts, as the diffusers baseline does
        pipe.set_progress_bar(False)
        output_type = "latent" if any(s in prepared.missing for s in DECODE_STAGES) else None
        held = {"pipe": pipe}  # released (weights, sessions, engines) by ``release``

        def run() -> RunTimes:
            out = call_pipeline(held["pipe"], ctx.case, output_type)
            prepared.last_output = out.images
            return pipeline_times(out)

        prepared.run = run
        prepared.notes.append(f"SanaDeployPipeline, {'caption K/V split' if self.split else 'one-graph transformer'}")
        previous = prepared.release

        def release() -> None:
            if previous is not None:
                previous()
            held.clear()
            prepared.last_output = None

        prepared.release = release
        return prepared


__all__ = [
    "Contender",
    "CaseContext",
    "PipelineContender",
    "Prepared",
    "RunTimes",
    "call_pipeline",
    "flag",
    "pipeline_times",
    "run_pipeline",
]
