"""Mix-FFN (GLUMBConv), reference + custom op."""

from sana_deploy.plugins.mix_ffn.op import mix_ffn, mix_ffn_op, mix_ffn_shape
from sana_deploy.plugins.mix_ffn.ref import mix_ffn_ref

__all__ = ["mix_ffn", "mix_ffn_op", "mix_ffn_ref", "mix_ffn_shape"]
