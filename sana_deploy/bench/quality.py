"""Quality of a pipeline against a reference run of the same request: the transformer's output error at every
solver timestep (on the reference run's own recorded inputs) and the final image's PSNR. Used by the
quantization and reduced-precision benchmarks; timing lives elsewhere (``sana_deploy.bench``)."""

from __future__ import annotations

import numpy as np
import torch

from sana_deploy.quantize.calibrate import CalibrationSet
from sana_deploy.runtime.pipeline import SanaDeployPipeline


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1] (inf when equal)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64."""
    return float((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm())


def per_step_errors(pipe: SanaDeployPipeline, held: CalibrationSet, size: int) -> tuple[list[float], list[float]]:
    """Each recorded step's transformer output through ``pipe``'s denoiser, on the reference run's inputs, against
    the reference output (``held``: :func:`sana_deploy.quantize.calibrate.record_calibration` of one prompt, CFG
    batch 2). Returns the relative L2 errors and their timesteps, in solver order."""
    denoiser = pipe.provider.denoiser(size, size, 2)
    device = pipe.device
    text = held.texts[0]
    cond = denoiser.prepare(text["encoder_hidden_states"].to(device), text["encoder_attention_mask"].to(device))
    errors, timesteps = [], []
    for step in held.steps:
        out = denoiser(step["latent"].to(device), step["timestep"].to(device), cond).float()
        errors.append(rel_l2(out, step["noise_pred"]))
        timesteps.append(float(step["timestep"][0]))
    return errors, timesteps


__all__ = ["per_step_errors", "psnr", "rel_l2"]
