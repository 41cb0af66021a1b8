"""Triton Python-backend model that runs one exported ONNX graph with ONNX Runtime.

For servers without Triton's onnxruntime backend (PyTriton's bundled ``tritonserver``); with the real backend,
``sana-deploy export-triton --engine-backend onnxruntime`` writes ``platform: "onnxruntime_onnx"`` instead. The
tensor names and dims are the same either way, so the pipeline model's BLS calls do not change.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the Triton Python backend


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(config["parameters"].get("intra_op_threads", {}).get("string_value", "0"))
        self.session = ort.InferenceSession(str(version_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.reshape = {i["name"]: i.get("reshape") is not None for i in config["input"]}
        self.batched = config.get("max_batch_size", 0) > 0

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:  # same-shape requests batched by Triton still arrive one by one here
            feeds = {}
            for name in self.inputs:
                value = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                if self.reshape.get(name) and value.ndim == 2:  # timestep: [batch, 1] -> [batch]
                    value = value.reshape(-1)
                feeds[name] = np.ascontiguousarray(value)
            results = self.session.run(self.outputs, feeds)
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(r)) for n, r in zip(self.outputs, results, strict=True)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
