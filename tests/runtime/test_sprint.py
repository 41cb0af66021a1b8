"""Sana-Sprint in the one pipeline: golden tests against diffusers' ``SanaSprintPipeline`` (loaded with
``from_pretrained`` from the saved sana-sprint-tiny folder, its own tokenizer and ``SCMScheduler``) at 1, 2 and 4
steps on torch and onnxruntime; the sCM solver against ``SCMScheduler`` step by step (explicit timesteps included,
which diffusers' pipeline cannot run); loaders (diffusers folder, NVlabs layout, config inferred from the weights);
the CLI; and the CFG-style inputs a Sprint model refuses.

Both sides get the same request: prompt, seed (``torch.Generator().manual_seed``), guidance 4.5, binning off, at a
non-square size of the 1024 tier (256x384). diffusers needs ``intermediate_timesteps=None`` for 1 and 4 steps (its
default 1.3 is for 2 steps only, else it raises); ours applies the 2-step default only at 2 steps. Latents
(``output_type="latent"``) agree to 1e-4, images (``output_type="np"``) to 1/255.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sana_deploy.errors import SanaDeployError
from sana_deploy.runtime.pipeline import SanaDeployPipeline
from sana_deploy.runtime.solvers import SCMSolver, make_solver

PROMPT = "  A Red Fox in the SNOW, watercolour "
SEED = 11
HEIGHT, WIDTH = 256, 384
LATENT_TOL = 1e-4
IMAGE_TOL = 1 / 255


def _err(a, b) -> float:  # noqa: ANN001
    return float((torch.as_tensor(np.asarray(a)).float() - torch.as_tensor(np.asarray(b)).float()).abs().max())


@pytest.fixture(scope="module")
def sprint():
    from sana_deploy.models.random import random_components

    return random_components("sana-sprint-tiny")


@pytest.fixture(scope="module")
def sprint_folder(sprint, tmp_path_factory):
    from sana_deploy.models.loaders import save_diffusers_folder

    return save_diffusers_folder(sprint, tmp_path_factory.mktemp("sprint") / "sana-sprint-tiny")


@pytest.fixture(scope="module")
def reference(sprint_folder):
    """diffusers' SanaSprintPipeline outputs per (steps, output_type), computed once."""
    from diffusers import SanaSprintPipeline, SCMScheduler

    pipe = SanaSprintPipeline.from_pretrained(str(sprint_folder))
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, SCMScheduler) and pipe.transformer.config.guidance_embeds
    cache: dict[tuple[int, str], np.ndarray] = {}

    def get(steps: int, output_type: str) -> np.ndarray:
        if (steps, output_type) not in cache:
            out = pipe(
                PROMPT, num_inference_steps=steps, intermediate_timesteps=1.3 if steps == 2 else None,
                guidance_scale=4.5, height=HEIGHT, width=WIDTH, generator=torch.Generator().manual_seed(SEED),
                use_resolution_binning=False, output_type=output_type,
            ).images  # fmt: skip
            cache[steps, output_type] = np.asarray(out.float() if isinstance(out, torch.Tensor) else out)
        return cache[steps, output_type]

    return get


@pytest.fixture(scope="module")
def pipes(sprint, tmp_path_factory):
    export_dir = tmp_path_factory.mktemp("sprint-export")
    made: dict[tuple[str, bool], SanaDeployPipeline] = {}

    def get(backend: str, kv_cache: bool = True) -> SanaDeployPipeline:
        if (backend, kv_cache) not in made:
            made[backend, kv_cache] = SanaDeployPipeline.from_components(
                sprint, backend=backend, export_dir=export_dir, kv_cache=kv_cache
            )
        return made[backend, kv_cache]

    return get


def _ours(pipe: SanaDeployPipeline, steps: int, output_type: str, **kwargs):
    kwargs = {"guidance_scale": 4.5, **kwargs}
    return pipe(
        PROMPT, num_inference_steps=steps, height=HEIGHT, width=WIDTH, generator=torch.Generator().manual_seed(SEED),
        use_resolution_binning=False, output_type=output_type, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_sprint_matches_diffusers(pipes, reference, backend, steps):
    pipe = pipes(backend)
    ours = _ours(pipe, steps, "latent")
    assert ours.denoiser == "split" and len(ours.step_seconds) == steps
    assert all(b.startswith(backend) for b in ours.backends.values()), ours.backends
    theirs = reference(steps, "latent")
    assert tuple(ours.images.shape) == theirs.shape == (1, 32, HEIGHT // 32, WIDTH // 32)
    err = _err(ours.images, theirs)
    print(f"{backend} {steps} steps: latents max abs err {err:.2e}")
    assert err <= LATENT_TOL
    ours = _ours(pipe, steps, "np")
    theirs = reference(steps, "np")
    assert ours.images.shape == theirs.shape == (1, HEIGHT, WIDTH, 3)
    err = _err(ours.images, theirs)
    print(f"{backend} {steps} steps: image max abs err {err:.2e} (x255 = {err * 255:.3f})")
    assert err <= IMAGE_TOL


def test_sprint_one_graph_matches_diffusers(pipes, reference):
    """The one-graph transformer (caption K/V every step) takes the guidance input too."""
    ours = _ours(pipes("torch", kv_cache=False), 2, "latent")
    assert ours.denoiser == "one-graph"
    assert _err(ours.images, reference(2, "latent")) <= LATENT_TOL


def test_sprint_is_one_call_per_step_batch_one(pipes):
    """Guidance is a transformer input: one call per step, batch 1 per image (no CFG batch), guidance x 0.1."""
    pipe = pipes("torch")
    calls = []
    runner = pipe.provider.runner("transformer_cached", 0, 0, 0)
    original = runner.infer

    def spy(inputs):  # noqa: ANN001, ANN202
        calls.append({k: v.clone() for k, v in inputs.items() if k in ("latent", "guidance", "timestep")})
        return original(inputs)

    runner.infer = spy
    try:
        _ours(pipe, 2, "latent", guidance_scale=3.0)
    finally:
        del runner.infer
    assert len(calls) == 2
    assert all(c["latent"].shape[0] == 1 and torch.allclose(c["guidance"], torch.tensor([0.3])) for c in calls)
    t0 = math.sin(1.5708) / (math.sin(1.5708) + math.cos(1.5708))
    t1 = math.sin(1.3) / (math.sin(1.3) + math.cos(1.3))
    assert [round(float(c["timestep"][0]), 5) for c in calls] == [round(t0, 5), round(t1, 5)]


def _fake_model(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(500 + i)
    return 0.6 * x + 0.3 * t.float().view(-1, 1, 1, 1) + torch.randn(x.shape, generator=g)


@pytest.mark.parametrize(
    "steps, kwargs, theirs",
    [
        (1, {}, {"intermediate_timesteps": None}),
        (2, {}, {}),
        (2, {"intermediate_timesteps": 1.1}, {"intermediate_timesteps": 1.1}),
        (3, {"max_timesteps": 1.4}, {"max_timesteps": 1.4, "intermediate_timesteps": None}),
        (4, {}, {"intermediate_timesteps": None}),
        (
            3,
            {"timesteps": [1.5708, 1.2, 0.5, 0.0]},
            {"timesteps": [1.5708, 1.2, 0.5, 0.0], "max_timesteps": None, "intermediate_timesteps": None},
        ),
    ],
)
def test_scm_solver_matches_scheduler(steps, kwargs, theirs):
    """SCMSolver vs SCMScheduler + SanaSprintPipeline's TrigFlow conversions, step by step (same generator)."""
    from diffusers import SCMScheduler

    ref = SCMScheduler(prediction_type="trigflow", sigma_data=0.5)
    ref.set_timesteps(steps, **{"intermediate_timesteps": 1.3, **theirs})
    gen_ref, gen_ours = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ours = make_solver(
        "scm", steps, 3.0, noise=lambda shape: torch.randn(shape, generator=gen_ours), sigma_data=0.5, **kwargs
    )
    assert isinstance(ours, SCMSolver) and torch.equal(ours.trig, ref.timesteps)
    x_ref = torch.randn(2, 32, 4, 6, generator=gen_ref) * 0.5
    x = torch.randn(2, 32, 4, 6, generator=gen_ours) * ours.init_noise_sigma
    assert torch.equal(x, x_ref)
    ref.set_begin_index(0)
    for i, s in enumerate(ref.timesteps[:-1]):
        s_b = s.expand(2)
        t = torch.sin(s_b) / (torch.cos(s_b) + torch.sin(s_b))
        te = t.view(-1, 1, 1, 1)
        x_in_ref = x_ref / 0.5 * torch.sqrt(te**2 + (1 - te) ** 2)
        v_ref = _fake_model(x_in_ref, t, i)
        pred = ((1 - 2 * te) * x_in_ref + (1 - 2 * te + 2 * te**2) * v_ref) / torch.sqrt(te**2 + (1 - te) ** 2)
        x_ref, denoised = ref.step(pred.float() * 0.5, s_b, x_ref, generator=gen_ref, return_dict=False)
        assert torch.equal(ours.schedule_timestep(), s)
        assert torch.allclose(ours.model_timestep(2), t)
        x_in = ours.model_input(x)
        assert (x_in - x_in_ref).abs().max() <= 1e-6
        x = ours.step(_fake_model(x_in, ours.model_timestep(2), i), x)
        assert (x - x_ref).abs().max() <= 1e-5, i
    assert (ours.result(x) - denoised / 0.5).abs().max() <= 1e-5


def test_explicit_timesteps_equal_the_default_two_step_schedule(pipes):
    pipe = pipes("torch")
    default = _ours(pipe, 2, "latent").images
    explicit = _ours(pipe, None, "latent", timesteps=[1.5708, 1.3, 0.0]).images  # steps from the schedule
    assert _err(default, explicit) == 0.0
    other = _ours(pipe, None, "latent", timesteps=[1.5708, 1.0, 0.0]).images
    assert _err(default, other) > 1e-3


def test_sprint_refuses_cfg_inputs_and_other_solvers(pipes):
    pipe = pipes("torch")
    with pytest.raises(SanaDeployError, match="not classifier-free guidance, so there is no negative prompt"):
        pipe("a fox", negative_prompt="blurry", num_inference_steps=2)
    emb, mask = pipe.encode_prompt("a fox")
    assert emb.shape[0] == 1  # Sprint: no CFG batch by default
    with pytest.raises(SanaDeployError, match="Drop negative_prompt_embeds"):
        pipe(prompt_embeds=emb, prompt_attention_mask=mask, negative_prompt_embeds=emb)
    with pytest.raises(SanaDeployError, match="no negative prompt"):
        pipe.encode_prompt("a fox", do_classifier_free_guidance=True)
    with pytest.raises(SanaDeployError, match="runs the sCM solver"):
        pipe("a fox", sampler="flow-dpm-solver")
    with pytest.raises(SanaDeployError, match="intermediate_timesteps=None"):
        pipe("a fox", num_inference_steps=4, intermediate_timesteps=1.3)
    with pytest.raises(SanaDeployError, match="num_inference_steps \\+ 1 timesteps"):
        pipe("a fox", num_inference_steps=2, timesteps=[1.5, 0.0])
    with pytest.raises(SanaDeployError, match="not sigmas"):
        pipe("a fox", sigmas=[0.9, 0.5])
    with pytest.raises(SanaDeployError, match="strictly decreasing"):
        pipe("a fox", timesteps=[1.0, 1.3, 0.0])


def test_base_model_refuses_the_scm_solver(tiny_pipe):
    with pytest.raises(SanaDeployError, match="not a Sprint model"):
        tiny_pipe("a fox", sampler="scm")
    with pytest.raises(SanaDeployError, match="belongs to Sana-Sprint"):
        tiny_pipe("a fox", intermediate_timesteps=1.3)


def test_loaders_read_sprint_folders_and_nvlabs_checkpoints(sprint, sprint_folder, tmp_path):
    from sana_deploy.models.convert import diffusers_to_nvlabs
    from sana_deploy.models.loaders import load_components

    folder = load_components(sprint_folder, ("transformer",))
    assert folder.preset.sprint and folder.preset.transformer == sprint.preset.transformer
    assert folder.preset.sigma_data == 0.5 and folder.preset.default_sampler == "scm"
    nvlabs = diffusers_to_nvlabs(sprint.transformer.state_dict())
    assert "cfg_embedder.mlp.0.weight" in nvlabs and "t_embedder.mlp.2.bias" in nvlabs
    assert "blocks.0.attn.q_norm.weight" in nvlabs and "blocks.0.cross_attn.k_norm.weight" in nvlabs
    nvlabs["logvar_linear.weight"] = torch.zeros(1, 64)  # Sprint training-only head: dropped
    torch.save({"state_dict": nvlabs}, tmp_path / "sprint.pth")
    loaded = load_components(tmp_path / "sprint.pth", preset="sana-sprint-tiny")
    assert loaded.source.startswith("NVlabs checkpoint")
    for key, value in sprint.transformer.state_dict().items():
        assert torch.equal(value, loaded.transformer.state_dict()[key]), key


@pytest.mark.parametrize("preset", ["sana-sprint-0.6b-1024", "sana-sprint-1.6b-1024"])
def test_sprint_config_is_inferred_from_the_weights(preset, tmp_path):
    """A released-size Sprint checkpoint (meta tensors: shapes only) is recognised as its preset, in both layouts."""
    from sana_deploy.models.config import get_preset
    from sana_deploy.models.convert import diffusers_to_nvlabs, nvlabs_to_diffusers
    from sana_deploy.models.loaders import _config_from_weights
    from sana_deploy.models.transformer import SanaTransformer

    with torch.device("meta"):
        model = SanaTransformer(get_preset(preset).transformer)
    sd = model.state_dict()
    assert "time_embed.guidance_embedder.linear_1.weight" in sd and "time_embed.emb.timestep_embedder" not in str(sd)
    found, why = _config_from_weights(sd, tmp_path / "x.safetensors", None)
    assert found.name == preset and found.sprint, why
    back, unmapped = nvlabs_to_diffusers(diffusers_to_nvlabs(sd))
    assert not unmapped and set(back) == set(sd)


def test_cli_models_and_generate(tmp_path):
    from sana_deploy.cli import main

    runner = CliRunner()
    listing = runner.invoke(main, ["models"])
    assert listing.exit_code == 0
    for name in ("sana-sprint-0.6b-1024", "sana-sprint-1.6b-1024", "sana-sprint-tiny"):
        line = next(line for line in listing.output.splitlines() if line.startswith(name))
        assert "sprint" in line.split(name, 1)[1]
    out = tmp_path / "fox.png"
    result = runner.invoke(
        main,
        ["generate", "a fox", "--model", "sana-sprint-tiny", "--steps", "2", "--height", "256", "--width", "256",
         "--no-resolution-binning", "--backend", "torch", "--no-progress", "-o", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.is_file() and "256x256" in result.output
    refused = runner.invoke(main, ["generate", "a fox", "--model", "sana-sprint-tiny", "--cfg-scale", "3"])
    assert refused.exit_code == 2 and "--guidance-scale" in refused.output


def test_bench_runs_sprint_against_diffusers_sprint_pipeline(tmp_path):
    """`bench --model <sprint preset>`: the model's 2 steps, no CFG batch, and diffusers' SanaSprintPipeline eager
    as the baseline, timed in the same run."""
    from sana_deploy.bench import bench

    result = bench(
        model="sana-sprint-tiny", profiles="512", backends="torch", stages="step,loop,e2e", warmup=0, runs=1,
        device="cpu", work_dir=tmp_path,
    )  # fmt: skip
    case = result["cases"][0]
    assert case["steps"] == 2 and case["sprint"] and case["cfg_batch"] == 1 and "negative_prompt" in case
    by_backend = {r["backend"]: r for r in result["results"]}
    assert set(by_backend) == {"diffusers-eager", "torch"}
    assert all(r["status"] == "ok" for r in by_backend.values()), [r["reason"] for r in result["results"]]
    assert any("SanaSprintPipeline" in n for n in by_backend["diffusers-eager"]["notes"])
    assert by_backend["torch"]["stages"]["e2e"]["median_ms"] > 0


@pytest.mark.slow
def test_sprint_onnxruntime_engines_match_torch(tmp_path):
    """Engines per profile for Sprint (onnxruntime, built on the miss) = the torch pipeline."""
    engines = SanaDeployPipeline.from_engines(
        tmp_path / "engines", "sana-sprint-tiny", backend="onnxruntime", on_miss="build",
        build_kwargs={"export_root": str(tmp_path / "export")},
    )  # fmt: skip
    eager = SanaDeployPipeline.from_model("sana-sprint-tiny")
    request = {"height": 512, "width": 512, "generator": 0, "output_type": "latent", "resolution_binning": False}
    ours = engines("a fox", **request)
    assert ours.backends["transformer"].startswith("onnxruntime")
    assert _err(ours.images, eager("a fox", **request).images) <= LATENT_TOL
