"""The key-value cache: what a decoder remembers between generation steps.

When a decoder generates one token at a time, the keys and values of earlier positions do not
change (a causal model's position ``t`` never looks ahead), so they are computed once and stored.
Each step then computes only the new token's query, key and value. The cache is allocated up front
for ``max_length`` positions, so a step writes in place instead of concatenating tensors.

Memory: ``2 * layers * batch * kv_heads * max_length * head_dim`` numbers; it grows linearly with
the context (chapter 4 measures it for real models).

A recurrent mixer (linear attention in chapter 5, state space layers in chapter 7) remembers the
past differently: in a state of fixed size that each step reads and replaces. The same cache holds
those states too, one tuple of tensors per layer (:meth:`KVCache.state`, :meth:`KVCache.set_state`),
so that a model mixing both kinds of layer (a hybrid) carries one cache. A state's memory does not
depend on ``max_length`` or on how many positions have been seen.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values per layer, ``(batch, kv_heads, max_length, head_dim)`` each, filled left to right.

    A layer calls :meth:`update` with the new positions' keys and values and gets back the keys and
    values of every position so far; the model calls :meth:`advance` once all layers have run.

    A recurrent layer instead reads its state with :meth:`state` (``None`` before the first call)
    and stores the new one with :meth:`set_state`: a tuple of tensors whose first dimension is the
    batch, replaced whole at every call (so its memory stays constant). It calls :meth:`check_room`
    first, so that the cache's ``max_length`` bounds every kind of layer alike. :meth:`nbytes` counts
    keys, values and states.
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
        self.states: dict[int, tuple[torch.Tensor, ...]] = {}

    def check_room(self, new: int) -> None:
        """Raise ``ValueError`` unless ``new`` more positions fit after the ``length`` already used."""
        if self.length + new > self.max_length:
            raise ValueError(f"the cache holds {self.max_length} positions; {self.length} are used and "
                             f"{new} more were given")

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` ``(batch, kv_heads, new, head_dim)`` after the cached positions of ``layer``."""
        batch, heads, new, head_dim = k.shape
        if batch != self.batch:
            raise ValueError(f"the cache was made for batch {self.batch}, got keys for batch {batch}")
        self.check_room(new)
        end = self.length + new
        if layer not in self.keys:
            shape = (batch, heads, self.max_length, head_dim)
            self.keys[layer] = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.values[layer] = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def state(self, layer: int) -> tuple[torch.Tensor, ...] | None:
        """The recurrent state stored for ``layer`` by :meth:`set_state`, or ``None`` if there is none yet."""
        return self.states.get(layer)

    def set_state(self, layer: int, state: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> None:
        """Store ``state`` (a tuple of tensors, each ``(batch, ...)``) as ``layer``'s recurrent state.

        It replaces the previous state of that layer (the tensors are kept, not copied). Their dtype
        and device are the layer's choice (a state is often kept in higher precision than the model).
        """
        if (not isinstance(state, (tuple, list)) or not state
                or not all(isinstance(t, torch.Tensor) for t in state)):
            raise ValueError(f"a state must be a non-empty tuple of tensors, got {type(state).__name__}"
                             + ("" if not isinstance(state, (tuple, list))
                                else f" of {[type(t).__name__ for t in state]}"))
        for t in state:
            if t.ndim == 0 or t.shape[0] != self.batch:
                raise ValueError(f"the cache was made for batch {self.batch}; every state tensor must be "
                                 f"(batch, ...), got shape {tuple(t.shape)}")
        self.states[layer] = tuple(state)

    def advance(self, new: int) -> None:
        """Mark ``new`` more positions as stored (called once per forward pass, after every layer)."""
        self.length += new

    def nbytes(self) -> int:
        """Bytes allocated for keys, values and recurrent states."""
        states = (t for state in self.states.values() for t in state)
        return sum(t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values(), *states))
