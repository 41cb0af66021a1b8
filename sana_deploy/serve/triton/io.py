"""Triton tensor I/O of the engine models: export-spec tensors -> ``input``/``output`` config entries."""

from __future__ import annotations

import torch

from sana_deploy.serve.triton.pbtxt import Enum

DTYPES = {torch.float32: "TYPE_FP32", torch.float16: "TYPE_FP16", torch.int64: "TYPE_INT64", torch.int32: "TYPE_INT32"}


def tensor_entry(name: str, shape: tuple, dtype: torch.dtype, batched: bool) -> dict:
    """One config entry. With ``batched`` the leading batch axis is Triton's implicit one (not in ``dims``);
    a tensor that is only ``(batch,)`` (the timestep) is sent as ``[1]`` and reshaped to a scalar per item."""
    dims = [d if isinstance(d, int) else -1 for d in (shape[1:] if batched else shape)]
    entry = {"name": name, "data_type": Enum(DTYPES[dtype]), "dims": dims or [1]}
    if not dims:
        entry["reshape"] = {"shape": []}
    return entry


def engine_io(spec, batched: bool = True) -> tuple[list[dict], list[dict]]:
    """``(inputs, outputs)`` config entries for an :class:`~sana_deploy.export.ExportSpec`."""
    ins = [tensor_entry(t.name, t.shape, t.dtype, batched) for t in spec.inputs]
    outs = [tensor_entry(t.name, t.shape, t.dtype, batched) for t in spec.outputs]
    return ins, outs
