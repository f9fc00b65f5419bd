"""Kernels: each operation's PyTorch reference and (on CUDA) its Triton kernel, behind one function.

``attention`` is scaled dot-product attention with causal / sliding-window masks, ALiBi and
grouped-query heads; ``attention_mask`` is its boolean mask rule. ``rotary`` applies rotary position
embeddings (RoPE) to queries and keys in one pass. ``tiled_attention`` computes ``attention`` the
way FlashAttention does (tiles of keys, an online softmax) in plain PyTorch, for teaching.
``grouped_matmul`` multiplies each group of rows (tokens sorted by expert) by its own weight
matrix: the core of mixture-of-experts dispatch. ``selective_scan`` is Mamba's input-dependent
linear recurrence over a sequence (and ``selective_scan_step`` one step of it, for decoding).
"""

from companion.kernels.attention import attention, attention_mask
from companion.kernels.grouped_matmul import grouped_matmul
from companion.kernels.rotary import rotary
from companion.kernels.selective_scan import selective_scan, selective_scan_step
from companion.kernels.tiled_attention import tiled_attention

__all__ = ["attention", "attention_mask", "grouped_matmul", "rotary", "selective_scan", "selective_scan_step",
           "tiled_attention"]
