"""Sana's solvers: Flow-DPM-Solver++ (2nd-order multistep, the default), Flow-Euler, and Sana-Sprint's sCM solver.

Written from the formulas in docs/SANA.md#flow-samplers and docs/VARIANTS.md#sana-sprint-one-to-four-steps;
diffusers' ``DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
final_sigmas_type="zero")``, ``FlowMatchEulerDiscreteScheduler(shift=flow_shift)`` and ``SCMScheduler`` (with
``SanaSprintPipeline``'s TrigFlow conversions around the transformer) are what the tests compare against.

Rectified flow: ``x_t = (1 - σ)·x0 + σ·ε`` and the model predicts ``v = ε - x0``, so ``x0 = x_t - σ·v``.
A solver is per-request state (it remembers the previous x0 prediction); make one per call, never share one.

Every solver has the same loop-facing surface, so the pipeline runs one loop for all of them:
``init_noise_sigma`` (the scale of the initial latents), ``model_input(x)`` (what the transformer gets),
``model_timestep(batch)``, ``step(v, x)``, ``result(x)`` (the latents handed to the decoder) and
``schedule_timestep()`` (the scheduler's own timestep of the current step, what diffusers' step callbacks get).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from sana_deploy.errors import fail

NUM_TRAIN_TIMESTEPS = 1000
SAMPLERS = ("flow-dpm-solver", "flow-euler", "scm")
FLOW_SAMPLERS = ("flow-dpm-solver", "flow-euler")  # base Sana / Sana-1.5
# NVlabs scripts/inference.py defaults; scm: SanaSprintPipeline's 2 steps
DEFAULT_STEPS = {"flow-dpm-solver": 20, "flow-euler": 28, "scm": 2}
# sCM (SCMScheduler.set_timesteps defaults): the first TrigFlow time (just above pi/2) and the 2-step midpoint
SCM_MAX_TIMESTEPS = 1.57080
SCM_INTERMEDIATE_TIMESTEPS = 1.3
DEFAULT = "default"  # a solver option left at its default (what the default is can depend on the step count)


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


def _schedule_values(values: Sequence[float] | torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    """A custom schedule as a float64 array: a non-empty 1-D sequence of finite numbers, else a clear error."""
    try:
        arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    except (TypeError, ValueError):
        fail(f"{what} must be a list of numbers, got {values!r}.")
    if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
        fail(f"{what} must be a non-empty list of finite numbers, got {values!r}.")
    return arr


def _descending(arr: np.ndarray, what: str) -> None:
    if arr.size > 1 and not (np.diff(arr) < 0).all():
        fail(f"{what} must be strictly decreasing (the first step is the noisiest), got {arr.tolist()}.")


@dataclass
class Solver(ABC):
    """Base: a fixed schedule and a ``step(v, x) -> x_next`` that advances one entry of it."""

    steps: int
    timesteps: torch.Tensor = field(init=False)
    index: int = field(init=False, default=0)
    init_noise_sigma: float = field(init=False, default=1.0)  # the initial latents are drawn as N(0, 1) x this

    def _check_steps(self) -> None:
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            fail(f"num_inference_steps must be a positive integer, got {self.steps!r}.")

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """The transformer's ``latent`` input for the current step (the latents themselves for flow solvers)."""
        return x

    def model_timestep(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The transformer's ``timestep`` input for the current step: (batch,) fp32."""
        return self.timesteps[self.index].to(device=device, dtype=torch.float32).expand(batch)

    def schedule_timestep(self) -> torch.Tensor:
        """The scheduler's timestep of the current step (0-d, as diffusers hands it to ``callback_on_step_end``)."""
        return self.timesteps[self.index]

    @abstractmethod
    def step(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Advance ``x`` one entry of the schedule with the model output ``v``."""

    def result(self, x: torch.Tensor) -> torch.Tensor:
        """The latents the decoder gets after the last step taken (``x`` itself for flow solvers)."""
        return x

    @abstractmethod
    def noised(self, latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Clean latents (DC-AE latents x scaling_factor) noised to the current schedule entry with N(0, 1)
        ``noise``, in this solver's latent space: where img2img starts."""

    def _next_index(self) -> int:
        i = self.index
        if i >= self.steps:
            fail(f"The solver already took all {self.steps} steps; make a new one per request.")
        return i


@dataclass
class FlowSolver(Solver):
    """A rectified-flow solver over sigmas with Sana's ``flow_shift``.

    ``custom_sigmas``: N unshifted sigmas in (0, 1], decreasing; the solver shifts them with ``shift`` (as
    ``FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=...)`` does) and appends the final 0.
    ``custom_timesteps``: N model timesteps in (0, 1000], decreasing, used as given, with σ = t / 1000 (unshifted).
    """

    shift: float = 3.0
    custom_sigmas: Sequence[float] | None = None
    custom_timesteps: Sequence[float] | None = None
    sigmas: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self._check_steps()
        if self.shift <= 0:
            fail(f"flow_shift must be positive, got {self.shift!r}.")
        if self.custom_sigmas is not None and self.custom_timesteps is not None:
            fail("Pass timesteps or sigmas, not both (each alone fixes the schedule).")
        if self.custom_sigmas is not None or self.custom_timesteps is not None:
            self.sigmas, self.timesteps = self._custom_schedule()
        else:
            self.sigmas, self.timesteps = self._schedule()

    @abstractmethod
    def _schedule(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmas with the final 0 appended, the model timesteps) of this solver."""

    integer_timesteps = False  # DPM: ⌊σ·1000⌋ as Sana computes it; Euler: fractional
    max_sigma_inclusive = True  # DPM needs σ < 1 (α = 1 - σ > 0 in its log-SNR)

    def _custom_schedule(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.custom_sigmas is not None:
            what = "sigmas"
            sig = _schedule_values(self.custom_sigmas, what).astype(np.float32)
            self._check_sigmas(sig, what)
            sig = shift_sigmas(sig, np.float32(self.shift)).astype(np.float32)
            ts = sig.astype(np.float64) * NUM_TRAIN_TIMESTEPS
        else:
            what = "timesteps"
            ts = _schedule_values(self.custom_timesteps, what)
            if (ts <= 0).any() or (ts > NUM_TRAIN_TIMESTEPS).any():
                fail(f"timesteps must lie in (0, {NUM_TRAIN_TIMESTEPS}], got {ts.tolist()}.")
            sig = (ts / NUM_TRAIN_TIMESTEPS).astype(np.float32)
            self._check_sigmas(sig, what)
        _descending(sig.astype(np.float64), what)
        if len(sig) != self.steps:
            fail(f"Got {len(sig)} {what} for {self.steps} steps; pass one per step (or leave num_inference_steps out).")
        sigmas = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
        if self.integer_timesteps:
            timesteps = torch.from_numpy(ts.astype(np.int64))
        else:
            timesteps = torch.from_numpy(ts.astype(np.float32))
        return sigmas, timesteps

    def noised(self, latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        sigma = self.sigmas[self.index].to(latents.device)
        return (1 - sigma) * latents + sigma * noise

    def _check_sigmas(self, sig: np.ndarray, what: str) -> None:
        top_ok = (sig <= 1).all() if self.max_sigma_inclusive else (sig < 1).all()
        if (sig <= 0).any() or not top_ok:
            bound = "(0, 1]" if self.max_sigma_inclusive else "(0, 1)"
            fail(f"The {what} give sigmas outside {bound} for this solver: {sig.tolist()}.")


class FlowDPMSolver(FlowSolver):
    """DPM-Solver++ (data prediction), multistep order 2, midpoint; 1st order on the first and last step.

    With ``λ = log(α/σ)``, ``α = 1 - σ`` and ``h = λ_next - λ_cur``:
    1st order: ``x' = (σ'/σ)·x - α'·(e^{-h} - 1)·x0``;
    2nd order: ``x' = (σ'/σ)·x - α'·(e^{-h} - 1)·(D0 + D1/2)``, ``D0 = x0``, ``D1 = (x0 - x0_prev)·h/h_prev``.
    The last step goes to σ = 0 where ``e^{-h} = 0`` and the update returns the x0 prediction exactly.
    """

    integer_timesteps = True
    max_sigma_inclusive = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self._prev_x0: torch.Tensor | None = None

    def _schedule(self) -> tuple[torch.Tensor, torch.Tensor]:
        return dpm_flow_sigmas(self.steps, self.shift)

    def _lambda(self, i: int) -> float:
        s = float(self.sigmas[i])
        return math.inf if s == 0 else math.log(1 - s) - math.log(s)

    def step(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        i = self._next_index()
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
        i = self._next_index()
        dt = self.sigmas[i + 1] - self.sigmas[i]  # fp32 scalar, as diffusers computes it
        x_next = x.float() + dt * v.float()
        self.index += 1
        return x_next.to(v.dtype)


Noise = Callable[[tuple[int, ...]], torch.Tensor]  # shape -> N(0, 1) fp32 draws from the request's generator


class SCMSolver(Solver):
    """Sana-Sprint's sCM solver (TrigFlow), as ``SCMScheduler`` with ``SanaSprintPipeline``'s conversions.

    Schedule: TrigFlow times ``s`` from ``max_timesteps`` (just above π/2: pure noise) down to 0;
    ``[max, intermediate, 0]`` for two steps, else ``linspace(max, 0, steps + 1)``, or ``timesteps`` as given
    (steps + 1 values). With σd = ``sigma_data``, ``t = sin s / (sin s + cos s)`` and ``c = √(t² + (1 - t)²)``:

    * initial latents ``N(0, 1)·σd``; the transformer gets ``x/σd·c`` and the timestep ``t`` (continuous, in [0, 1]);
    * from its output v: ``F = ((1 - 2t)·x_in + (1 - 2t + 2t²)·v) / c``, ``x0 = cos s·x - sin s·σd·F``;
    * next latents ``cos s'·x0 + sin s'·σd·ε``, with ε drawn fresh from the request's generator at every step
      (the last one too, as diffusers draws it); the decoder gets the last ``x0 / σd``.
    """

    def __init__(
        self,
        steps: int,
        noise: Noise,
        sigma_data: float = 0.5,
        timesteps: Sequence[float] | torch.Tensor | None = None,
        max_timesteps: float | None | str = DEFAULT,
        intermediate_timesteps: float | None | str = DEFAULT,
    ) -> None:
        self.steps = steps
        self.index = 0
        self._check_steps()
        if not math.isfinite(sigma_data) or sigma_data <= 0:
            fail(f"sigma_data must be a positive number, got {sigma_data!r}.")
        self.sigma_data = float(sigma_data)
        self.init_noise_sigma = self.sigma_data
        self.noise = noise
        self.trig = self._trig_schedule(timesteps, max_timesteps, intermediate_timesteps)  # (steps+1,) fp32
        t = torch.sin(self.trig[:-1]) / (torch.cos(self.trig[:-1]) + torch.sin(self.trig[:-1]))
        self.timesteps = t  # what the transformer gets, (steps,) fp32
        self._x0: torch.Tensor | None = None

    def _trig_schedule(self, timesteps, max_timesteps, intermediate_timesteps) -> torch.Tensor:  # noqa: ANN001
        if timesteps is not None:
            if max_timesteps not in (DEFAULT, None):
                fail("Pass timesteps or max_timesteps for the sCM solver, not both (timesteps fix the schedule).")
            if intermediate_timesteps not in (DEFAULT, None):
                fail("Pass timesteps or intermediate_timesteps for the sCM solver, not both.")
            values = _schedule_values(timesteps, "timesteps")
            if len(values) != self.steps + 1:
                fail(
                    f"The sCM solver takes num_inference_steps + 1 timesteps (the last is usually 0); got "
                    f"{len(values)} for {self.steps} steps."
                )
            self._check_trig(values, "timesteps")
            return torch.tensor(values.tolist()).float()
        max_t = SCM_MAX_TIMESTEPS if max_timesteps in (DEFAULT, None) else max_timesteps
        if max_timesteps is None:
            fail("max_timesteps=None needs timesteps (diffusers' rule): pass timesteps, or leave max_timesteps out.")
        mid = intermediate_timesteps
        if mid == DEFAULT:
            mid = SCM_INTERMEDIATE_TIMESTEPS if self.steps == 2 else None
        elif mid is not None and self.steps != 2:
            fail(
                f"intermediate_timesteps is the middle time of a 2-step sCM schedule; with {self.steps} steps pass "
                f"intermediate_timesteps=None (or leave it out), or pass explicit timesteps."
            )
        values = [max_t, mid, 0.0] if mid is not None else None
        self._check_trig(_schedule_values([max_t] if values is None else values, "max/intermediate timesteps"), "")
        if values is not None:
            return torch.tensor(values).float()
        return torch.linspace(max_t, 0, self.steps + 1).float()

    @staticmethod
    def _check_trig(values: np.ndarray, what: str) -> None:
        what = what or "max_timesteps and intermediate_timesteps"
        if (values < 0).any() or (values > SCM_MAX_TIMESTEPS).any():
            fail(
                f"sCM {what} are TrigFlow times in [0, {SCM_MAX_TIMESTEPS}] (pi/2: pure noise), got {values.tolist()}."
            )
        _descending(values, what)

    def _scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.timesteps[self.index].to(x.device).expand(x.shape[0]).view(-1, 1, 1, 1)
        return t, torch.sqrt(t**2 + (1 - t) ** 2)

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        _, c = self._scale(x)
        return x / self.sigma_data * c

    def schedule_timestep(self) -> torch.Tensor:
        return self.trig[self.index]

    def step(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        i = self._next_index()
        t, c = self._scale(x)
        x_in = x / self.sigma_data * c
        noise_pred = ((1 - 2 * t) * x_in + (1 - 2 * t + 2 * t**2) * v) / c
        noise_pred = noise_pred.float() * self.sigma_data
        s, s_next = self.trig[i].to(x.device), self.trig[i + 1].to(x.device)
        x0 = torch.cos(s) * x.float() - torch.sin(s) * noise_pred
        eps = self.noise(tuple(x.shape)).to(x.device) * self.sigma_data
        self._x0 = x0
        self.index += 1
        return torch.cos(s_next) * x0 + torch.sin(s_next) * eps

    def noised(self, latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``cos s·(latents·σd) + sin s·σd·ε`` (SanaSprintImg2ImgPipeline's start)."""
        s = self.trig[self.index].to(latents.device)
        return torch.cos(s) * latents * self.sigma_data + torch.sin(s) * noise * self.sigma_data

    def result(self, x: torch.Tensor) -> torch.Tensor:
        if self._x0 is None:  # no step was taken (a callback stopped the loop first): the latents as they are
            return x / self.sigma_data
        return self._x0 / self.sigma_data


def canonical_sampler(sampler: str) -> str:
    """The sampler's canonical name (``dpm``/``flow-dpm`` -> ``flow-dpm-solver``, ``euler`` -> ``flow-euler``,
    ``scm``/``sprint`` -> ``scm``); an unknown name lists the valid ones."""
    key = str(sampler).lower().replace("_", "-")
    if key in ("flow-dpm-solver", "dpm", "flow-dpm"):
        return "flow-dpm-solver"
    if key in ("flow-euler", "euler"):
        return "flow-euler"
    if key in ("scm", "sprint", "trigflow"):
        return "scm"
    fail(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")


def make_solver(
    sampler: str,
    steps: int,
    shift: float,
    *,
    timesteps: Sequence[float] | torch.Tensor | None = None,
    sigmas: Sequence[float] | None = None,
    noise: Noise | None = None,
    sigma_data: float = 0.5,
    max_timesteps: float | None | str = DEFAULT,
    intermediate_timesteps: float | None | str = DEFAULT,
) -> Solver:
    """``flow-dpm-solver`` (Sana's default), ``flow-euler``, or ``scm`` (Sana-Sprint; needs ``noise``).

    ``timesteps`` / ``sigmas``: a custom schedule (see :class:`FlowSolver` and :class:`SCMSolver`).
    """
    key = canonical_sampler(sampler)
    if key == "scm":
        if sigmas is not None:
            fail("The sCM solver takes TrigFlow timesteps, not sigmas; pass timesteps=[...] (steps + 1 values).")
        if noise is None:
            fail("The sCM solver draws fresh noise at every step; give it the request's noise source.")
        return SCMSolver(steps, noise, sigma_data, timesteps, max_timesteps, intermediate_timesteps)
    for name, value in (("max_timesteps", max_timesteps), ("intermediate_timesteps", intermediate_timesteps)):
        if value != DEFAULT:
            fail(f"{name} belongs to Sana-Sprint's sCM solver; the {key} solver has no such option.")
    cls = FlowDPMSolver if key == "flow-dpm-solver" else FlowEuler
    return cls(steps, shift, custom_sigmas=sigmas, custom_timesteps=None if timesteps is None else list(timesteps))
