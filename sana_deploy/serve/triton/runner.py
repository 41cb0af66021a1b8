"""``TritonRunner``: a :class:`~sana_deploy.runners.Runner` whose graph is another model of the Triton repository,
called with BLS (business logic scripting) from inside Triton's Python backend.

The ``sana_pipeline`` model builds the runtime's :class:`~sana_deploy.runtime.pipeline.SanaDeployPipeline` over a
:class:`~sana_deploy.runtime.providers.FixedStages` of these runners, so the Triton pipeline runs the very loop,
prompt handling, caption K/V split, binning and decode of ``sana-deploy generate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import numpy as np
import torch

from sana_deploy.errors import SanaDeployError, ShapeError, fail
from sana_deploy.models.config import VAE_SCALE
from sana_deploy.runners import Runner


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """fp32 for float tensors, int64 for ids and masks (the export's boundary types)."""
    t = t.detach().cpu()
    return np.ascontiguousarray(t.float().numpy() if t.is_floating_point() else t.long().numpy())


class TritonRunner(Runner):
    """One component served by Triton model(s), reached with ``pb_utils.InferenceRequest(...).exec()``.

    ``routes``: ``[{"name": model}]`` for a model that takes every size, or one entry per profile with its
    ``latent_h`` / ``latent_w`` ``[min, max]`` (TensorRT plans, one per profile); the ``latent`` input's size picks
    the model. ``reshape``: inputs sent as ``(batch, 1)`` (a per-item scalar under Triton's implicit batch axis).
    """

    backend = "triton"
    reentrant = True  # BLS requests are independent; the models behind them queue and batch

    def __init__(
        self,
        pb_utils: ModuleType,
        component: str,
        routes: Sequence[dict],
        input_names: Sequence[str],
        output_names: Sequence[str],
        precision: str = "fp32",
        reshape: Sequence[str] = (),
    ) -> None:
        if not routes:
            fail(f"No Triton model serves {component}.")
        super().__init__(component, list(input_names), list(output_names), precision, detail=routes[0]["name"])
        self.pb = pb_utils
        self.routes = [dict(r) for r in routes]
        self.reshape = tuple(reshape)

    def model_for(self, inputs: dict[str, torch.Tensor]) -> str:
        if len(self.routes) == 1 and "latent_h" not in self.routes[0]:
            return self.routes[0]["name"]
        h, w = inputs["latent"].shape[-2:]
        for r in self.routes:
            if r["latent_h"][0] <= h <= r["latent_h"][1] and r["latent_w"][0] <= w <= r["latent_w"][1]:
                return r["name"]
        fail(
            f"{w * VAE_SCALE}x{h * VAE_SCALE} is not covered by this repository's {self.component} models "
            f"({', '.join(r['name'] for r in self.routes)}); re-run `sana-deploy export-triton --profiles ...` with "
            f"engines for it.",
            ShapeError,
        )

    def infer(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pb = self.pb
        model = self.model_for(inputs)
        tensors = []
        for name, value in inputs.items():
            array = _to_numpy(value)
            if name in self.reshape:
                array = array.reshape(-1, 1)
            tensors.append(pb.Tensor(name, array))
        request = pb.InferenceRequest(model_name=model, requested_output_names=list(self.output_names), inputs=tensors)
        response = request.exec()
        if response.has_error():
            fail(f"Triton model {model} ({self.component}) failed: {response.error().message()}", SanaDeployError)
        out = {}
        for name in self.output_names:
            tensor = pb.get_output_tensor_by_name(response, name)
            if tensor is None:
                fail(f"Triton model {model} returned no {name!r} output.", SanaDeployError)
            out[name] = torch.from_numpy(np.array(tensor.as_numpy(), copy=True))
        return out
