"""A mixture-of-experts feed-forward layer: a router, ``E`` SwiGLU experts, and optional shared experts.

Shazeer et al. ("Outrageously Large Neural Networks", 2017) replace one feed-forward network by
``E`` of them (the *experts*) and a router that sends each token to a few. Parameters grow with
``E``; the compute per token grows only with the number of experts it visits. For a token ``x_t``::

    y_t = sum_{e in K_t} g_t,e SwiGLU_e(x_t)  +  sum_{shared s} SwiGLU_s(x_t)
    SwiGLU_e(x) = (silu(x W_gate,e) * (x W_up,e)) W_down,e

with the chosen experts ``K_t`` and gates ``g_t,e`` from :mod:`companion.nn.router`: token-choice
top-k (Switch, Fedus et al. 2022; Mixtral, Jiang et al. 2024; DeepSeek-V3 2024 with sigmoid scores,
a selection-only bias and group-limited selection) or expert choice (Zhou et al. 2022). Shared
experts (DeepSeek-V3, eq. 12) see every token; ``n`` shared SwiGLUs of hidden size ``h`` are one
SwiGLU of hidden ``n h`` (their hidden units side by side), which is how they are stored.

Dispatch (:func:`moe_dispatch`) computes the sum above without a loop over tokens: the ``A``
assignments ``(token, expert, gate)`` are sorted by expert, the token rows gathered in that order,
each expert's three matrices applied to its contiguous block of rows by one grouped matrix multiply
(:func:`companion.kernels.grouped_matmul`, with the expert weights stacked ``(E, in, out)``), and
the rows scaled by their gates and added back to their tokens. :func:`moe_loop_reference` is the
textbook loop ("for each token, for each of its experts") that it must equal.

The layer's ``forward(x) -> y`` keeps the shape ``(..., width)`` (a feed-forward of
:class:`~companion.models.decoder.Decoder`); the auxiliary losses and the load of its last call are
left on the layer (``aux_loss``, ``balance_loss``, ``z_loss``, ``last_load``) for the training loss
to add: :func:`moe_aux_loss` sums them over a model.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from companion.kernels import grouped_matmul
from companion.nn.feedforward import SwiGLU
from companion.nn.router import (SCORING_FUNCS, capacity_mask, expert_capacity, expert_choice, load_balancing_loss,
                                 router_probabilities, router_z_loss, token_choice)

__all__ = ["MoE", "MoELoad", "MoEShape", "ROUTINGS", "Routing", "moe_aux_loss", "moe_dispatch", "moe_from_hf",
           "moe_layers", "moe_loop_reference", "update_moe_biases"]

ROUTINGS = ("token_choice", "expert_choice")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class MoEShape:
    """The sizes and routing policy of a mixture-of-experts layer (names as transformers' configs).

    Args:
        n_routed_experts: routed experts ``E`` (Mixtral's ``num_local_experts``).
        num_experts_per_tok: ``k``: experts per token (token choice); for expert choice, the average
            number of experts per token, which sets the capacity.
        moe_intermediate_size: hidden size of each routed expert's SwiGLU.
        n_shared_experts: experts every token goes through (DeepSeek-V3: 1).
        shared_intermediate_size: hidden size of each shared expert (None: ``moe_intermediate_size``).
        routing: ``"token_choice"`` (each token picks ``k`` experts) or ``"expert_choice"`` (each expert
            picks its tokens, Zhou et al. 2022).
        scoring_func: ``"softmax"`` (Switch, Mixtral) or ``"sigmoid"`` (DeepSeek-V3).
        norm_topk_prob: renormalise the chosen gates to sum to 1 (Mixtral, DeepSeek-V3); token choice only.
        n_group, topk_group: group-limited routing (DeepSeek-V3: 8 and 4); 1 and 1: no groups.
        routed_scaling_factor: multiplies the routed gates (DeepSeek-V3: 2.5).
        score_correction_bias: keep DeepSeek-V3's selection bias ``e_score_correction_bias`` (a buffer
            moved by :meth:`MoE.update_bias`: auxiliary-loss-free balancing); token choice only.
        capacity_factor: None: no capacity (token choice drops nothing; expert choice uses 1); else
            each expert takes at most ``ceil(capacity_factor * T * k / E)`` assignments per call.
        router_aux_loss_coef: weight of the load-balancing loss in ``aux_loss`` (Switch: 0.01).
        router_z_loss_coef: weight of the router z-loss in ``aux_loss`` (ST-MoE: 0.001).

    Mixtral 8x7B: ``MoEShape(8, 2, 14336)``. DeepSeek-V3: ``MoEShape(256, 8, 2048, n_shared_experts=1,
    scoring_func="sigmoid", n_group=8, topk_group=4, routed_scaling_factor=2.5,
    score_correction_bias=True, router_aux_loss_coef=0.0)``.
    """

    n_routed_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    n_shared_experts: int = 0
    shared_intermediate_size: int | None = None
    routing: str = "token_choice"
    scoring_func: str = "softmax"
    norm_topk_prob: bool = True
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    score_correction_bias: bool = False
    capacity_factor: float | None = None
    router_aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.001

    def __post_init__(self) -> None:
        for name in ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size", "n_group", "topk_group"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"MoEShape: expected {name} to be a positive int, got {value!r}")
        experts = self.n_routed_experts
        if self.num_experts_per_tok > experts:
            raise ValueError(f"MoEShape: expected num_experts_per_tok <= n_routed_experts ({experts}), "
                             f"got {self.num_experts_per_tok}")
        if not _is_int(self.n_shared_experts) or self.n_shared_experts < 0:
            raise ValueError(f"MoEShape: expected n_shared_experts to be a non-negative int, "
                             f"got {self.n_shared_experts!r}")
        if self.shared_intermediate_size is not None and (not _is_int(self.shared_intermediate_size)
                                                           or self.shared_intermediate_size < 1):
            raise ValueError(f"MoEShape: expected shared_intermediate_size to be None or a positive int, "
                             f"got {self.shared_intermediate_size!r}")
        if self.routing not in ROUTINGS:
            raise ValueError(f"MoEShape: expected routing to be one of {ROUTINGS}, got {self.routing!r}")
        if self.scoring_func not in SCORING_FUNCS:
            raise ValueError(f"MoEShape: expected scoring_func to be one of {SCORING_FUNCS}, got {self.scoring_func!r}")
        for name in ("norm_topk_prob", "score_correction_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"MoEShape: expected {name} to be a bool, got {getattr(self, name)!r}")
        if experts % self.n_group:
            raise ValueError(f"MoEShape: expected n_group to divide n_routed_experts ({experts}), got {self.n_group}")
        if self.topk_group > self.n_group:
            raise ValueError(f"MoEShape: expected topk_group <= n_group ({self.n_group}), got {self.topk_group}")
        if self.n_group > 1 and self.num_experts_per_tok > self.topk_group * (experts // self.n_group):
            raise ValueError(f"MoEShape: expected num_experts_per_tok <= topk_group * experts per group = "
                             f"{self.topk_group * (experts // self.n_group)}, got {self.num_experts_per_tok}")
        if self.routing == "expert_choice" and (self.n_group > 1 or self.score_correction_bias):
            raise ValueError("MoEShape: expert choice balances by construction: expected n_group=1 and "
                             "score_correction_bias=False with routing='expert_choice'")
        if self.capacity_factor is not None and (not _is_number(self.capacity_factor) or self.capacity_factor <= 0):
            raise ValueError(f"MoEShape: expected capacity_factor to be None or a positive number, "
                             f"got {self.capacity_factor!r}")
        for name in ("routed_scaling_factor", "router_aux_loss_coef", "router_z_loss_coef"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0 or (name == "routed_scaling_factor" and value == 0):
                raise ValueError(f"MoEShape: expected {name} to be a "
                                 f"{'positive' if name == 'routed_scaling_factor' else 'non-negative'} number, "
                                 f"got {value!r}")

    @property
    def shared_hidden(self) -> int:
        """Hidden size of the shared experts together: ``n_shared_experts * shared_intermediate_size``."""
        each = self.moe_intermediate_size if self.shared_intermediate_size is None else self.shared_intermediate_size
        return self.n_shared_experts * each


@dataclass
class Routing:
    """The assignments of one call: ``A`` triples ``(token[a], expert[a], gate[a])`` that are computed.

    ``logits`` and ``probs`` ``(T, E)`` are the router's logits and its distribution per token;
    ``chosen`` ``(E,)`` the assignments the router made per expert, ``dropped`` ``(E,)`` those the
    capacity removed (``chosen - dropped`` are computed); ``capacity`` None when unlimited.
    """

    token: torch.Tensor
    expert: torch.Tensor
    gate: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor
    chosen: torch.Tensor
    dropped: torch.Tensor
    capacity: int | None


@dataclass
class MoELoad:
    """Per-expert load of one call: ``counts`` (assignments computed), ``fraction`` (``counts`` over
    their sum), ``dropped`` (assignments beyond capacity), all ``(E,)``; ``tokens`` ``T``; ``capacity``."""

    counts: torch.Tensor
    fraction: torch.Tensor
    dropped: torch.Tensor
    tokens: int
    capacity: int | None


def moe_dispatch(x: torch.Tensor, token: torch.Tensor, expert: torch.Tensor, gate: torch.Tensor,
                 gate_proj: torch.Tensor, up_proj: torch.Tensor, down_proj: torch.Tensor) -> torch.Tensor:
    """``y_t = sum_{a: token[a] = t} gate[a] SwiGLU_expert[a](x_t)`` by sorting, grouped multiplies and a scatter.

    Args:
        x: ``(T, width)`` tokens.
        token, expert: ``(A,)`` int64: assignment ``a`` sends token ``token[a]`` to ``expert[a]``.
        gate: ``(A,)`` the weight of each assignment's output.
        gate_proj, up_proj: ``(E, width, hidden)``; down_proj: ``(E, hidden, width)``.

    Returns ``(T, width)``; a token with no assignment gets zeros.
    """
    experts = gate_proj.shape[0]
    order = torch.argsort(expert, stable=True)                        # 1. sort the assignments by expert
    sorted_token = token[order]
    rows = x.index_select(0, sorted_token)                            # 2. gather (A, width), expert 0's rows first
    sizes = torch.bincount(expert, minlength=experts)                 # rows per expert (E,)
    hidden = F.silu(grouped_matmul(rows, gate_proj, sizes)) * grouped_matmul(rows, up_proj, sizes)  # 3. SwiGLU_e
    out = grouped_matmul(hidden, down_proj, sizes) * gate[order].to(x.dtype)[:, None]
    return x.new_zeros(x.shape).index_add(0, sorted_token, out)      # 4. scatter-add back to the tokens


class MoE(nn.Module):
    """A mixture-of-experts feed-forward: ``forward(x)`` ``(..., width)`` -> ``(..., width)``.

    Parameters: ``router`` (``nn.Linear(width, E)``, transformers' ``gate``), the stacked experts
    ``gate_proj``, ``up_proj`` ``(E, width, hidden)`` and ``down_proj`` ``(E, hidden, width)``,
    ``shared`` (a :class:`~companion.nn.feedforward.SwiGLU`, or None); buffer
    ``e_score_correction_bias`` ``(E,)`` float32 when ``shape.score_correction_bias``.

    After each call: ``aux_loss`` = ``router_aux_loss_coef * balance_loss + router_z_loss_coef *
    z_loss`` (scalar tensors in the autograd graph), ``last_load`` (a :class:`MoELoad`) and
    ``last_routing`` (the :class:`Routing`). The router runs in at least float32 (ST-MoE's
    selective precision: the softmax of bfloat16 logits routes badly).

    Capacity and expert choice make a token's output depend on the other tokens of the call: then
    decoding one token at a time (with a cache) need not equal running the whole sequence.
    """

    def __init__(self, width: int, shape: MoEShape, *, init_std: float = 0.02, out_std: float | None = None) -> None:
        super().__init__()
        if not _is_int(width) or width < 1:
            raise ValueError(f"MoE: expected width to be a positive int, got {width!r}")
        if not isinstance(shape, MoEShape):
            raise ValueError(f"MoE: expected shape to be a MoEShape, got {type(shape).__name__}")
        self.width, self.shape = width, shape
        experts, hidden = shape.n_routed_experts, shape.moe_intermediate_size
        self.router = nn.Linear(width, experts, bias=False)
        self.gate_proj = nn.Parameter(torch.empty(experts, width, hidden))
        self.up_proj = nn.Parameter(torch.empty(experts, width, hidden))
        self.down_proj = nn.Parameter(torch.empty(experts, hidden, width))
        self.shared = SwiGLU(width, shape.shared_hidden) if shape.n_shared_experts else None
        bias = torch.zeros(experts, dtype=torch.float32) if shape.score_correction_bias else None
        self.register_buffer("e_score_correction_bias", bias)
        self.register_buffer("pending_load", torch.zeros(experts, dtype=torch.long), persistent=False)
        self.aux_loss = self.balance_loss = self.z_loss = None
        self.last_load: MoELoad | None = None
        self.last_routing: Routing | None = None
        self.reset_parameters(init_std, out_std)

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02, out_std: float | None = None) -> None:
        """Normal(0, std) weights; ``out_std`` (default ``std``) for the down-projections."""
        out_std = std if out_std is None else out_std
        for param in (self.router.weight, self.gate_proj, self.up_proj):
            nn.init.normal_(param, std=std)
        nn.init.normal_(self.down_proj, std=out_std)
        if self.shared is not None:
            for linear, s in ((self.shared.gate, std), (self.shared.up, std), (self.shared.down, out_std)):
                nn.init.normal_(linear.weight, std=s)

    def route(self, x: torch.Tensor) -> Routing:
        """The assignments for tokens ``x`` ``(T, width)`` under ``self.shape``'s policy (nothing recorded)."""
        shape, experts = self.shape, self.shape.n_routed_experts
        dtype = torch.promote_types(x.dtype, torch.float32)
        logits = F.linear(x.to(dtype), self.router.weight.to(dtype))             # h_t = x_t W_r  (T, E)
        tokens, k = x.shape[0], shape.num_experts_per_tok
        if shape.routing == "expert_choice":
            capacity = expert_capacity(tokens, k, experts, shape.capacity_factor or 1.0)   # C = ceil(c T k / E)
            token, gate, scores = expert_choice(logits, capacity, scoring_func=shape.scoring_func)
            expert = torch.arange(experts, device=x.device).repeat_interleave(capacity)
            chosen = torch.full((experts,), capacity, dtype=torch.long, device=x.device)
            token, gate = token.reshape(-1), gate.reshape(-1) * shape.routed_scaling_factor
            dropped = torch.zeros_like(chosen)
        else:
            index, gate, scores = token_choice(
                logits, k, scoring_func=shape.scoring_func, norm_topk_prob=shape.norm_topk_prob,
                bias=self.e_score_correction_bias, n_group=shape.n_group, topk_group=shape.topk_group,
                routed_scaling_factor=shape.routed_scaling_factor)
            token = torch.arange(tokens, device=x.device).repeat_interleave(k)  # row-major, as index.reshape(-1)
            expert, gate = index.reshape(-1), gate.reshape(-1)
            chosen = torch.bincount(expert, minlength=experts)
            capacity = None
            if shape.capacity_factor is not None:                                 # GShard / Switch capacity
                capacity = expert_capacity(tokens, k, experts, shape.capacity_factor)
                kept = capacity_mask(index, experts, capacity).reshape(-1)
                token, expert, gate = token[kept], expert[kept], gate[kept]
            dropped = chosen - torch.bincount(expert, minlength=experts)
        return Routing(token, expert, gate, logits, router_probabilities(scores, shape.scoring_func),
                       chosen, dropped, capacity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != self.width:
            raise ValueError(f"MoE: expected x of shape (..., width={self.width}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        flat = x.reshape(-1, self.width)
        routing = self.route(flat)
        y = moe_dispatch(flat, routing.token, routing.expert, routing.gate, self.gate_proj, self.up_proj,
                         self.down_proj)
        if self.shared is not None:
            y = y + self.shared(flat)                                     # DeepSeek-V3 eq. 12: shared experts
        self._record(routing, flat.shape[0])
        return y.view(x.shape)

    def _record(self, routing: Routing, tokens: int) -> None:
        """Leave the auxiliary losses and the load of this call on the layer."""
        shape = self.shape
        all_chosen = torch.repeat_interleave(torch.arange(shape.n_routed_experts, device=routing.chosen.device),
                                             routing.chosen)              # every assignment, dropped or not
        self.balance_loss = load_balancing_loss(routing.probs, all_chosen)  # Switch: E sum_i f_i P_i
        self.z_loss = router_z_loss(routing.logits)                         # ST-MoE: mean (logsumexp h)^2
        self.aux_loss = shape.router_aux_loss_coef * self.balance_loss + shape.router_z_loss_coef * self.z_loss
        counts = routing.chosen - routing.dropped
        self.last_load = MoELoad(counts, counts / counts.sum().clamp(min=1), routing.dropped, tokens,
                                 routing.capacity)
        self.last_routing = routing
        if self.training and self.e_score_correction_bias is not None:
            self.pending_load += counts

    @torch.no_grad()
    def update_bias(self, speed: float = 1e-3, counts: torch.Tensor | None = None) -> None:
        """Auxiliary-loss-free balancing (DeepSeek-V3 section 2.1.2, eq. 16): ``b_e += speed * sign(mean(c) - c_e)``.

        At the end of each training step the bias of an overloaded expert (load ``c_e`` above the
        mean) goes down by ``speed`` (the paper's ``gamma``, 0.001) and that of an underloaded one up,
        outside the gradient. ``counts`` ``(E,)`` default to the loads counted by training-mode calls
        since the last update (then reset).
        """
        if self.e_score_correction_bias is None:
            raise ValueError("MoE.update_bias: this layer has no bias; expected MoEShape(score_correction_bias=True)")
        if not _is_number(speed) or speed < 0:
            raise ValueError(f"MoE.update_bias: expected speed to be a non-negative number, got {speed!r}")
        if counts is None:
            counts = self.pending_load.clone()
            self.pending_load.zero_()
        counts = counts.to(torch.float32)
        if counts.sum() > 0:
            self.e_score_correction_bias += speed * torch.sign(counts.mean() - counts)


def moe_loop_reference(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """The textbook loop: for each token, for each of its experts, run that expert and add its weighted output.

    Uses ``layer``'s routing (:meth:`MoE.route`, capacity included); ``x`` ``(..., width)``. Slow, and
    the definition :func:`moe_dispatch` must equal.
    """
    flat = x.reshape(-1, layer.width)
    routing = layer.route(flat)
    y = torch.zeros_like(flat)
    for t in range(flat.shape[0]):                                        # for each token
        for a in torch.nonzero(routing.token == t).flatten().tolist():    # for each expert it goes to
            e = int(routing.expert[a])
            hidden = F.silu(flat[t] @ layer.gate_proj[e]) * (flat[t] @ layer.up_proj[e])
            y[t] = y[t] + routing.gate[a].to(flat.dtype) * (hidden @ layer.down_proj[e])
        if layer.shared is not None:
            y[t] = y[t] + layer.shared(flat[t])
    return y.view(x.shape)


def moe_layers(model: nn.Module) -> list[MoE]:
    """Every :class:`MoE` inside ``model``, in module order."""
    return [module for module in model.modules() if isinstance(module, MoE)]


def moe_aux_loss(model: nn.Module) -> torch.Tensor:
    """The sum of the ``aux_loss`` of every MoE layer of ``model`` from its last call (0 if none).

    Add it to the training loss after the forward pass: ``loss = next_token_loss(...) + moe_aux_loss(model)``.
    """
    losses = [layer.aux_loss for layer in moe_layers(model) if layer.aux_loss is not None]
    if not losses:
        param = next(model.parameters(), None)
        return torch.zeros((), device=param.device if param is not None else None)
    return sum(losses[1:], losses[0])


def update_moe_biases(model: nn.Module, speed: float = 1e-3) -> None:
    """:meth:`MoE.update_bias` for every MoE layer of ``model`` that has a selection bias (call after each step)."""
    for layer in moe_layers(model):
        if layer.e_score_correction_bias is not None:
            layer.update_bias(speed)


_HF_BLOCKS = ("MixtralSparseMoeBlock", "Qwen3MoeSparseMoeBlock", "DeepseekV3MoE")


@torch.no_grad()
def moe_from_hf(block: nn.Module, config) -> MoE:
    """Convert transformers' ``MixtralSparseMoeBlock``, ``Qwen3MoeSparseMoeBlock`` or ``DeepseekV3MoE``.

    transformers (5.x) stacks each block's experts as ``gate_up_proj`` ``(E, 2 hidden, width)``
    (gate rows, then up rows) and ``down_proj`` ``(E, width, hidden)``, the layout of ``nn.Linear``
    weights; here they are ``(E, in, out)``, so each is transposed. Returns a :class:`MoE` in the
    block's dtype with the ``config``'s policy (aux-loss coefficients from the config when it has them).
    """
    kind = type(block).__name__
    if kind not in _HF_BLOCKS:
        raise ValueError(f"moe_from_hf: expected one of {_HF_BLOCKS}, got {kind}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"moe_from_hf: expected hidden_act='silu' (SwiGLU experts), got {config.hidden_act!r}")
    aux = dict(router_aux_loss_coef=getattr(config, "router_aux_loss_coef", 0.0) or 0.0, router_z_loss_coef=0.0)
    if kind == "MixtralSparseMoeBlock":
        shape = MoEShape(config.num_local_experts, config.num_experts_per_tok, config.intermediate_size, **aux)
    elif kind == "Qwen3MoeSparseMoeBlock":
        shape = MoEShape(config.num_experts, config.num_experts_per_tok, config.moe_intermediate_size,
                         norm_topk_prob=bool(config.norm_topk_prob), **aux)
    else:
        shape = MoEShape(config.n_routed_experts, config.num_experts_per_tok, config.moe_intermediate_size,
                         n_shared_experts=config.n_shared_experts, scoring_func="sigmoid",
                         norm_topk_prob=bool(config.norm_topk_prob), n_group=config.n_group,
                         topk_group=config.topk_group, routed_scaling_factor=float(config.routed_scaling_factor),
                         score_correction_bias=True, **aux)
    gate_up, down = block.experts.gate_up_proj, block.experts.down_proj
    hidden = shape.moe_intermediate_size
    layer = MoE(config.hidden_size, shape).to(gate_up.dtype)
    layer.router.weight.copy_(block.gate.weight)
    layer.gate_proj.copy_(gate_up[:, :hidden].transpose(1, 2))
    layer.up_proj.copy_(gate_up[:, hidden:].transpose(1, 2))
    layer.down_proj.copy_(down.transpose(1, 2))
    if kind == "DeepseekV3MoE":
        layer.e_score_correction_bias = block.gate.e_score_correction_bias.detach().float().clone()
        if layer.shared is not None:
            mlp = block.shared_experts
            layer.shared.load_separate(mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    return layer
