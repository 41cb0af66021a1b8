"""Run the ops' one shape function on TensorRT's symbolic shapes (no TensorRT import here).

``linear_attention_shape`` / ``mix_ffn_shape`` validate and compute on int tuples. :class:`SymDim` wraps one
symbolic dimension (a ``trtp.ShapeExpr``, or ``None`` in tests) with its build-time constant when known, so the
same function checks the static dimensions (channels, weights) at engine build and maps the output dimensions
back to the input expressions. Dynamic dimensions compare equal to anything (TensorRT checks them at runtime).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


class SymDim:
    """One dimension: ``expr`` (symbolic, opaque here) and ``value`` (int when a build-time constant)."""

    def __init__(self, expr: Any, value: int | None) -> None:
        self.expr, self.value = expr, value

    @classmethod
    def from_expr(cls, expr: Any) -> SymDim:
        """From a ``trtp.ShapeExpr`` (``is_constant`` / ``constant_value()``), or an int."""
        if isinstance(expr, int):
            return cls(expr, expr)
        try:
            value = expr.constant_value() if expr.is_constant else None
        except RuntimeError:  # a "fake" ShapeExpr outside a shape context
            value = None
        return cls(expr, value)

    def _binary(self, other: Any, op: Callable[[Any, Any], Any]) -> SymDim:
        o_expr, o_val = (other.expr, other.value) if isinstance(other, SymDim) else (other, other)
        value = op(self.value, o_val) if self.value is not None and o_val is not None else None
        return SymDim(op(self.expr, o_expr) if self.expr is not None else None, value)

    def __mul__(self, other: Any) -> SymDim:
        return self._binary(other, lambda a, b: a * b)

    __rmul__ = __mul__

    def __floordiv__(self, other: Any) -> SymDim:
        return self._binary(other, lambda a, b: a // b)

    def __mod__(self, other: Any) -> int:
        """0 unless both sides are known (a divisibility assert can only fail on known values)."""
        o_val = other.value if isinstance(other, SymDim) else other
        return self.value % o_val if self.value is not None and o_val is not None else 0

    def __eq__(self, other: object) -> bool:
        o_val = other.value if isinstance(other, SymDim) else other
        return self.value is None or o_val is None or self.value == o_val

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return str(self.value) if self.value is not None else "?"


def sym_shape(shape_exprs: Sequence[Any]) -> tuple[SymDim, ...]:
    """A tuple of :class:`SymDim` from a ``trtp.ShapeExprs`` (or ints)."""
    return tuple(SymDim.from_expr(e) for e in shape_exprs)


def output_exprs(shape_fn: Callable[..., tuple], *shapes: Sequence[Any], **kwargs: Any) -> tuple:
    """Run ``shape_fn`` on symbolic input shapes; return the output shape as expressions (ints where constant).

    The shape function's asserts fire for inconsistent build-time constants (AssertionError).
    """
    out = shape_fn(*(sym_shape(s) for s in shapes), **kwargs)
    return tuple(d.expr if isinstance(d, SymDim) and d.expr is not None else _value(d) for d in out)


def _value(d: Any) -> Any:
    return d.value if isinstance(d, SymDim) else d
