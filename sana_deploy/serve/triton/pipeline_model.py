"""Triton Python-backend ``sana_pipeline``: prompt in, image (and/or the final latents) out.

The model runs the runtime's :class:`~sana_deploy.runtime.pipeline.SanaDeployPipeline` -- the same prompt handling,
caption K/V split, Flow-DPM-Solver / Flow-Euler loop, resolution binning and DC-AE decode as ``sana-deploy
generate`` -- over a :class:`~sana_deploy.runtime.providers.FixedStages` provider. Its runners reach the graphs
either by BLS (``engine_mode: bls``: :class:`~sana_deploy.serve.triton.runner.TritonRunner` over the per-component
models of the same repository, TensorRT plans or ONNX Runtime) or in-process with ONNX Runtime
(``engine_mode: onnxruntime``: :class:`~sana_deploy.runners.OrtRunner`). The whole loop stays in one model
instance: one BLS request per graph call, none per step from the client.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np

from sana_deploy.runners import OrtRunner, Runner
from sana_deploy.runtime.pipeline import SanaDeployPipeline
from sana_deploy.runtime.providers import FixedStages
from sana_deploy.serve.triton.repository import preset_from_json
from sana_deploy.serve.triton.runner import TritonRunner

try:
    import triton_python_backend_utils as pb_utils  # provided by the Triton Python backend
except ImportError:  # imported outside Triton (docs, tests with a stand-in module)
    pb_utils = None


def build_provider(meta: dict, version_dir: Path, pb: ModuleType | None) -> FixedStages:
    """The stage provider of ``sana_pipeline``: BLS runners over the repository's models, or ORT runners."""
    runners: dict[str, Runner] = {}
    for component in meta["components"]:
        if meta["engine_mode"] == "bls":
            io = meta["io"][component]
            runners[component] = TritonRunner(
                pb, component, meta["models"][component], io["inputs"], io["outputs"], reshape=io["reshape"]
            )
        else:
            runners[component] = OrtRunner(version_dir / "onnx" / component / "model.onnx", component)
    return FixedStages(runners)


def build_pipeline(meta: dict, version_dir: Path, pb: ModuleType | None) -> SanaDeployPipeline:
    from transformers import AutoTokenizer

    preset = preset_from_json(meta["preset"])
    tokenizer = AutoTokenizer.from_pretrained(version_dir / "tokenizer")
    return SanaDeployPipeline(build_provider(meta, version_dir, pb), tokenizer, preset, meta["model"])


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.meta = json.loads((version_dir / "pipeline.json").read_text())
        self.pipe = build_pipeline(self.meta, version_dir, pb_utils)

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._run(request)))
            except Exception as exc:  # one bad request must not take the model instance down
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses

    def _run(self, request) -> list:
        args = read_request(request, self.meta)
        wanted = set(request.requested_output_names() or ("image",))
        final: list = []

        def keep(_step: int, _t: float, x) -> None:  # noqa: ANN001 (torch.Tensor)
            final[:] = [x]

        out = self.pipe(
            args["prompt"],
            negative_prompt=args["negative_prompt"],
            height=args["height"],
            width=args["width"],
            num_inference_steps=args["num_inference_steps"],
            guidance_scale=args["guidance_scale"],
            generator=args["seed"],
            sampler=args["sampler"],
            resolution_binning=args["resolution_binning"],
            output_type="np" if "image" in wanted else "latent",
            callback=keep,
        )
        tensors = []
        if "image" in wanted:
            image = (out.images[0] * 255).round().astype(np.uint8)  # rounded as the pipeline's PIL images are
            tensors.append(pb_utils.Tensor("image", np.ascontiguousarray(image)))
        if "latent" in wanted:  # the latents after the last step (what the DC-AE decodes, before scaling)
            tensors.append(pb_utils.Tensor("latent", np.ascontiguousarray(final[0].float().cpu().numpy())))
        return tensors


def read_request(request, meta: dict) -> dict:
    """The pipeline arguments of one request; optional inputs fall back to the repository's defaults."""

    def get(name: str, default):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return default
        value = tensor.as_numpy().reshape(-1)[0]
        return value.decode("utf-8") if isinstance(value, bytes) else value.item()

    height, width = meta["default_size"]
    return {
        "prompt": get("prompt", ""),
        "negative_prompt": get("negative_prompt", ""),
        "height": int(get("height", height)),
        "width": int(get("width", width)),
        "num_inference_steps": int(get("num_inference_steps", meta["num_inference_steps"])),
        "guidance_scale": float(get("guidance_scale", meta["guidance_scale"])),
        "seed": int(get("seed", 0)),
        "sampler": get("sampler", meta["sampler"]),
        "resolution_binning": bool(get("resolution_binning", True)),
    }
