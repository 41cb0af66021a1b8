"""Triton ``config.pbtxt`` writer: nested dicts/lists -> protobuf text format (field names are Triton's).

Values: ``str`` is quoted unless it is an enum (``Enum("TYPE_FP32")``), ``bool``/``int``/``float`` are literal,
``dict`` is a message, ``list`` is a repeated field. :func:`validate` parses the result with Triton's own
``model_config.proto`` (shipped in ``tritonclient``) so a typo in a field name fails at export, not at load.
"""

from __future__ import annotations

import json
from pathlib import Path


class Enum(str):
    """An enum value, written bare (``TYPE_FP32``, ``KIND_GPU``)."""


def render(message: dict, indent: int = 0) -> str:
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, dict):
                lines.append(f"{pad}{key} {{")
                lines.append(render(v, indent + 1))
                lines.append(f"{pad}}}")
            else:
                lines.append(f"{pad}{key}: {_scalar(v)}")
    return "\n".join(line for line in lines if line)


def _scalar(v: object) -> str:
    if isinstance(v, Enum):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))


def validate(path: Path):
    """Parse ``config.pbtxt`` with Triton's ModelConfig proto; returns the message (raises on any error)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())
