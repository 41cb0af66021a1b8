"""ReLU linear attention (Sana's self-attention), reference + custom op."""

from sana_deploy.plugins.linear_attention.op import linear_attention, linear_attention_op, linear_attention_shape
from sana_deploy.plugins.linear_attention.ref import linear_attention_ref

__all__ = ["linear_attention", "linear_attention_op", "linear_attention_ref", "linear_attention_shape"]
