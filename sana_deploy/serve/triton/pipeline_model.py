"""Triton Python-backend ``sana_pipeline``: prompt in, image out; the whole solver loop in one model instance.

Keeping the loop here (not one Triton request per step from a client) follows the Stable Diffusion tutorial and
the BLS overhead reports (peers.md §8a). The engines are reached either by BLS (``engine_mode: bls``: the per-engine
models of the same repository, TensorRT plans or ONNX Runtime) or in-process with ONNX Runtime
(``engine_mode: onnxruntime``). Prompt handling and the solvers are the runtime's (``sana_deploy.runtime``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sana_deploy.serve.triton.sampler import SanaLoop

try:
    import triton_python_backend_utils as pb_utils  # provided by the Triton Python backend
except ImportError:  # imported outside Triton (docs, tests of SanaLoop)
    pb_utils = None


class BlsEngine:
    """An engine served as another model of the repository, called with BLS."""

    def __init__(self, model_name: str, outputs: list[str], reshape: tuple[str, ...] = ()) -> None:
        self.model_name, self.outputs, self.reshape = model_name, outputs, reshape

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        tensors = []
        for name, value in inputs.items():
            array = value.detach().cpu().contiguous().numpy()
            if name in self.reshape:  # (B,) -> (B, 1): Triton's implicit batch axis plus dims [1]
                array = array.reshape(-1, 1)
            tensors.append(pb_utils.Tensor(name, array))
        request = pb_utils.InferenceRequest(
            model_name=self.model_name, inputs=tensors, requested_output_names=self.outputs
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.model_name}: {response.error().message()}")
        return {n: torch.from_numpy(pb_utils.get_output_tensor_by_name(response, n).as_numpy()) for n in self.outputs}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.meta = json.loads((version_dir / "pipeline.json").read_text())
        self.loop = SanaLoop.from_meta(self.meta, version_dir, self._engines(version_dir))

    def _engines(self, version_dir: Path) -> dict:
        if self.meta["engine_mode"] == "bls":
            return {
                "text_encoder": BlsEngine(self.meta["models"]["text_encoder"], ["last_hidden_state"]),
                "vae": {p["name"]: BlsEngine(p["vae"], ["sample"]) for p in self.meta["profiles"]},
                "transformer": {
                    p["name"]: BlsEngine(p["transformer"], ["noise_pred"], ("timestep",)) for p in self.meta["profiles"]
                },
            }
        from sana_deploy.runtime.ort import OrtRunner

        onnx = {c: OrtRunner(version_dir / "onnx" / c / "model.onnx") for c in ("text_encoder", "transformer", "vae")}
        names = [p["name"] for p in self.meta["profiles"]]
        return {
            "text_encoder": onnx["text_encoder"],
            **{c: dict.fromkeys(names, onnx[c]) for c in ("vae", "transformer")},
        }

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                image = self.loop.generate(**self._read(request))
                out = pb_utils.Tensor("image", np.ascontiguousarray(image))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            except Exception as exc:  # one bad request must not take the model instance down
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses

    @staticmethod
    def _read(request) -> dict:
        def get(name: str, default):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                return default
            value = tensor.as_numpy().reshape(-1)[0]
            return value.decode("utf-8") if isinstance(value, bytes) else value.item()

        return {
            "prompt": get("prompt", ""),
            "negative_prompt": get("negative_prompt", ""),
            "height": get("height", None),
            "width": get("width", None),
            "num_inference_steps": get("num_inference_steps", None),
            "guidance_scale": get("guidance_scale", None),
            "seed": get("seed", 0),
        }
