"""Calibration data from the real pipeline: ``SanaDeployPipeline`` (eager torch, fp32) runs each calibration prompt
with classifier-free guidance for ``steps`` solver steps, and the inputs of its transformer graphs are recorded as
the denoising loop feeds them: the caption embeddings the ``transformer_text`` graph gets once per request, and
the latent, timestep, caption K/V and mask of every ``transformer_cached`` call, at exactly the timesteps the
solver visits. The one-graph ``transformer``'s inputs are the same tensors (latent, timestep, caption embeddings,
mask), so one run serves every transformer graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from sana_deploy.export.quantized import calibration_hash
from sana_deploy.models.components import SanaComponents
from sana_deploy.runners import Runner
from sana_deploy.runtime.pipeline import SanaDeployPipeline


class RecordingRunner(Runner):
    """Delegates to ``inner`` and hands every call's inputs and outputs to ``sink``."""

    def __init__(self, inner: Runner, sink: Callable[[dict, dict], None]) -> None:
        super().__init__(inner.component, inner.input_names, inner.output_names, inner.precision, inner.shapes)
        self.backend = inner.backend
        self.inner, self.sink = inner, sink

    def infer(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self.inner.infer(inputs)
        self.sink(inputs, outputs)
        return outputs


@dataclass
class CalibrationSet:
    """What the pipeline fed its transformer graphs; ``definition`` is what the set was made from (its hash is the
    recipe's ``calibration_sha256``)."""

    definition: dict
    texts: list[dict[str, torch.Tensor]] = field(default_factory=list)  # per prompt: caption embeddings, mask, K/V
    steps: list[dict] = field(default_factory=list)  # per step: prompt index, latent, timestep, fp32 noise_pred

    @property
    def sha256(self) -> str:
        return calibration_hash(self.definition)

    def count(self, component: str) -> int:
        return len(self.texts) if component == "transformer_text" else len(self.steps)

    def feeds(self, component: str, prompt: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """The recorded inputs of ``component`` as numpy arrays (fp32 floats, int64 masks), in recording order;
        ``prompt``: only that prompt's."""
        if component == "transformer_text":
            for i, t in enumerate(self.texts):
                if prompt is None or i == prompt:
                    yield {"encoder_hidden_states": _np(t["encoder_hidden_states"])}
            return
        for s in self.steps:
            if prompt is not None and s["prompt"] != prompt:
                continue
            text = self.texts[s["prompt"]]
            feed = {"latent": _np(s["latent"]), "timestep": _np(s["timestep"])}
            if component == "transformer_cached":
                feed["text_kv"] = _np(text["text_kv"])
            else:
                feed["encoder_hidden_states"] = _np(text["encoder_hidden_states"])
            feed["encoder_attention_mask"] = _np(text["encoder_attention_mask"])
            yield feed


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.float().numpy() if t.is_floating_point() else t.long().numpy())


def record_calibration(
    components: SanaComponents,
    prompts: list[str],
    steps: int,
    size: int,
    seed: int = 0,
    guidance_scale: float = 4.5,
    sampler: str = "flow-dpm-solver",
    negative_prompt: str = "",
    progress: Callable[[str], None] = lambda m: None,
    precision: str = "fp32",
    device: str = "cpu",
) -> CalibrationSet:
    """Run the pipeline on every prompt (seed ``seed + i``, ``size`` x ``size``) and record the transformer inputs.

    ``precision``/``device``: the torch pipeline the reference runs on (calibration: fp32 on the CPU; a GPU
    quality measurement records its bf16 reference on the GPU). They are not part of the calibration definition."""
    calib = CalibrationSet(
        calibration_definition(components, prompts, steps, size, seed, guidance_scale, sampler, negative_prompt)
    )
    pipe = SanaDeployPipeline.from_components(components, backend="torch", precision=precision, device=device)
    pipe.prompt_cache = None
    provider = pipe.provider
    current: dict = {}

    def on_text(inputs: dict, outputs: dict) -> None:
        current["text"] = {"encoder_hidden_states": inputs["encoder_hidden_states"].detach().cpu().clone()}
        current["text"]["text_kv"] = outputs["text_kv"].detach().cpu().clone()

    def on_step(inputs: dict, outputs: dict) -> None:
        text = current["text"]
        if "encoder_attention_mask" not in text:
            text["encoder_attention_mask"] = inputs["encoder_attention_mask"].detach().cpu().clone()
            calib.texts.append(text)
        step = {"prompt": len(calib.texts) - 1, "latent": inputs["latent"].detach().cpu().clone()}
        step["timestep"] = inputs["timestep"].detach().cpu().clone()
        step["noise_pred"] = outputs["noise_pred"].detach().cpu().clone()  # the fp32 reference of this step
        calib.steps.append(step)

    for name, sink in (("transformer_text", on_text), ("transformer_cached", on_step)):
        provider.runners[name] = RecordingRunner(provider.runner(name, size, size, 2), sink)
    for i, prompt in enumerate(prompts):
        progress(f"calibration prompt {i + 1}/{len(prompts)}: {steps} steps at {size}x{size}")
        pipe(
            prompt,
            negative_prompt=negative_prompt,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=seed + i,
            sampler=sampler,
            resolution_binning=False,
            output_type="latent",
        )
    return calib


def calibration_definition(
    components: SanaComponents,
    prompts: list[str],
    steps: int,
    size: int,
    seed: int,
    guidance_scale: float,
    sampler: str,
    negative_prompt: str = "",
) -> dict:
    """What a calibration set is made from: its hash identifies it in recipes (no need to run it to know it)."""
    return {
        "prompts": list(prompts),
        "negative_prompt": negative_prompt,
        "steps": int(steps),
        "size": int(size),
        "seed": int(seed),
        "guidance_scale": float(guidance_scale),
        "sampler": sampler,
        "model": components.preset.name,
        "weights_sha256": components.content_hash("transformer"),
    }


__all__ = ["CalibrationSet", "RecordingRunner", "calibration_definition", "record_calibration"]
