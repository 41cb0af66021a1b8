"""Where a transformer weight lives inside a compiled artifact, so a runner can swap it without a rebuild.

A weight map is ``{parameter name: WeightRef(name in the artifact, layout)}``. Parameter names are the
transformer's, in diffusers' names (``transformer_blocks.0.attn1.to_q.weight``). Graph exporters rename and
re-lay weights: the ONNX exporter folds ``Transpose(W)`` into a new ``val_N`` initializer holding ``W.T`` and
flattens 1x1 convolution kernels for the Mix-FFN function. So the map is found by value (:func:`match_weights`),
once, when the artifact is written, and stored beside it: every parameter whose exact bytes, in one of the
layouts, are found in exactly one initializer. A parameter that no initializer holds (folded into another
constant) or that several hold is left out, and a LoRA that targets it is refused with a message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sana_deploy.errors import SanaDeployError, fail
from sana_deploy.fileio import write_atomic

WEIGHT_MAP_FILE = "weights.json"
WEIGHT_MAP_FORMAT = "sana-deploy/weight-map/1"
LAYOUTS = ("same", "transposed", "flat", "flat-transposed")
_MODULE_PREFIXES = ("model.",)  # the export wrappers hold the transformer as ``model``


class WeightSwapError(SanaDeployError):
    """Weights cannot be swapped into this artifact (no weight map, a weight it does not hold, a shape mismatch)."""


@dataclass(frozen=True)
class WeightRef:
    """``name``: the initializer / constant / refittable weight; ``layout``: how the parameter is stored there."""

    name: str
    layout: str
    shape: tuple[int, ...]  # the parameter's own shape


def parameter_name(raw: str) -> str:
    """A wrapper's parameter name as the transformer's own (``model.x.weight`` -> ``x.weight``)."""
    for prefix in _MODULE_PREFIXES:
        if raw.startswith(prefix):
            return raw[len(prefix) :]
    return raw


def swappable(name: str, t: torch.Tensor) -> bool:
    """LoRA-targetable: the weight of a linear layer or of a 1x1 convolution."""
    return name.endswith(".weight") and (t.dim() == 2 or t.dim() == 4 and tuple(t.shape[2:]) == (1, 1))


def to_layout(w: torch.Tensor, layout: str) -> torch.Tensor:
    """The parameter ``w`` as the artifact stores it."""
    if layout == "same":
        return w
    flat = w.flatten(1)
    if layout == "flat":
        return flat
    if layout in ("transposed", "flat-transposed"):
        return flat.t()
    raise ValueError(layout)


def from_layout(stored: torch.Tensor, layout: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of :func:`to_layout`: the parameter of ``shape`` from what the artifact stores."""
    if layout in ("transposed", "flat-transposed"):
        stored = stored.t()
    return stored.reshape(shape)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8).tobytes()).hexdigest()


def _tensor_digest(t: torch.Tensor) -> str:
    """The same digest for a tensor of any dtype (bf16 included, which numpy cannot hold)."""
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def match_weights(params: Mapping[str, torch.Tensor], stored: Mapping[str, np.ndarray]) -> dict[str, WeightRef]:
    """Find each swappable parameter's one initializer by exact bytes (see the module docstring)."""
    where: dict[str, list[tuple[str, int]]] = {}
    for name, arr in stored.items():
        if arr.ndim in (2, 4) and arr.size > 1:
            where.setdefault(_digest(arr), []).append((name, arr.dtype.itemsize))
    out: dict[str, WeightRef] = {}
    for raw, p in params.items():
        name = parameter_name(raw)
        if not swappable(name, p):
            continue
        found: set[tuple[str, str]] = set()
        layouts = ("same", "transposed") if p.dim() == 2 else ("same", "flat", "flat-transposed")
        for layout in layouts:
            t = to_layout(p.detach().cpu(), layout).contiguous()
            for init, itemsize in where.get(_tensor_digest(t), []):
                if itemsize == t.element_size() and stored[init].shape == tuple(t.shape):
                    found.add((init, layout))
        if len(found) == 1:
            init, layout = found.pop()
            out[name] = WeightRef(init, layout, tuple(p.shape))
    # an initializer two parameters claim (identical values, deduplicated by the exporter) serves neither alone
    claims: dict[str, int] = {}
    for ref in out.values():
        claims[ref.name] = claims.get(ref.name, 0) + 1
    return {k: v for k, v in out.items() if claims[v.name] == 1}


def write_weight_map(folder: str | Path, refs: Mapping[str, WeightRef], artifact: str) -> Path:
    data = {
        "format": WEIGHT_MAP_FORMAT,
        "artifact": artifact,
        "weights": {k: asdict(v) for k, v in sorted(refs.items())},
    }
    return write_atomic(Path(folder) / WEIGHT_MAP_FILE, json.dumps(data, indent=1))


def read_weight_map(folder: str | Path) -> dict[str, WeightRef] | None:
    """The weight map stored beside an artifact, or None when it has none (an older export)."""
    path = Path(folder) / WEIGHT_MAP_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != WEIGHT_MAP_FORMAT:
            raise ValueError(data.get("format"))
        return {
            k: WeightRef(str(v["name"]), str(v["layout"]), tuple(int(d) for d in v["shape"]))
            for k, v in data["weights"].items()
            if v.get("layout") in LAYOUTS
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        fail(f"{path} is damaged ({type(exc).__name__}); export the model again to rewrite it.", WeightSwapError)


def onnx_initializers(path: str | Path, names: set[str] | None = None) -> dict[str, np.ndarray]:
    """Initializers of an ONNX file (external data included), all or only ``names``."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    out = {}
    for t in model.graph.initializer:
        if names is None or t.name in names:
            external = t.data_location == onnx.TensorProto.EXTERNAL
            out[t.name] = _external_array(t, path.parent) if external else numpy_helper.to_array(t)
    return out


def _external_array(t, folder: Path) -> np.ndarray:  # noqa: ANN001 (onnx.TensorProto)
    """An external initializer read from a file *in the graph's own folder* (a plain file name only), checked
    here rather than trusted to the caller."""
    from onnx.helper import tensor_dtype_to_np_dtype

    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    if not location or Path(location).name != location or location in (".", ".."):
        fail(f"Initializer {t.name} points to external data {location!r} outside its folder.", WeightSwapError)
    dtype = np.dtype(tensor_dtype_to_np_dtype(t.data_type))
    count = int(np.prod(t.dims)) if len(t.dims) else 1
    offset = int(info.get("offset", 0))
    with open(folder / location, "rb") as f:
        f.seek(offset)
        data = f.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        fail(f"External data of {t.name} in {location} is truncated; export again.", WeightSwapError)
    return np.frombuffer(data, dtype=dtype).reshape(tuple(t.dims)).copy()


def stored_weights(path: str | Path, refs: Mapping[str, WeightRef], names: set[str]) -> dict[str, torch.Tensor]:
    """The parameters ``names`` (in their own shape and dtype) read from the ONNX file at ``path``."""
    arrays = onnx_initializers(path, {refs[n].name for n in names})
    return {n: from_layout(_as_tensor(arrays[refs[n].name]), refs[n].layout, refs[n].shape) for n in names}


def _as_tensor(arr: np.ndarray) -> torch.Tensor:
    if arr.dtype.name == "bfloat16":  # ml_dtypes' bf16, which torch.from_numpy does not take
        return torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(arr.copy())


def require_map(component: str, refs: Mapping[str, WeightRef] | None) -> Mapping[str, WeightRef]:
    if refs is None:
        fail(
            f"The {component} artifact has no weight map ({WEIGHT_MAP_FILE}), so its weights cannot be swapped; "
            f"export (and build) it again with this version of sana-deploy.",
            WeightSwapError,
        )
    return refs
