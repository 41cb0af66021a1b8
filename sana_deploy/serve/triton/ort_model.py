"""Triton Python-backend model that runs one exported ONNX graph with ONNX Runtime (:class:`OrtRunner`).

For servers without Triton's onnxruntime backend (PyTriton's bundled ``tritonserver``); with the real backend,
``sana-deploy export-triton --engine-backend onnxruntime`` writes ``platform: "onnxruntime_onnx"`` instead. The
tensor names and dims are the same either way, so the pipeline model's BLS calls do not change.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils  # provided by the Triton Python backend

from sana_deploy.runners import OrtOptions, OrtRunner


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        threads = int(config["parameters"].get("intra_op_threads", {}).get("string_value", "0")) or None
        options = OrtOptions(threads=threads, providers=("CPUExecutionProvider",))
        self.runner = OrtRunner(version_dir / "model.onnx", config["name"], options=options)
        self.reshape = {i["name"]: i.get("reshape") is not None for i in config["input"]}

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:  # same-shape requests batched by Triton still arrive one by one here
            try:
                feeds = {}
                for name in self.runner.input_names:
                    value = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                    if self.reshape.get(name) and value.ndim == 2:  # a per-item scalar: [batch, 1] -> [batch]
                        value = value.reshape(-1)
                    feeds[name] = torch.from_numpy(np.array(value, copy=True))
                outputs = self.runner(**feeds)
                tensors = [pb_utils.Tensor(n, np.ascontiguousarray(t.numpy())) for n, t in outputs.items()]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # a bad request is an error response, not a dead model
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
