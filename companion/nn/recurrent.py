"""Recurrent sequence mixers: the Elman RNN and the GRU, in a fused and an unrolled form.

Elman RNN (Elman, "Finding Structure in Time", 1990)::

    h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)

GRU (Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder", 2014), in
PyTorch's convention (sigma is the logistic sigmoid, * is the elementwise product)::

    r_t = sigma(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)          reset gate
    z_t = sigma(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)          update gate
    n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))   candidate
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}

Both carry everything they know about the past in one vector ``h_t`` of fixed size, and step ``t``
cannot start before step ``t - 1`` has finished: the two facts the first chapter measures.
"""

from __future__ import annotations

import torch
from torch import nn


class Recurrent(nn.Module):
    """A one-layer recurrent mixer over ``(batch, seq, input_size)`` inputs.

    ``cell="rnn"`` is the Elman RNN, ``cell="gru"`` the GRU. ``forward`` runs PyTorch's fused
    ``nn.RNN``/``nn.GRU``; :meth:`unrolled` evaluates the equations in the module docstring one step
    at a time with the same weights, returning every hidden state as its own node of the autograd
    graph, so that the gradient reaching each step can be inspected.
    """

    def __init__(self, input_size: int, hidden_size: int, cell: str = "gru") -> None:
        super().__init__()
        if cell not in ("rnn", "gru"):
            raise ValueError(f"cell must be 'rnn' or 'gru', got {cell!r}")
        self.cell = cell
        self.hidden_size = hidden_size
        fused = nn.RNN if cell == "rnn" else nn.GRU
        kwargs = {"nonlinearity": "tanh"} if cell == "rnn" else {}
        self.fused = fused(input_size, hidden_size, batch_first=True, **kwargs)

    def _check(self, x: torch.Tensor, h0: torch.Tensor | None) -> None:
        if x.ndim != 3 or x.shape[1] < 1 or x.shape[-1] != self.fused.input_size:
            raise ValueError(
                f"expected input (batch, seq >= 1, {self.fused.input_size}), got shape {tuple(x.shape)}")
        if h0 is not None and tuple(h0.shape) != (x.shape[0], self.hidden_size):
            raise ValueError(
                f"expected h0 (batch, hidden) = {(x.shape[0], self.hidden_size)}, got shape {tuple(h0.shape)}")

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns all hidden states ``(batch, seq, hidden)`` and the last one ``(batch, hidden)``."""
        self._check(x, h0)
        outputs, last = self.fused(x, None if h0 is None else h0[None])
        return outputs, last[0]

    def step(self, x_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step of the recurrence: ``x_t`` ``(batch, input)``, ``h`` ``(batch, hidden)`` -> new ``h``."""
        w_ih, w_hh = self.fused.weight_ih_l0, self.fused.weight_hh_l0
        b_ih, b_hh = self.fused.bias_ih_l0, self.fused.bias_hh_l0
        gi = x_t @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        if self.cell == "rnn":
            return torch.tanh(gi + gh)
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * n + z * h

    def unrolled(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The hidden states ``[h_1, ..., h_T]``, each ``(batch, hidden)``, computed step by step."""
        self._check(x, h0)
        h = x.new_zeros(x.shape[0], self.hidden_size) if h0 is None else h0
        states = []
        for t in range(x.shape[1]):
            h = self.step(x[:, t], h)
            states.append(h)
        return states
