"""Mix-FFN (GLUMBConv), reference + custom op."""

from sana_deploy.plugins.mix_ffn.op import mix_ffn, mix_ffn_op, mix_ffn_shape
from sana_deploy.plugins.mix_ffn.ref import mix_ffn_ref

__all__ = ["mix_ffn", "mix_ffn_op", "mix_ffn_ref", "mix_ffn_shape"]

from sana_deploy.plugins.registry import register_kernel  # noqa: E402
from sana_deploy.plugins.triton_utils import has_triton  # noqa: E402

if has_triton():  # the ``triton`` kernel set; without Triton the op falls back to its reference
    from sana_deploy.plugins.mix_ffn.triton_op import mix_ffn_triton_impl

    register_kernel("mix_ffn", "triton", mix_ffn_triton_impl)
