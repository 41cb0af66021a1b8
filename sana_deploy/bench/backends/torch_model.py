"""``torch``: sana-deploy's own PyTorch model, eager, with our kernels (Triton on a GPU where available,
the reference ops on CPU), the caption K/V computed once per request, and the benchmark's pipeline."""

from __future__ import annotations

from pathlib import Path

import torch

from sana_deploy.bench.backends.base import Backend, Prepared, runner_stages
from sana_deploy.bench.case import BenchCase, CaseInputs
from sana_deploy.models.components import SanaComponents
from sana_deploy.plugins.registry import use_kernels


def _triton_usable() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class TorchRunners:
    """Eager PyTorch modules; ``split`` runs ``text_kv`` once and ``forward_cached`` per step."""

    def __init__(self, comps: SanaComponents, device: torch.device, kernels: str, split: bool) -> None:
        self.comps, self.device, self.kernels, self.split = comps, device, kernels, split

    def _dtype(self, module) -> torch.dtype:
        return next(module.parameters()).dtype

    @torch.inference_mode()
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        te = self.comps.text_encoder
        return te(input_ids=input_ids, attention_mask=attention_mask)[0].float()

    @torch.inference_mode()
    def text_kv(self, prompt_embeds: torch.Tensor) -> torch.Tensor | None:
        if not self.split:
            return None
        with use_kernels(self.kernels):
            return self.comps.transformer.text_kv(prompt_embeds)

    @torch.inference_mode()
    def step(self, latent, timestep, text, mask) -> torch.Tensor:
        model = self.comps.transformer
        with use_kernels(self.kernels):
            if self.split:
                return model.forward_cached(latent, timestep, text, mask).float()
            return model(latent, timestep, text, mask).float()

    @torch.inference_mode()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        vae = self.comps.vae
        return vae.decode(latent.to(self._dtype(vae)), return_dict=False)[0].float()


class TorchBackend(Backend):
    name = "torch"
    description = "sana-deploy's PyTorch model, eager, our kernels, caption K/V once per request"
    option_names = ("kernels", "split")

    def prepare(self, comps: SanaComponents, case: BenchCase, inputs: CaseInputs, workdir: Path) -> Prepared:
        device = torch.device(case.device)
        default = "triton" if _triton_usable() else "reference"
        kernels = self.options.get("kernels", default)
        split = self.options.get("split", "1") not in ("0", "off", "false", "no")
        runners = TorchRunners(comps, device, kernels, split)
        notes = [f"kernels={kernels}", "caption K/V once per request" if split else "one-graph transformer"]
        return Prepared(runner_stages(runners, comps, case, inputs), notes, caption_kv_in_step=not split)
