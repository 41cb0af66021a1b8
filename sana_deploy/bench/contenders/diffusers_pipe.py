"""The two baselines users would otherwise pick: diffusers' ``SanaPipeline`` eager (``diffusers-eager``) and the
same pipeline with ``torch.compile`` on the transformer and the VAE decoder (``torch-compile``).

The pipeline is built from the case's modules (for a variant, its diffusers pipeline: ``SanaPAGPipeline``,
``SanaControlNetPipeline``, ``SanaSprintPipeline`` / ``SanaSprintImg2ImgPipeline`` with ``SCMScheduler`` for a
Sana-Sprint model; base-Sana img2img has none, and the baseline is skipped):
diffusers' own ``SanaTransformer2DModel`` holding our transformer's
weights (same parameter names), the same DC-AE, Gemma-2 and tokenizer, and Sana's flow DPM-Solver scheduler -- so
it does the same work as the product pipeline. One timed run is one ``pipe(...)`` call with the same request
(prompt, empty negative prompt, seed, steps, CFG, size without binning, the default complex human instruction);
the stages are timed inside that call, as the product pipeline times its own:

* ``text_encode``: ``pipe.encode_prompt`` (tokenise + Gemma-2, both prompts);
* ``step``: the median over the call's steps, each from the end of the previous step (``callback_on_step_end``;
  the first from the end of ``prepare_latents``) to its own end: transformer, CFG, scheduler step;
* ``loop``: from the end of ``encode_prompt`` to the end of the last step (timesteps, latents, every step);
* ``vae_decode``: ``pipe.vae.decode``;
* ``e2e``: the whole call.
"""

from __future__ import annotations

import time
from statistics import median

import torch

from sana_deploy.bench.case import BenchCase
from sana_deploy.bench.contenders.base import CaseContext, Contender, Prepared, RunTimes
from sana_deploy.errors import fail
from sana_deploy.models.components import SanaComponents
from sana_deploy.runtime.variants import parse_pag_layers


def flow_scheduler(flow_shift: float):  # noqa: ANN201 (diffusers scheduler)
    """diffusers' multistep DPM-Solver++ configured as Sana's flow DPM-Solver (docs/SANA.md)."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        use_flow_sigmas=True,
        flow_shift=flow_shift,
        prediction_type="flow_prediction",
        num_train_timesteps=1000,
    )


def diffusers_transformer(comps: SanaComponents, device: torch.device, dtype: torch.dtype):  # noqa: ANN201
    """diffusers' ``SanaTransformer2DModel`` holding a copy of ``comps.transformer``'s weights."""
    from diffusers import SanaTransformer2DModel

    model = SanaTransformer2DModel(**comps.preset.transformer.to_diffusers())
    missing, unexpected = model.load_state_dict(comps.transformer.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("pos_embed")]  # diffusers' fixed-size PE buffer
    if missing or unexpected:
        fail(f"diffusers transformer does not match ours: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device=device, dtype=dtype).eval()


def build_pipeline(comps: SanaComponents, case: BenchCase):  # noqa: ANN201 (a diffusers Sana pipeline)
    """diffusers' pipeline of the case's variant over the case's modules: ``SanaPipeline``, ``SanaPAGPipeline``
    (the same PAG blocks), ``SanaControlNetPipeline`` (``SanaControlNetModel`` from the case's ControlNet folder, the
    weights ours loads), or for a Sana-Sprint model ``SanaSprintPipeline`` / ``SanaSprintImg2ImgPipeline`` with
    ``SCMScheduler``. A variant diffusers has no pipeline for is refused (:func:`baseline_unavailable`)."""
    import diffusers

    why = baseline_unavailable(case)
    if why:
        fail(why)
    device = torch.device(case.device)
    dtype = next(comps.transformer.parameters()).dtype
    transformer = diffusers_transformer(comps, device, dtype)
    modules = {"tokenizer": comps.tokenizer, "text_encoder": comps.text_encoder, "vae": comps.vae}
    if comps.preset.sprint:
        scheduler = diffusers.SCMScheduler(prediction_type="trigflow", sigma_data=comps.preset.sigma_data)
        cls = diffusers.SanaSprintImg2ImgPipeline if case.img2img else diffusers.SanaSprintPipeline
        pipe = cls(**modules, transformer=transformer, scheduler=scheduler)
    elif case.control_image is not None:
        controlnet = diffusers.SanaControlNetModel.from_pretrained(str(case.controlnet))
        pipe = diffusers.SanaControlNetPipeline(
            **modules, transformer=transformer, controlnet=controlnet.to(device=device, dtype=dtype).eval(),
            scheduler=flow_scheduler(comps.preset.flow_shift),
        )  # fmt: skip
    elif case.pag:
        layers = parse_pag_layers(case.pag_layers, comps.preset.transformer.num_layers)
        pipe = diffusers.SanaPAGPipeline(
            **modules, transformer=transformer, scheduler=flow_scheduler(comps.preset.flow_shift),
            pag_applied_layers=[f"transformer_blocks.{i}" for i in layers],
        )  # fmt: skip
    else:
        pipe = diffusers.SanaPipeline(
            **modules, transformer=transformer, scheduler=flow_scheduler(comps.preset.flow_shift)
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def baseline_unavailable(case: BenchCase) -> str | None:
    """Why diffusers has no pipeline for the case's variant, or None. diffusers 0.42 has no img2img pipeline for
    base Sana (only ``SanaSprintImg2ImgPipeline``), and none that combines img2img with ControlNet or PAG."""
    if case.img2img and not case.sprint:
        return (
            "diffusers has no img2img pipeline for base Sana (only SanaSprintImg2ImgPipeline for Sana-Sprint), so "
            "this case has no diffusers baseline; the sana-deploy backends are timed without speed-ups"
        )
    if len(case.modes) > 1:
        return f"diffusers has no pipeline for {' with '.join(case.modes)} together, so this case has no baseline"
    return None


def diffusers_request(case: BenchCase) -> dict:
    """The variant's arguments of the diffusers pipeline's call (its PAG blocks are a constructor argument). The
    images are the case's fitted RGB ones, the pixels the sana-deploy backends get (``BenchCase.fitted_image``)."""
    out = {}
    if case.img2img:
        out.update(image=case.fitted_image(case.image, "--image"), strength=case.effective_strength)
    if case.control_image is not None:
        out["control_image"] = case.fitted_image(case.control_image, "--control-image")
        out["controlnet_conditioning_scale"] = case.control_scale
    if case.pag:
        out["pag_scale"] = case.pag_scale
    return out


class _StageClock:
    """Wall-clock marks inside one diffusers call (CUDA synchronised at each mark on a GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: dict[str, float] = {}
        self.steps: list[float] = []

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def timed(self, fn, start: str, end: str):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.marks[start] = self.now()
            out = fn(*args, **kwargs)
            self.marks[end] = self.now()
            return out

        return wrapper

    def on_step_end(self, pipe, i: int, t, kwargs: dict) -> dict:  # noqa: ANN001
        self.steps.append(self.now())
        return {}


def _instrument(pipe, device: str) -> _StageClock:  # noqa: ANN001
    """Time ``encode_prompt``, ``prepare_latents`` and ``vae.decode`` of this pipeline (instance attributes wrap
    the bound methods; the classes are untouched). The clock is reset per call."""
    clock = _StageClock(torch.device(device))
    pipe.encode_prompt = clock.timed(pipe.encode_prompt, "encode_start", "encode_end")
    pipe.prepare_latents = clock.timed(pipe.prepare_latents, "latents_start", "latents_end")
    pipe.vae.decode = clock.timed(pipe.vae.decode, "vae_start", "vae_end")
    return clock


def _uninstrument(pipe) -> None:  # noqa: ANN001
    for obj, name in ((pipe, "encode_prompt"), (pipe, "prepare_latents"), (pipe.vae, "decode")):
        obj.__dict__.pop(name, None)


class DiffusersEager(Contender):
    name = "diffusers-eager"
    description = "diffusers SanaPipeline (or the variant's pipeline), eager"
    compile = False

    def unavailable(self, case: BenchCase) -> str | None:
        return baseline_unavailable(case)

    def prepare(self, ctx: CaseContext) -> Prepared:
        case = ctx.case
        pipe = build_pipeline(ctx.comps, case)
        sprint = ctx.comps.preset.sprint
        notes = [f"diffusers {type(pipe).__name__} (eager), stages timed inside its __call__"]
        # diffusers' Sprint default intermediate time (1.3) is for 2 steps only: other counts need None
        extra = {"intermediate_timesteps": None} if sprint and case.steps != 2 else {}
        if self.compile:
            mode = self.options.get("mode", "default")
            pipe.transformer = torch.compile(pipe.transformer, mode=mode, dynamic=False)
            pipe.vae.decoder = torch.compile(pipe.vae.decoder, mode=mode, dynamic=False)
            notes = [f"torch.compile(mode={mode}) on transformer and VAE decoder; compile time is in first call"]
        clock = _instrument(pipe, case.device)
        dtype = "/".join(sorted({str(p.dtype).removeprefix("torch.") for p in pipe.transformer.parameters()}))
        engine = "torch.compile" if self.compile else "diffusers"
        labels = {
            "text_encoder": f"transformers/{str(ctx.comps.text_encoder.dtype).removeprefix('torch.')}",
            "transformer": f"{engine}/{dtype}",
            "vae": f"{engine}/{str(ctx.comps.vae.dtype).removeprefix('torch.')}",
        }

        @torch.inference_mode()
        def run() -> RunTimes:
            clock.marks.clear()
            clock.steps.clear()
            request = {**case.request(), **diffusers_request(case)}  # images read before the clock starts
            start = clock.now()
            out = pipe(
                **request,
                **extra,
                use_resolution_binning=False,
                output_type=case.output_type,
                callback_on_step_end=clock.on_step_end,
                callback_on_step_end_tensor_inputs=[],
            )
            end = clock.now()
            prepared.last_output = out.images
            return _times(clock, start, end, case, labels)

        def release() -> None:
            _uninstrument(pipe)
            pipe.transformer = None
            prepared.last_output = None

        prepared = Prepared(run, notes, build_cached=None, release=release)
        return prepared


def _times(clock: _StageClock, start: float, end: float, case: BenchCase, labels: dict) -> RunTimes:
    m = clock.marks
    edges = [m["latents_end"], *clock.steps]
    steps = [(b - a) * 1e3 for a, b in zip(edges, edges[1:], strict=False)]
    ms = {
        "text_encode": (m["encode_end"] - m["encode_start"]) * 1e3,
        "step": median(steps),
        "loop": (clock.steps[-1] - m["encode_end"]) * 1e3,
    }
    used = {k: v for k, v in labels.items() if k != "vae"}
    if case.decodes:
        ms["vae_decode"] = (m["vae_end"] - m["vae_start"]) * 1e3
        ms["e2e"] = (end - start) * 1e3
        used["vae"] = labels["vae"]
    return RunTimes(ms, steps, "one-graph", used)


class DiffusersCompiled(DiffusersEager):
    name = "torch-compile"
    description = "diffusers SanaPipeline with torch.compile (transformer, VAE decoder)"
    compile = True
    option_names = ("mode",)
