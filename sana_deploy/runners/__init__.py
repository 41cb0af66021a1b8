"""One runner per backend: ``runner(**inputs) -> {output name: tensor}`` for one component graph.

Every stage of the pipeline runs through a :class:`Runner`, whatever executes it: an eager PyTorch module
(:class:`TorchRunner`), an ONNX graph in ONNX Runtime (:class:`OrtRunner`, a plain export or an engine-cache
entry), an AOTInductor package (:class:`AotiRunner`) or a TensorRT / TensorRT-RTX plan (:class:`TrtRunner`).
Inputs and outputs use the export spec's names; float tensors are fp32 at the boundary, masks and ids int64,
outputs come back on the inputs' device. Runners know nothing of the engine cache: ``sana_deploy.engines``
maps a cache entry onto one (``load_runner``).
"""

from sana_deploy.runners.aoti import AotiRunner
from sana_deploy.runners.base import Runner
from sana_deploy.runners.onnxruntime import OrtOptions, OrtRunner, ort_session, usable_cores
from sana_deploy.runners.tensorrt import TrtRunner
from sana_deploy.runners.torch_module import TorchRunner

__all__ = ["AotiRunner", "OrtOptions", "OrtRunner", "Runner", "TorchRunner", "TrtRunner", "ort_session", "usable_cores"]
