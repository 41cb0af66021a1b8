"""Our flow solvers vs diffusers' schedulers on the same model outputs, 20 steps, step by step."""

from __future__ import annotations

import pytest
import torch

from sana_deploy.errors import SanaDeployError
from sana_deploy.runtime.solvers import FlowDPMSolver, FlowEuler, make_solver


def _diffusers_dpm(shift: float):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        use_flow_sigmas=True,
        flow_shift=shift,
        prediction_type="flow_prediction",
        num_train_timesteps=1000,
    )


def _diffusers_euler(shift: float):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=shift)


def _fake_model(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
    """A deterministic stand-in for the transformer: depends on x, t and the step."""
    g = torch.Generator().manual_seed(1000 + i)
    return 0.7 * x + 0.001 * t.float() + torch.randn(x.shape, generator=g)


@pytest.mark.parametrize("shift", [3.0, 4.0, 6.0])
@pytest.mark.parametrize(
    "sampler,ours,theirs", [("dpm", FlowDPMSolver, _diffusers_dpm), ("euler", FlowEuler, _diffusers_euler)]
)
@pytest.mark.parametrize("steps", [20, 7, 1])
def test_solver_matches_diffusers(sampler, ours, theirs, shift, steps):
    ref = theirs(shift)
    ref.set_timesteps(steps)
    mine = ours(steps, shift)
    assert mine.timesteps.shape == ref.timesteps.shape
    assert (mine.timesteps.double() - ref.timesteps.double()).abs().max() <= 1e-5
    assert mine.timesteps.dtype == ref.timesteps.dtype
    assert (mine.sigmas - ref.sigmas).abs().max() <= 1e-5
    assert mine.sigmas[-1] == 0
    x0 = torch.randn(2, 32, 8, 12, generator=torch.Generator().manual_seed(0))
    x_ref, x_mine = x0.clone(), x0.clone()
    worst = 0.0
    for i, t in enumerate(ref.timesteps):
        assert torch.equal(mine.model_timestep(2), t.float().expand(2))
        x_ref = ref.step(_fake_model(x_ref, t, i), t, x_ref, return_dict=False)[0]
        x_mine = mine.step(_fake_model(x_mine, t, i), x_mine)
        err = (x_ref - x_mine).abs().max().item()
        worst = max(worst, err)
        assert err <= 1e-5, f"{sampler} step {i}: max abs err {err:.2e}"
    print(f"{sampler} shift={shift} steps={steps}: worst latent err {worst:.2e}")


def test_dpm_timesteps_are_truncated_integers():
    s = FlowDPMSolver(20, 3.0)
    assert s.timesteps.dtype == torch.int64
    assert s.timesteps[0] == 999 and s.sigmas[0] > 0.999


def test_solver_state_is_per_request():
    s = make_solver("flow-dpm-solver", 2, 3.0)
    x = torch.zeros(1, 32, 2, 2)
    x = s.step(torch.ones_like(x), x)
    x = s.step(torch.ones_like(x), x)
    with pytest.raises(SanaDeployError, match="new one per request"):
        s.step(torch.ones_like(x), x)


def test_bad_sampler_and_steps_are_clear_errors():
    with pytest.raises(SanaDeployError, match="flow-dpm-solver, flow-euler"):
        make_solver("ddim", 20, 3.0)
    with pytest.raises(SanaDeployError, match="positive integer"):
        make_solver("flow-euler", 0, 3.0)
