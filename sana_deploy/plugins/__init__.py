"""Sana's two non-standard ops, each a PyTorch reference plus optional kernels, exposed as torch custom ops.

``sana::linear_attention`` and ``sana::mix_ffn`` are the contract shared by the torch model, the ONNX
local functions ``sana.LinearAttention`` / ``sana.MixFFN`` (export/onnx_functions.py) and the TensorRT
plugins. Which implementation the custom ops run is chosen with :func:`use_kernels`.
"""

from sana_deploy.plugins.registry import KERNEL_CHOICES, active_kernels, register_kernel, use_kernels

__all__ = ["KERNEL_CHOICES", "active_kernels", "register_kernel", "use_kernels"]
