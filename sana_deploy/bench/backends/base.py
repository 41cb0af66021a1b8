"""What a benchmark backend is: a name, options, a reason it cannot run here, and a ``prepare`` step that
does the build/compile/export work (timed separately) and returns one callable per stage."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sana_deploy.bench.case import BenchCase, CaseInputs
from sana_deploy.bench.pipeline import Runners, decode, denoise, encode_prompt, generate
from sana_deploy.models.components import SanaComponents


@dataclass
class Prepared:
    """A backend ready to time: stage name -> zero-argument callable running that stage once."""

    stages: dict[str, Callable[[], object]]
    notes: list[str] = field(default_factory=list)
    caption_kv_in_step: bool = True  # whether the timed step graph recomputes the caption K/V (FLOP count)
    build_cached: bool = False  # the build work was found in the cache (build time is then a load time)
    release: Callable[[], None] | None = None


class Backend(ABC):
    """Subclasses set ``name`` and implement :meth:`unavailable` and :meth:`prepare`."""

    name = ""
    description = ""
    option_names: tuple[str, ...] = ()

    def __init__(self, options: dict[str, str] | None = None) -> None:
        self.options = dict(options or {})

    @property
    def label(self) -> str:
        if not self.options:
            return self.name
        return f"{self.name}[{','.join(f'{k}={v}' for k, v in sorted(self.options.items()))}]"

    def unavailable(self, case: BenchCase) -> str | None:
        """Why this backend cannot run ``case`` on this machine, or None when it can."""
        return None

    @abstractmethod
    def prepare(self, comps: SanaComponents, case: BenchCase, inputs: CaseInputs, workdir: Path) -> Prepared:
        """Do the build/compile/export work and return one callable per stage."""


def runner_stages(runners: Runners, comps: SanaComponents, case: BenchCase, inputs: CaseInputs) -> dict:
    """Stage callables of the benchmark's own pipeline over ``runners`` (all inputs already on the device)."""
    dev = runners.device
    latent = inputs.latent.to(dev)
    step_latent, timestep = inputs.step_latent.to(dev), inputs.timestep.to(dev)
    embeds, mask = inputs.prompt_embeds.to(dev), inputs.attention_mask.to(dev)
    decode_latent = inputs.decode_latent.to(dev)
    shift, scaling = comps.preset.flow_shift, comps.preset.vae_scaling_factor
    cached: dict[str, torch.Tensor | None] = {}

    def step() -> torch.Tensor:
        # The single-step stage times the per-step graph only; the split's caption K/V are per request.
        if "text" not in cached:
            kv = runners.text_kv(embeds)
            cached["text"] = kv if kv is not None else embeds
        return runners.step(step_latent, timestep, cached["text"], mask)

    stages = {
        "text_encode": lambda: encode_prompt(runners, comps.tokenizer, case),
        "step": step,
        "loop": lambda: denoise(runners, case, embeds, mask, latent, shift),
        "vae_decode": lambda: decode(runners, decode_latent, scaling),
        "e2e": lambda: generate(runners, comps.tokenizer, case, latent, shift, scaling),
    }
    return {k: v for k, v in stages.items() if k in case.stages}
