"""Choosing the next token from the model's logits: greedy, temperature, top-k and top-p.

* Greedy (``temperature=0``): the most likely token.
* Temperature ``T``: sample from ``softmax(logits / T)``; below 1 sharpens, above 1 flattens.
* Top-k (Fan et al., "Hierarchical Neural Story Generation", 2018): keep the ``k`` most likely tokens.
* Top-p, or nucleus sampling (Holtzman et al., "The Curious Case of Neural Text Degeneration",
  2020): keep the smallest set of most likely tokens whose probability adds up to at least ``p``.

Filters apply to the temperature-scaled logits, top-k first, then top-p.
"""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, *, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to ``-inf`` the logits ``(..., vocab)`` that top-k and top-p exclude (at least one survives)."""
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        k = min(top_k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens before it already reach top_p (so the first always stays)
        before = probs.cumsum(dim=-1) - probs
        drop_sorted = before >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of ``logits`` ``(batch, vocab)``: returns ``(batch,)``."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
