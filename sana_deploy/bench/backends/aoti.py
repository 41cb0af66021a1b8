"""``aoti``: the transformer step graphs and the DC-AE decoder compiled ahead of time with AOTInductor
(``torch.export`` with the ``inline`` kernels, so the package needs no Python-registered op), loaded with
``aoti_load_package``. Static shapes per profile; the packages are the build step, cached in the work folder
by weights hash, shape, dtype and device. The text encoder runs eager (noted in the result).

When ``sana_deploy.engines`` offers an ``aoti`` backend, ``load_runner`` replaces this (issue 4).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sana_deploy.bench.backends.base import Backend, Prepared, runner_stages
from sana_deploy.bench.backends.torch_model import TorchRunners
from sana_deploy.bench.case import BenchCase, CaseInputs
from sana_deploy.models.components import SanaComponents
from sana_deploy.plugins.registry import use_kernels


class _TextKV(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, encoder_hidden_states):
        return self.model.text_kv(encoder_hidden_states)


class _Cached(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, latent, timestep, text_kv, mask):
        return self.model.forward_cached(latent, timestep, text_kv, mask).float()


class _Decoder(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent.to(next(self.vae.parameters()).dtype), return_dict=False)[0].float()


def compile_package(module: nn.Module, args: tuple, path: Path) -> tuple[object, bool]:
    """AOTInductor package of ``module`` at ``args``' shapes (reused when ``path`` exists) and its runner."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        cached = path.exists()
        if not cached:
            with use_kernels("inline"), torch.no_grad():
                program = torch.export.export(module, args)
                tmp = path.with_name(f".tmp-{path.name}")
                torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
                tmp.replace(path)
    return torch._inductor.aoti_load_package(str(path)), cached


class AotiRunners(TorchRunners):
    def __init__(self, comps, device, packages: dict) -> None:
        super().__init__(comps, device, "inline", split=True)
        self.packages = packages

    @torch.inference_mode()
    def text_kv(self, prompt_embeds):
        return self.packages["text_kv"](prompt_embeds)

    @torch.inference_mode()
    def step(self, latent, timestep, text, mask):
        return self.packages["step"](latent, timestep, text, mask)

    @torch.inference_mode()
    def decode(self, latent):
        return self.packages["vae"](latent)


class AotiBackend(Backend):
    name = "aoti"
    description = "AOTInductor packages (transformer split + DC-AE decoder); text encoder eager"

    def unavailable(self, case: BenchCase) -> str | None:
        if not hasattr(torch._inductor, "aoti_compile_and_package"):
            return f"torch {torch.__version__} has no AOTInductor packaging (needs torch >= 2.6)"
        return None

    def prepare(self, comps: SanaComponents, case: BenchCase, inputs: CaseInputs, workdir: Path) -> Prepared:
        dev = torch.device(case.device)
        key = f"{case.device}-{case.precision}-{case.height}x{case.width}-b{case.transformer_batch}-l{case.text_len}"
        root = workdir / "aoti" / comps.model_id.replace("/", "_")
        packages, all_cached = {}, True
        if {"step", "loop", "e2e"} & set(case.stages):
            model = comps.transformer
            wkey = comps.content_hash("transformer")[:16]
            embeds = inputs.prompt_embeds.to(dev)
            runner, c1 = compile_package(_TextKV(model), (embeds,), root / f"text_kv-{wkey}-{key}.pt2")
            packages["text_kv"] = runner
            kv = runner(embeds)
            args = (inputs.step_latent.to(dev), inputs.timestep.to(dev), kv, inputs.attention_mask.to(dev))
            packages["step"], c2 = compile_package(_Cached(model), args, root / f"step-{wkey}-{key}.pt2")
            all_cached &= c1 and c2
        if {"vae_decode", "e2e"} & set(case.stages):
            vkey = comps.content_hash("vae")[:16]
            latent = inputs.decode_latent.to(dev)
            packages["vae"], c3 = compile_package(_Decoder(comps.vae), (latent,), root / f"vae-{vkey}-{key}.pt2")
            all_cached &= c3
        runners = AotiRunners(comps, dev, packages)
        notes = ["AOTInductor, static shapes, inline kernels", "text encoder eager PyTorch"]
        return Prepared(runner_stages(runners, comps, case, inputs), notes, False, all_cached)
