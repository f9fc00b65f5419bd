"""Routing for a mixture of experts: which experts see which tokens, with what weight, and the losses.

A router is one linear map ``W_r`` ``(width, E)`` from a token ``x_t`` to ``E`` logits
``h_t = x_t W_r`` (Shazeer et al., "Outrageously Large Neural Networks: The Sparsely-Gated
Mixture-of-Experts Layer", 2017). From the logits, two policies choose assignments ``(t, e, g)``,
"token ``t`` goes to expert ``e`` with gate ``g``":

* **token choice** (:func:`token_choice`): every token picks its top ``k`` experts. Softmax scores
  with ``k = 1`` are Switch (Fedus et al. 2022), with ``k = 2`` and the chosen weights renormalised
  Mixtral (Jiang et al. 2024); sigmoid scores, a selection-only bias and group-limited selection are
  DeepSeek-V3 (2024). Experts may receive any number of tokens, so a *capacity*
  (:func:`expert_capacity`, :func:`capacity_mask`; GShard, Lepikhin et al. 2021) may drop some.
* **expert choice** (:func:`expert_choice`; Zhou et al., "Mixture-of-Experts with Expert Choice
  Routing", 2022): every expert picks its top ``C`` tokens. Loads are equal by construction; a token
  may get several experts or none.

The losses (:func:`load_balancing_loss`, :func:`router_z_loss`) are added, times small
coefficients, to the training loss. Everything here works on flat tokens: logits ``(T, E)``.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["SCORING_FUNCS", "capacity_mask", "expert_capacity", "expert_choice", "group_limited_mask",
           "load_balancing_loss", "router_probabilities", "router_scores", "router_z_loss", "token_choice"]

SCORING_FUNCS = ("softmax", "sigmoid")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_logits(logits: object) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"expected router logits as a floating-point (tokens, experts) tensor, got {shape}")


def router_scores(logits: torch.Tensor, scoring_func: str = "softmax") -> torch.Tensor:
    """Token-to-expert affinities ``s_t,e`` ``(T, E)`` from the logits ``h_t,e``.

    ``"softmax"``: ``s_t,e = exp(h_t,e) / sum_j exp(h_t,j)`` (Shazeer 2017, Switch, Mixtral): the
    experts compete, each row sums to 1. ``"sigmoid"``: ``s_t,e = sigmoid(h_t,e)`` (DeepSeek-V3
    eq. 15): each expert's affinity on its own, so adding experts does not shrink the others.
    """
    _check_logits(logits)
    if scoring_func == "softmax":
        return torch.softmax(logits, dim=-1)
    if scoring_func == "sigmoid":
        return torch.sigmoid(logits)
    raise ValueError(f"expected scoring_func to be one of {SCORING_FUNCS}, got {scoring_func!r}")


def router_probabilities(scores: torch.Tensor, scoring_func: str = "softmax") -> torch.Tensor:
    """The router's distribution over experts per token ``(T, E)``, rows summing to 1.

    Softmax scores already are one; sigmoid scores are divided by their row sum, as DeepSeek-V3's
    sequence-wise balance loss does (eq. 19: ``s'_t,e = s_t,e / sum_j s_t,j``). This is the ``P``
    of :func:`load_balancing_loss`.
    """
    if scoring_func == "softmax":
        return scores
    if scoring_func == "sigmoid":
        return scores / scores.sum(dim=-1, keepdim=True)
    raise ValueError(f"expected scoring_func to be one of {SCORING_FUNCS}, got {scoring_func!r}")


def group_limited_mask(choice: torch.Tensor, n_group: int, topk_group: int) -> torch.Tensor:
    """Which experts each token may choose under group-limited routing: bool ``(T, E)``.

    DeepSeek-V3 (its released ``noaux_tc`` routing; DeepSeek-V2 section 2.1.2 introduced
    device-limited routing): the ``E`` experts are cut into ``n_group`` consecutive groups of
    ``E / n_group`` (one group per device or node, so a token's experts live on few of them). A
    group's score is the sum of its two highest selection scores (the one highest when a group holds
    one expert); each token keeps its ``topk_group`` best groups, and then picks its top-k experts
    inside them only::

        group_score_t,g = sum of the top-2 of {choice_t,e : e in group g}
        allowed_t,e     = group(e) in topk_g(group_score_t,g, topk_group)

    Args:
        choice: the selection scores ``(T, E)`` (with DeepSeek-V3's bias already added).
        n_group: groups; must divide ``E``.
        topk_group: groups kept per token, ``1 <= topk_group <= n_group``.
    """
    _check_logits(choice)
    tokens, experts = choice.shape
    if not _is_int(n_group) or n_group < 1 or experts % n_group:
        raise ValueError(f"expected n_group to be a positive int dividing the {experts} experts, got {n_group!r}")
    if not _is_int(topk_group) or not 1 <= topk_group <= n_group:
        raise ValueError(f"expected topk_group to be an int in [1, n_group={n_group}], got {topk_group!r}")
    per_group = experts // n_group
    grouped = choice.view(tokens, n_group, per_group)
    group_scores = grouped.topk(min(2, per_group), dim=-1).values.sum(dim=-1)      # (T, n_group)
    best_groups = group_scores.topk(topk_group, dim=-1).indices                    # (T, topk_group)
    keep = torch.zeros(tokens, n_group, dtype=torch.bool, device=choice.device)
    keep.scatter_(1, best_groups, True)
    return keep.repeat_interleave(per_group, dim=1)                                # (T, E)


def token_choice(logits: torch.Tensor, top_k: int, *, scoring_func: str = "softmax", norm_topk_prob: bool = True,
                 bias: torch.Tensor | None = None, n_group: int = 1, topk_group: int = 1,
                 routed_scaling_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-choice top-k routing: each token picks ``top_k`` experts.

    With ``s_t,e`` = :func:`router_scores` of the logits ``(T, E)``::

        choice_t,e = s_t,e + b_e                          b: DeepSeek-V3's bias, selection only (eq. 16)
        choice_t,e = -inf where not allowed               group-limited routing (group_limited_mask)
        K_t        = topk_e(choice_t,e, top_k)            the chosen experts
        g_t,e      = s_t,e                                for e in K_t (the bias never enters the gate)
        g_t,e      = g_t,e / sum_{j in K_t} g_t,j         if norm_topk_prob (Mixtral; DeepSeek-V3 eq. 13)
        g_t,e      = routed_scaling_factor * g_t,e        DeepSeek-V3 (2.5 in its config)

    Softmax scores, ``top_k = 1``, no renormalisation: Switch (Fedus et al. 2022, eq. 1-2).
    Softmax, ``top_k = 2``, renormalised: Mixtral (Jiang et al. 2024): ``softmax(top_k(h))``, which
    is the same as renormalising the softmax over all experts. Without renormalisation the gates keep
    their share of the whole softmax (Shazeer 2017's top-k gating, Qwen3-MoE, OLMoE).

    Returns ``(index, gate, scores)``: ``index`` ``(T, top_k)`` int64 the chosen experts, ``gate``
    ``(T, top_k)`` their weights (differentiable: the router learns through them), ``scores``
    ``(T, E)``.
    """
    scores = router_scores(logits, scoring_func)
    tokens, experts = scores.shape
    if not _is_int(top_k) or not 1 <= top_k <= experts:
        raise ValueError(f"expected top_k to be an int in [1, experts={experts}], got {top_k!r}")
    choice = scores
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (experts,):
            raise ValueError(f"expected bias of shape (experts,) = ({experts},), got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
        choice = scores.detach() + bias                                # DeepSeek-V3 eq. 16: selection only
    if n_group > 1:
        allowed = group_limited_mask(choice.detach(), n_group, topk_group)
        if top_k > topk_group * (experts // n_group):
            raise ValueError(f"expected top_k <= topk_group * experts per group = "
                             f"{topk_group * (experts // n_group)}, got top_k={top_k}")
        choice = choice.masked_fill(~allowed, -math.inf)
    index = choice.detach().topk(top_k, dim=-1).indices                # (T, top_k)
    gate = scores.gather(1, index)                                     # s_t,e of the chosen experts
    if norm_topk_prob:
        gate = gate / (gate.sum(dim=-1, keepdim=True) + 1e-20)         # renormalise over the chosen k
    if routed_scaling_factor != 1.0:
        gate = gate * routed_scaling_factor
    return index, gate, scores


def expert_capacity(tokens: int, top_k: int, experts: int, capacity_factor: float) -> int:
    """Assignments an expert may take: ``ceil(capacity_factor * tokens * top_k / experts)``.

    GShard (Lepikhin et al. 2021) and Switch (Fedus et al. 2022, eq. 3). A factor of 1 is exactly
    the load of perfectly balanced routing; above 1 leaves slack for imbalance (Switch trains with
    1.25). Never more than ``tokens`` (an expert sees a token at most once).
    """
    for name, value in (("tokens", tokens), ("top_k", top_k), ("experts", experts)):
        if not _is_int(value) or value < (0 if name == "tokens" else 1):
            raise ValueError(f"expected {name} to be a {'non-negative' if name == 'tokens' else 'positive'} int, "
                             f"got {value!r}")
    if (isinstance(capacity_factor, bool) or not isinstance(capacity_factor, numbers.Real)
            or not math.isfinite(capacity_factor) or capacity_factor <= 0):
        raise ValueError(f"expected capacity_factor to be a positive number, got {capacity_factor!r}")
    return min(tokens, math.ceil(capacity_factor * tokens * top_k / experts))


def capacity_mask(index: torch.Tensor, experts: int, capacity: int) -> torch.Tensor:
    """Which token-choice assignments fit their expert's capacity: bool, the shape of ``index`` ``(T, k)``.

    Priority (GShard's order, Lepikhin et al. 2021, Algorithm 1; as Switch and Mesh TensorFlow's
    top-2 gating): all first choices before any second choice, and among choices of the same rank,
    earlier tokens first (token order, flattened ``(batch, seq)``). An expert keeps its first
    ``capacity`` assignments in that order; the rest are dropped: the token gets nothing from that
    expert (only the residual connection carries it past the layer).
    """
    if not isinstance(index, torch.Tensor) or index.ndim != 2 or index.dtype != torch.long:
        raise ValueError("expected index as a (tokens, top_k) int64 tensor")
    if not _is_int(capacity) or capacity < 0:
        raise ValueError(f"expected capacity to be a non-negative int, got {capacity!r}")
    tokens, top_k = index.shape
    flat = index.t().reshape(-1)                                        # priority order: rank, then token
    order = torch.argsort(flat, stable=True)                            # by expert, priority kept within
    counts = torch.bincount(flat, minlength=experts)
    starts = counts.cumsum(0) - counts
    position = torch.empty_like(flat)
    position[order] = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]  # place in its queue
    return (position < capacity).view(top_k, tokens).t()


def expert_choice(logits: torch.Tensor, capacity: int, *,
                  scoring_func: str = "softmax") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Expert-choice routing (Zhou et al. 2022, section 3.1): each expert picks its top ``capacity`` tokens.

    With ``S = softmax(X W_r)`` ``(T, E)`` (token-to-expert affinities, softmax over experts)::

        G, I = topk(S^T, C)       (E, C): expert e takes tokens I[e] with gates G[e]
        y_t  = sum over (e, c) with I[e, c] = t of  G[e, c] * expert_e(x_t)

    ``C = T * c / E`` for an average of ``c`` experts per token (the paper's capacity factor; see
    :func:`expert_capacity`). Every expert is exactly full, with no balancing loss; a token may be
    taken by several experts or by none. The choice looks at every token of the batch at once,
    later positions included, so it is not causal: a decoder that uses it leaks information from
    the future within a batch and decodes differently one token at a time (the paper's noted
    limitation for autoregressive generation).

    Returns ``(token, gate, scores)``: ``token`` ``(E, C)`` int64, ``gate`` ``(E, C)``, ``scores`` ``(T, E)``.
    """
    scores = router_scores(logits, scoring_func)
    tokens = scores.shape[0]
    if not _is_int(capacity) or not 0 <= capacity <= tokens:
        raise ValueError(f"expected capacity to be an int in [0, tokens={tokens}], got {capacity!r}")
    gate, token = scores.t().topk(capacity, dim=-1)                     # (E, C) each
    return token, gate, scores


def load_balancing_loss(probs: torch.Tensor, expert_index: torch.Tensor) -> torch.Tensor:
    """The Switch Transformer's auxiliary load-balancing loss (Fedus et al. 2022, eq. 4-6).

    ::

        f_i  = (assignments to expert i) / (all assignments)     fraction of the load (not differentiable)
        P_i  = (1 / T) sum_t p_t,i                               mean router probability (differentiable)
        loss = E * sum_i f_i P_i

    ``f`` and ``P`` both sum to 1; the loss is 1 when routing is perfectly uniform and grows as the
    load concentrates on experts that also get high probability; its gradient pushes ``P`` down where
    ``f`` is high. Counted from the router's choices before any capacity drop. With ``top_k > 1``
    ``f`` is divided by ``T * top_k``, so the loss is still 1 at uniform; transformers'
    ``load_balancing_loss_func`` (Mixtral) divides by ``T`` only, which gives ``top_k`` times this.

    Args:
        probs: ``(T, E)`` each token's distribution over experts (:func:`router_probabilities`).
        expert_index: int64, any shape: the expert of every assignment.
    """
    _check_logits(probs)
    if not isinstance(expert_index, torch.Tensor) or expert_index.dtype != torch.long:
        raise ValueError("expected expert_index as an int64 tensor of expert numbers")
    experts = probs.shape[1]
    counts = torch.bincount(expert_index.reshape(-1), minlength=experts)
    fraction = counts.to(probs.dtype) / max(expert_index.numel(), 1)                 # f_i
    mean_prob = probs.mean(dim=0)                                                      # P_i
    return experts * (fraction * mean_prob).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """The router z-loss of ST-MoE (Zoph et al. 2022, eq. 5): ``(1/T) sum_t (log sum_e exp h_t,e)^2``.

    It keeps the router's logits small, where the exponentials of the softmax round well (in
    bfloat16 especially), which stabilised ST-MoE's training at no cost in quality (coefficient
    ``1e-3``). ``logits`` ``(T, E)``; a scalar.
    """
    _check_logits(logits)
    return torch.logsumexp(logits, dim=-1).square().mean()
