"""The ONNX exporter's graph optimiser with exact no-op rules.

``torch.onnx.export`` runs onnxscript's optimiser, whose default rewrite rules delete ``x + 0``, ``x - 0``,
``x * 1`` and ``x / 1``. Those rules match the constant with a tolerance (absolute 1e-8, relative 1e-5), so they
also delete ``x + 1e-15``: the epsilon of DC-AE's linear attention (``num / (den + eps)``, diffusers'
``SanaMultiscaleLinearAttention``). Without it a token whose ReLU'd query is all zero divides 0 by 0 and the
decoder returns NaN everywhere after it. That happens often at small head sizes (a query of 8 channels is all
zero with probability 1/256 per token and head) and practically never at the released 32, which is why the
released DC-AE exported fine while one with ``attention_head_dim`` 8 decoded to all NaN.

:func:`exact_no_op_rules` swaps those four rules for ones that match the constant exactly while an export runs.
onnxscript reads its default rule list at call time (``onnxscript.rewriter._DEFAULT_REWRITE_RULES``); where that
list or the ``pattern.Constant`` tolerances do not exist (other onnxscript versions) nothing is swapped, and the
parity check still refuses a graph that lost its epsilon. ``tests/export/test_dcae_heads.py`` fails if the swap
stops working with the installed onnxscript.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.RLock()  # the rule list is process-global: one export at a time swaps it


def _exact_rules() -> tuple[tuple, set[int]] | None:
    """(the exact rules, ids of the default rules they replace), or None where onnxscript differs."""
    try:
        import onnxscript.rewriter as rewriter
        from onnxscript.rewriter import pattern
        from onnxscript.rewriter.rules.common import _no_op

        def exactly(value: float):  # noqa: ANN202 (an onnxscript pattern value)
            return pattern.Constant(value, rel_tol=0.0, abs_tol=0.0)

        def add_0(op, x):  # noqa: ANN001, ANN202
            return op.Add(x, exactly(0.0))

        def sub_0(op, x):  # noqa: ANN001, ANN202
            return op.Sub(x, exactly(0.0))

        def mul_by_1(op, x):  # noqa: ANN001, ANN202
            return op.Mul(x, exactly(1.0))

        def div_by_1(op, x):  # noqa: ANN001, ANN202
            return op.Div(x, exactly(1.0))

        def identity(op, x, **_):  # noqa: ANN001, ANN202
            return op.Identity(x)

        exact = (
            *pattern.RewriteRule(add_0, identity).commute(),
            *pattern.RewriteRule(mul_by_1, identity).commute(),
            pattern.RewriteRule(sub_0, identity),
            pattern.RewriteRule(div_by_1, identity),
            _no_op.dropout_zero_rule,  # attribute matches, no tolerance: kept as they are
            _no_op.dropout_inference_rule,
        )
        replaced = {id(r) for r in rewriter._DEFAULT_REWRITE_RULES} & {id(r) for r in _no_op.rules.rules}
    except (ImportError, AttributeError, TypeError):
        return None
    return (exact, replaced) if replaced else None


@contextmanager
def exact_no_op_rules() -> Iterator[bool]:
    """While the block runs, onnxscript's default rewrite rules delete ``x + c``, ``x - c``, ``x * c``, ``x / c``
    only when ``c`` is exactly 0 (or 1). Yields whether the swap happened (False: this onnxscript differs)."""
    with _LOCK:
        found = _exact_rules()
        if found is None:
            yield False
            return
        import onnxscript.rewriter as rewriter

        exact, replaced = found
        saved = rewriter._DEFAULT_REWRITE_RULES
        rewriter._DEFAULT_REWRITE_RULES = (*exact, *(r for r in saved if id(r) not in replaced))
        try:
            yield True
        finally:
            rewriter._DEFAULT_REWRITE_RULES = saved
