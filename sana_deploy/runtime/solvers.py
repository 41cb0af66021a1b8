"""Sana's flow samplers: Flow-DPM-Solver++ (2nd-order multistep, the default) and Flow-Euler.

Written from the formulas in docs/SANA.md#flow-samplers; diffusers' ``DPMSolverMultistepScheduler(
use_flow_sigmas=True, prediction_type="flow_prediction", algorithm_type="dpmsolver++", solver_order=2,
solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero")`` and
``FlowMatchEulerDiscreteScheduler(shift=flow_shift)`` are what the tests compare against, step by step.

Rectified flow: ``x_t = (1 - σ)·x0 + σ·ε`` and the model predicts ``v = ε - x0``, so ``x0 = x_t - σ·v``.
A solver is per-request state (it remembers the previous x0 prediction); make one per call, never share one.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch

from sana_deploy.errors import fail

NUM_TRAIN_TIMESTEPS = 1000
SAMPLERS = ("flow-dpm-solver", "flow-euler")
DEFAULT_STEPS = {"flow-dpm-solver": 20, "flow-euler": 28}  # NVlabs scripts/inference.py defaults


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Sana's time shift ``σ' = shift·σ / (1 + (shift - 1)·σ)``."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def dpm_flow_sigmas(steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas (steps+1,) fp32 ending in 0, timesteps (steps,) int64 = ⌊σ·1000⌋), as Sana's flow DPM-Solver.

    ``s = 1 - linspace(1, 1/1000, N+1)``, shifted, flipped (σ falls from ~1), its last entry dropped and the
    final σ = 0 appended (``final_sigmas_type`` zero: the last step lands on the x0 prediction).
    """
    s = 1.0 - np.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, steps + 1)
    sig = np.flip(shift_sigmas(s, shift))[:-1].copy()
    timesteps = torch.from_numpy((sig * NUM_TRAIN_TIMESTEPS).astype(np.int64))  # truncation, like Sana
    sigmas = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
    return sigmas, timesteps


def euler_flow_sigmas(steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas (steps+1,) fp32 ending in 0, timesteps (steps,) fp32 = σ·1000), as ``FlowMatchEulerDiscrete``.

    The grid runs linearly between the *shifted* training extremes (σ_max = 1, σ_min = shift(1/1000), both
    held in fp32 as diffusers does) and is then shifted once more; the timesteps stay fractional.
    """
    train = np.linspace(1, NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS, dtype=np.float32)[::-1] / NUM_TRAIN_TIMESTEPS
    train = torch.from_numpy(shift_sigmas(train.astype(np.float32), np.float32(shift)).astype(np.float32))
    sigma_max, sigma_min = train[0].item(), train[-1].item()
    t = np.linspace(sigma_max * NUM_TRAIN_TIMESTEPS, sigma_min * NUM_TRAIN_TIMESTEPS, steps)
    sig = torch.from_numpy(shift_sigmas(t / NUM_TRAIN_TIMESTEPS, shift)).to(torch.float32)
    return torch.cat([sig, torch.zeros(1)]), sig * NUM_TRAIN_TIMESTEPS


@dataclass
class FlowSolver(ABC):
    """Base: a fixed schedule and a ``step(v, x) -> x_next`` that advances one entry of it."""

    steps: int
    shift: float
    sigmas: torch.Tensor = field(init=False)
    timesteps: torch.Tensor = field(init=False)
    index: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            fail(f"num_inference_steps must be a positive integer, got {self.steps!r}.")
        if self.shift <= 0:
            fail(f"flow_shift must be positive, got {self.shift!r}.")
        self.sigmas, self.timesteps = self._schedule()

    @abstractmethod
    def _schedule(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmas with the final 0 appended, the model timesteps) of this solver."""

    def model_timestep(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The transformer's ``timestep`` input for the current step: (batch,) fp32."""
        return self.timesteps[self.index].to(device=device, dtype=torch.float32).expand(batch)

    @abstractmethod
    def step(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Advance ``x`` one entry of the schedule with the model output ``v``."""


class FlowDPMSolver(FlowSolver):
    """DPM-Solver++ (data prediction), multistep order 2, midpoint; 1st order on the first and last step.

    With ``λ = log(α/σ)``, ``α = 1 - σ`` and ``h = λ_next - λ_cur``:
    1st order: ``x' = (σ'/σ)·x - α'·(e^{-h} - 1)·x0``;
    2nd order: ``x' = (σ'/σ)·x - α'·(e^{-h} - 1)·(D0 + D1/2)``, ``D0 = x0``, ``D1 = (x0 - x0_prev)·h/h_prev``.
    The last step goes to σ = 0 where ``e^{-h} = 0`` and the update returns the x0 prediction exactly.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._prev_x0: torch.Tensor | None = None

    def _schedule(self) -> tuple[torch.Tensor, torch.Tensor]:
        return dpm_flow_sigmas(self.steps, self.shift)

    def _lambda(self, i: int) -> float:
        s = float(self.sigmas[i])
        return math.inf if s == 0 else math.log(1 - s) - math.log(s)

    def step(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        i = self.index
        if i >= self.steps:
            fail(f"The solver already took all {self.steps} steps; make a new one per request.")
        out_dtype = v.dtype
        v, x = v.float(), x.float()
        s_cur, s_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        x0 = x - s_cur * v
        h = self._lambda(i + 1) - self._lambda(i)
        ratio = s_next / s_cur
        coeff = (1 - s_next) * math.expm1(-h)  # α'·(e^{-h} - 1); -α' at σ' = 0
        first_order = self._prev_x0 is None or i == self.steps - 1
        if first_order:
            x_next = ratio * x - coeff * x0
        else:
            h_prev = self._lambda(i) - self._lambda(i - 1)
            d1 = (x0 - self._prev_x0) * (h / h_prev)
            x_next = ratio * x - coeff * (x0 + 0.5 * d1)
        self._prev_x0 = x0
        self.index += 1
        return x_next.to(out_dtype)


class FlowEuler(FlowSolver):
    """Flow-matching Euler: ``x' = x + (σ' - σ)·v``."""

    def _schedule(self) -> tuple[torch.Tensor, torch.Tensor]:
        return euler_flow_sigmas(self.steps, self.shift)

    def step(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        i = self.index
        if i >= self.steps:
            fail(f"The solver already took all {self.steps} steps; make a new one per request.")
        dt = self.sigmas[i + 1] - self.sigmas[i]  # fp32 scalar, as diffusers computes it
        x_next = x.float() + dt * v.float()
        self.index += 1
        return x_next.to(v.dtype)


def make_solver(sampler: str, steps: int, shift: float) -> FlowSolver:
    """``flow-dpm-solver`` (Sana's default) or ``flow-euler``."""
    key = sampler.lower().replace("_", "-")
    if key in ("flow-dpm-solver", "dpm", "flow-dpm"):
        return FlowDPMSolver(steps, shift)
    if key in ("flow-euler", "euler"):
        return FlowEuler(steps, shift)
    fail(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
