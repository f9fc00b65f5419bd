"""Kernels: each operation's PyTorch reference and (on CUDA) its Triton kernel, behind one function.

``attention`` is scaled dot-product attention with causal / sliding-window masks, ALiBi and
grouped-query heads; ``attention_mask`` is its boolean mask rule.
"""

from companion.kernels.attention import attention, attention_mask

__all__ = ["attention", "attention_mask"]
