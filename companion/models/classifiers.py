"""Sequence classifiers for chapter 1: one that ignores order and one that reads in order."""

from __future__ import annotations

import torch
from torch import nn

from companion.nn.recurrent import Recurrent


def _check_ids(ids: torch.Tensor, vocab_size: int) -> None:
    if ids.dtype != torch.long or ids.ndim != 2:
        raise ValueError(f"expected token ids as a (batch, seq) torch.long tensor, got {ids.dtype} {tuple(ids.shape)}")
    if ids.shape[1] == 0:
        raise ValueError("expected at least one token per sequence, got seq = 0")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got [{int(ids.min())}, {int(ids.max())}]")


class BagOfWordsClassifier(nn.Module):
    """Average the token embeddings, then a small MLP: sees which tokens occur, not where.

    ``ids`` ``(batch, seq)`` -> logits ``(batch, num_classes)``. Any permutation of a sequence gives
    the same output (checked in the tests), which is what "bag of words" means.
    """

    def __init__(self, vocab_size: int, dim: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, dim)
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        _check_ids(ids, self.vocab_size)
        return self.head(self.embed(ids).mean(dim=1))


class RecurrentClassifier(nn.Module):
    """Embed, run an Elman RNN or a GRU over the sequence, classify from the last hidden state.

    ``ids`` ``(batch, seq)`` -> logits ``(batch, num_classes)``.
    """

    def __init__(self, vocab_size: int, dim: int, hidden: int, num_classes: int, cell: str = "gru") -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, dim)
        self.mixer = Recurrent(dim, hidden, cell=cell)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        _check_ids(ids, self.vocab_size)
        _, last = self.mixer(self.embed(ids))
        return self.head(last)

    def unrolled_states(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and every hidden state, computed step by step (for gradients through time)."""
        _check_ids(ids, self.vocab_size)
        states = self.mixer.unrolled(self.embed(ids))
        return self.head(states[-1]), states
