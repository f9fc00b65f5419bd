"""The key-value cache: what a decoder remembers between generation steps.

When a decoder generates one token at a time, the keys and values of earlier positions do not
change (a causal model's position ``t`` never looks ahead), so they are computed once and stored.
Each step then computes only the new token's query, key and value. The cache is allocated up front
for ``max_length`` positions, so a step writes in place instead of concatenating tensors.

Memory: ``2 * layers * batch * kv_heads * max_length * head_dim`` numbers; it grows linearly with
the context (chapter 4 measures it for real models).
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values per layer, ``(batch, kv_heads, max_length, head_dim)`` each, filled left to right.

    A layer calls :meth:`update` with the new positions' keys and values and gets back the keys and
    values of every position so far; the model calls :meth:`advance` once all layers have run.
    """

    def __init__(self, batch: int, max_length: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        if batch < 1 or max_length < 1:
            raise ValueError(f"batch and max_length must be positive, got {batch} and {max_length}")
        self.batch, self.max_length = batch, max_length
        self.dtype, self.device = dtype, torch.device(device)
        self.length = 0
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` ``(batch, kv_heads, new, head_dim)`` after the cached positions of ``layer``."""
        batch, heads, new, head_dim = k.shape
        if batch != self.batch:
            raise ValueError(f"the cache was made for batch {self.batch}, got keys for batch {batch}")
        end = self.length + new
        if end > self.max_length:
            raise ValueError(f"the cache holds {self.max_length} positions; {self.length} are used and "
                             f"{new} more were given")
        if layer not in self.keys:
            shape = (batch, heads, self.max_length, head_dim)
            self.keys[layer] = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.values[layer] = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, new: int) -> None:
        """Mark ``new`` more positions as stored (called once per forward pass, after every layer)."""
        self.length += new

    def nbytes(self) -> int:
        """Bytes allocated for keys and values."""
        return sum(t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values()))
