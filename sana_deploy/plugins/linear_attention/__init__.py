"""ReLU linear attention (Sana's self-attention), reference + custom op."""

from sana_deploy.plugins.linear_attention.op import linear_attention, linear_attention_op, linear_attention_shape
from sana_deploy.plugins.linear_attention.ref import linear_attention_ref

__all__ = ["linear_attention", "linear_attention_op", "linear_attention_ref", "linear_attention_shape"]

from sana_deploy.plugins.registry import register_kernel  # noqa: E402
from sana_deploy.plugins.triton_utils import has_triton  # noqa: E402

if has_triton():  # the ``triton`` kernel set; without Triton the op falls back to its reference
    from sana_deploy.plugins.linear_attention.triton_op import linear_attention_triton_impl

    register_kernel("linear_attention", "triton", linear_attention_triton_impl)
