"""Batches for language modelling: random windows of a token stream and the next token of each."""

from __future__ import annotations

from typing import Sequence

import torch


def as_token_tensor(ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """A 1-D ``torch.long`` tensor of token ids (from a list of ints or a tensor)."""
    tensor = torch.as_tensor(ids, dtype=torch.long)
    if tensor.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of token ids, got shape {tuple(tensor.shape)}")
    return tensor


def lm_batch(tokens: torch.Tensor, *, batch_size: int, context: int,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``context`` tokens and, for each position, the next token.

    Returns ``inputs`` and ``targets``, both ``(batch_size, context)``, with
    ``targets[:, t] == tokens[start + t + 1]`` for ``inputs[:, t] == tokens[start + t]``.
    """
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    if context < 1 or batch_size < 1:
        raise ValueError(f"batch_size and context must be positive, got {batch_size} and {context}")
    if tokens.numel() <= context:
        raise ValueError(f"need more than context={context} tokens, got {tokens.numel()}")
    starts = torch.randint(0, tokens.numel() - context, (batch_size,), generator=generator)
    offsets = torch.arange(context + 1)
    windows = tokens[starts[:, None] + offsets]
    return windows[:, :-1], windows[:, 1:]


def lm_windows(tokens: torch.Tensor, *, context: int, max_windows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive, non-overlapping windows covering ``tokens`` (for a deterministic evaluation).

    Returns ``inputs`` and ``targets`` ``(windows, context)``; at most ``max_windows`` windows.
    """
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    if context < 1:
        raise ValueError(f"context must be positive, got {context}")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be None or positive, got {max_windows}")
    count = (tokens.numel() - 1) // context
    if max_windows is not None:
        count = min(count, max_windows)
    if count < 1:
        raise ValueError(f"need more than context={context} tokens, got {tokens.numel()}")
    used = tokens[: count * context + 1]
    return used[:-1].view(count, context), used[1:].view(count, context)
