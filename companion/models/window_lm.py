"""A fixed-window neural language model (Bengio et al., "A Neural Probabilistic Language Model", 2003).

The next token is predicted from the embeddings of the previous ``window`` tokens, concatenated and
passed through one hidden layer::

    e_t = [E[x_{t-window+1}], ..., E[x_t]]          (window * dim numbers)
    logits_{t+1} = W_2 tanh(W_1 e_t + b_1) + b_2

Tokens before the start of the sequence are a learned padding embedding. The embedding table ``E``
is what chapter 1 inspects: tokens used in similar contexts end up near each other. It starts small
(normal with standard deviation 0.02, as GPT-2 initialises its embeddings) so that after a short run
its geometry reflects what was learned rather than the random starting point.
"""

from __future__ import annotations

import torch
from torch import nn


class WindowLM(nn.Module):
    """``ids`` ``(batch, seq)`` -> next-token logits ``(batch, seq, vocab_size)``."""

    def __init__(self, vocab_size: int, *, window: int = 6, dim: int = 32, hidden: int = 256,
                 init_std: float = 0.02) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if vocab_size < 1 or dim < 1 or hidden < 1:
            raise ValueError(f"vocab_size, dim and hidden must be positive, got {vocab_size}, {dim}, {hidden}")
        self.vocab_size = vocab_size
        self.window = window
        self.embed = nn.Embedding(vocab_size + 1, dim)  # the last row is the padding token
        nn.init.normal_(self.embed.weight, std=init_std)
        self.hidden = nn.Linear(window * dim, hidden)
        self.out = nn.Linear(hidden, vocab_size)

    @property
    def embeddings(self) -> torch.Tensor:
        """The learned embedding of each real token, ``(vocab_size, dim)``."""
        return self.embed.weight[: self.vocab_size]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype != torch.long or ids.ndim != 2:
            raise ValueError(f"expected (batch, seq) torch.long token ids, got {ids.dtype} {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        batch, seq = ids.shape
        pad = ids.new_full((batch, self.window - 1), self.vocab_size)
        padded = torch.cat([pad, ids], dim=1)
        # windows[:, t] = padded[:, t : t + window] = the tokens up to and including position t
        windows = padded.unfold(1, self.window, 1)
        e = self.embed(windows).flatten(2)
        return self.out(torch.tanh(self.hidden(e)))
