"""Expert parallelism: a mixture-of-experts layer whose experts are split over processes, tokens moved by all-to-all.

A :class:`~companion.nn.moe.MoE` with ``E`` experts holds ``E`` times the feed-forward parameters,
too many for one device in the models that use it. GShard (Lepikhin et al., "GShard: Scaling Giant
Models with Conditional Computation and Automatic Sharding", 2021, section 2.2 and Figure 3) puts
``E / P`` experts on each of ``P`` devices and moves the *tokens* to the experts instead: every
device routes its own tokens, and one all-to-all sends each token's row to the device that holds its
expert (*dispatch*), a second all-to-all brings the results home (*combine*). Switch Transformers
(Fedus et al. 2022, section 2.2 and Figure 9, "expert and data parallelism") shard the same way, with
the non-expert weights (here the router and the shared experts) replicated as in data parallelism.

With ``P`` ranks, ``E_local = E / P`` experts on each (rank ``r`` holds experts
``r E_local ... (r + 1) E_local - 1``), ``T`` tokens ``(T, width)`` and ``k`` experts per token on
every rank, one forward call on rank ``r`` does::

    route          (token, expert, gate)   (A,) each, A = T k      the replicated router, MoE.route
    sort           by expert, so by destination rank               as moe_dispatch does
    counts         c[e]  (E,) = (P, E_local)                       rows this rank sends to each expert
    all-to-all 1   c -> c_in  (P, E_local)                         c_in[s, j]: rows rank s sends to local expert j
    all-to-all 2   rows x[token]  (A, width) -> (R, width)         R = sum c_in: dispatch, split by rank
    regroup        (source rank, local expert) -> (local expert, source rank)
    experts        SwiGLU_j on each local expert's block            grouped_matmul, as moe_dispatch
    all-to-all 3   (R, width) -> (A, width)                        combine: the inverse exchange
    scatter        y_t = sum_a gate[a] out[a] + shared(x_t)        gates applied at home, as moe_dispatch

The gates never travel: the expert outputs come back unscaled and are weighted where the router ran,
so the router's gradient stays on its rank. The all-to-alls are differentiable (:class:`AllToAll`:
the backward pass is the same exchange with the split sizes swapped), so the gradient of a loss on
every rank's output reaches each rank's local experts (from every rank's tokens) and each rank's
inputs. The replicated router and shared experts get the gradient of their own rank's tokens only:
sum them over the ranks (:meth:`ExpertParallelMoE.reduce_replicated_grads`) as data parallelism does.

Bytes. One call on rank ``r`` sends, to the other ranks, ``sum_{s != r} c_r[s]`` rows in the dispatch
and gets back as many in the combine; it receives ``sum_{s != r} c_s[r]`` rows in the dispatch and
returns as many in the combine; each row is ``width * element_size`` bytes; and the counts cost
``(P - 1) E_local`` int64 each way (:class:`ExchangeBytes`, :func:`exchange_bytes`). Under balanced
routing ``c_r[s] = T k / P``, so each rank sends ``2 T k (P - 1) / P * width * element_size`` bytes of
rows per forward call: proportional to tokens and top-k, and independent of the number of experts
(which enters only through the counts). The backward pass moves the same rows again.

Only token-choice routing without capacity is supported (the layer's policy otherwise: softmax or
sigmoid scores, renormalisation, DeepSeek-V3's selection bias and group-limited routing); expert
choice (whose choice needs every rank's tokens) and a capacity factor (whose drops depend on the
token order across ranks) raise ``ValueError``. The same code runs on NCCL (CUDA tensors) and gloo
(CPU tensors): pick the backend with :func:`backend_for`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from companion.kernels import grouped_matmul
from companion.nn.moe import MoE, Routing

__all__ = ["AllToAll", "COUNT_BYTES", "ExchangeBytes", "ExpertParallelMoE", "all_to_all", "backend_for",
           "exchange_bytes", "split_sizes"]

COUNT_BYTES = torch.empty((), dtype=torch.long).element_size()   # one int64 count: 8 bytes


def backend_for(device: torch.device | str) -> str:
    """The process-group backend for tensors on ``device``: ``"nccl"`` for CUDA, ``"gloo"`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def split_sizes(expert: torch.Tensor, experts: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """How many assignment rows go to each expert and to each rank.

    Args:
        expert: ``(A,)`` int64 the expert of every assignment, in ``[0, experts)``.
        experts: ``E``; ``world``: ``P`` ranks, dividing ``E``; rank ``r`` holds experts
            ``[r E/P, (r + 1) E/P)``.

    Returns ``(per_expert, per_rank)``: ``per_expert`` ``(E,)`` int64 (``bincount``), viewed
    ``(P, E/P)`` it is the counts one all-to-all exchanges; ``per_rank`` ``(P,)`` its row sums, the
    send split sizes of the dispatch (the assignments sorted by expert are then sorted by rank).
    """
    if not isinstance(expert, torch.Tensor) or expert.ndim != 1 or expert.dtype != torch.long:
        raise ValueError("split_sizes: expected expert as a (assignments,) int64 tensor")
    if not isinstance(world, int) or world < 1 or not isinstance(experts, int) or experts < 1 or experts % world:
        raise ValueError(f"split_sizes: expected positive ints with world dividing experts, got experts={experts!r}, "
                         f"world={world!r}")
    if expert.numel() and (int(expert.min()) < 0 or int(expert.max()) >= experts):
        raise ValueError(f"split_sizes: expected expert numbers in [0, {experts}), got "
                         f"[{int(expert.min())}, {int(expert.max())}]")
    per_expert = torch.bincount(expert, minlength=experts)
    return per_expert, per_expert.view(world, experts // world).sum(dim=1)


@dataclass
class ExchangeBytes:
    """The bytes one rank moves to and from the other ranks in one call of :class:`ExpertParallelMoE`.

    ``rows_sent[s]``: assignment rows this rank (``rank``) dispatches to rank ``s``;
    ``rows_received[s]``: rows it receives from rank ``s`` (both ``(P,)``, its own entry included:
    those rows stay on the rank, a copy, and count as no traffic). A row is ``width * element_size``
    bytes; every rank exchanges ``E_local = local_experts`` int64 counts with every other rank.

    Forward (these properties)::

        dispatch_sent     = sum_{s != rank} rows_sent[s]     * width * element_size
        dispatch_received = sum_{s != rank} rows_received[s] * width * element_size
        combine_sent      = dispatch_received                 (the results go back where they came from)
        combine_received  = dispatch_sent
        counts_sent       = counts_received = (P - 1) * local_experts * 8
        sent     = dispatch_sent + combine_sent + counts_sent
        received = dispatch_received + combine_received + counts_received

    ``backward_sent``/``backward_received`` are added up by the backward pass of the exchanges as it
    runs (0 until then): with gradients for the inputs, the same rows as the forward's, mirrored.
    """

    rank: int
    rows_sent: tuple[int, ...]
    rows_received: tuple[int, ...]
    width: int
    element_size: int
    local_experts: int
    backward_sent: int = 0
    backward_received: int = 0

    @property
    def world(self) -> int:
        return len(self.rows_sent)

    def _remote(self, rows: tuple[int, ...]) -> int:
        return sum(n for s, n in enumerate(rows) if s != self.rank) * self.width * self.element_size

    @property
    def dispatch_sent(self) -> int:
        return self._remote(self.rows_sent)

    @property
    def dispatch_received(self) -> int:
        return self._remote(self.rows_received)

    @property
    def combine_sent(self) -> int:
        return self.dispatch_received

    @property
    def combine_received(self) -> int:
        return self.dispatch_sent

    @property
    def counts_sent(self) -> int:
        return (self.world - 1) * self.local_experts * COUNT_BYTES

    counts_received = counts_sent

    @property
    def sent(self) -> int:
        """Forward bytes this rank sends to the other ranks: dispatch, combine and counts."""
        return self.dispatch_sent + self.combine_sent + self.counts_sent

    @property
    def received(self) -> int:
        """Forward bytes this rank receives from the other ranks: dispatch, combine and counts."""
        return self.dispatch_received + self.combine_received + self.counts_received

    @property
    def local_rows(self) -> int:
        """Rows this rank's tokens send to its own experts (no traffic)."""
        return self.rows_sent[self.rank]

    def as_dict(self) -> dict:
        """Every count and byte total as plain ints (for JSON)."""
        names = ("dispatch_sent", "dispatch_received", "combine_sent", "combine_received", "counts_sent",
                 "counts_received", "sent", "received", "local_rows")
        return {"rank": self.rank, "rows_sent": list(self.rows_sent), "rows_received": list(self.rows_received),
                "width": self.width, "element_size": self.element_size, "local_experts": self.local_experts,
                "backward_sent": self.backward_sent, "backward_received": self.backward_received,
                **{name: getattr(self, name) for name in names}}


def exchange_bytes(rows_sent, rows_received, rank: int, width: int, element_size: int,
                   local_experts: int) -> ExchangeBytes:
    """The :class:`ExchangeBytes` of one call from its row counts (sequences of ``P`` ints)."""
    rows_sent, rows_received = tuple(int(n) for n in rows_sent), tuple(int(n) for n in rows_received)
    if len(rows_sent) != len(rows_received) or not 0 <= rank < len(rows_sent):
        raise ValueError(f"exchange_bytes: expected rows_sent and rows_received of one length P > rank={rank}, "
                         f"got {len(rows_sent)} and {len(rows_received)}")
    if min(rows_sent + rows_received) < 0 or min(width, element_size, local_experts) < 1:
        raise ValueError("exchange_bytes: expected non-negative rows and positive width, element_size, local_experts")
    return ExchangeBytes(rank, rows_sent, rows_received, width, element_size, local_experts)


class AllToAll(torch.autograd.Function):
    """A differentiable ``all_to_all_single`` of rows: ``(sum(send), ...)`` -> ``(sum(recv), ...)``.

    Forward: the first ``send[0]`` rows go to rank 0, the next ``send[1]`` to rank 1, ...; the
    output holds ``recv[s]`` rows from rank ``s``, in rank order. Backward: the gradient takes the
    way back, the same exchange with ``send`` and ``recv`` swapped. ``record`` (an
    :class:`ExchangeBytes`, or None) gets the backward's remote bytes added.
    """

    @staticmethod
    def forward(ctx, x, send: list[int], recv: list[int], group, record):
        ctx.send, ctx.recv, ctx.group, ctx.record = send, recv, group, record
        return _exchange(x, send, recv, group)

    @staticmethod
    def backward(ctx, grad):
        if ctx.record is not None:
            rank, row = ctx.record.rank, math.prod(grad.shape[1:]) * grad.element_size()
            ctx.record.backward_sent += sum(n for s, n in enumerate(ctx.recv) if s != rank) * row
            ctx.record.backward_received += sum(n for s, n in enumerate(ctx.send) if s != rank) * row
        return _exchange(grad, ctx.recv, ctx.send, ctx.group), None, None, None, None


def _exchange(x: torch.Tensor, send: list[int], recv: list[int], group) -> torch.Tensor:
    out = x.new_empty((sum(recv),) + tuple(x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=group)
    return out


def all_to_all(x: torch.Tensor, send: list[int], recv: list[int], group=None, record=None) -> torch.Tensor:
    """:class:`AllToAll` as a function: rows ``x`` ``(sum(send), ...)`` -> ``(sum(recv), ...)``."""
    return AllToAll.apply(x, list(send), list(recv), group, record)


class ExpertParallelMoE(nn.Module):
    """A routed :class:`~companion.nn.moe.MoE` with its experts sharded over a process group.

    ``ExpertParallelMoE(layer, group)`` on every rank of ``group`` (an initialised
    ``torch.distributed`` group; None: the default one) copies from ``layer`` (the same full layer
    on every rank, e.g. built from one seed or loaded from one checkpoint) the replicated parts,
    ``router``, ``shared`` and ``e_score_correction_bias``, and this rank's slice of the experts:
    ``gate_proj``, ``up_proj`` ``(E_local, width, hidden)``, ``down_proj`` ``(E_local, hidden, width)``,
    experts ``first_expert ... first_expert + E_local - 1`` with ``E_local = E / P``. Put it on the
    rank's device (``.to(device)``) before the first call.

    ``forward(x)`` ``(..., width)`` -> ``(..., width)``, called on every rank at once (each with its own
    tokens, any number of them) equals ``layer(x)`` on that rank's tokens (see the module docstring
    for the steps; GShard, Lepikhin et al. 2021; Switch, Fedus et al. 2022). After each call:
    ``last_bytes`` (:class:`ExchangeBytes`: what this rank sent and received), ``last_routing``,
    ``last_load``, and ``aux_loss``, ``balance_loss``, ``z_loss`` of this rank's tokens (as
    :class:`MoE` records them).

    Raises ``ValueError`` for expert-choice routing, a capacity factor, or ``P`` not dividing ``E``.
    """

    def __init__(self, layer: MoE, group=None) -> None:
        super().__init__()
        if not isinstance(layer, MoE):
            raise ValueError(f"ExpertParallelMoE: expected a MoE layer, got {type(layer).__name__}")
        shape = layer.shape
        if shape.routing != "token_choice":
            raise ValueError(f"ExpertParallelMoE: only token-choice routing is supported, got routing="
                             f"{shape.routing!r} (expert choice needs every rank's tokens to choose)")
        if shape.capacity_factor is not None:
            raise ValueError(f"ExpertParallelMoE: a capacity factor is not supported (got {shape.capacity_factor}); "
                             f"expected MoEShape(capacity_factor=None): tokens are never dropped")
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("ExpertParallelMoE: expected an initialised torch.distributed process group "
                             "(torch.distributed.init_process_group)")
        self.group = group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        experts = shape.n_routed_experts
        if experts % self.world:
            raise ValueError(f"ExpertParallelMoE: expected the {experts} experts to split evenly over "
                             f"{self.world} ranks")
        self.width, self.shape = layer.width, shape
        self.local_experts = experts // self.world
        self.first_expert = self.rank * self.local_experts
        mine = slice(self.first_expert, self.first_expert + self.local_experts)
        self.router = copy.deepcopy(layer.router)
        self.gate_proj = nn.Parameter(layer.gate_proj.detach()[mine].clone())
        self.up_proj = nn.Parameter(layer.up_proj.detach()[mine].clone())
        self.down_proj = nn.Parameter(layer.down_proj.detach()[mine].clone())
        self.shared = copy.deepcopy(layer.shared)
        bias = layer.e_score_correction_bias
        self.register_buffer("e_score_correction_bias", None if bias is None else bias.detach().clone())
        self.register_buffer("pending_load", torch.zeros(experts, dtype=torch.long, device=layer.pending_load.device),
                             persistent=False)
        self.aux_loss = self.balance_loss = self.z_loss = None
        self.last_load = self.last_routing = None
        self.last_bytes: ExchangeBytes | None = None

    def route(self, x: torch.Tensor) -> Routing:
        """This rank's assignments for its tokens ``x`` ``(T, width)``: :meth:`MoE.route` with the replicated router."""
        return MoE.route(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != self.width:
            raise ValueError(f"ExpertParallelMoE: expected x of shape (..., width={self.width}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        flat = x.reshape(-1, self.width)
        world, local = self.world, self.local_experts
        routing = self.route(flat)                                              # (A,) token, expert, gate
        order = torch.argsort(routing.expert, stable=True)                     # by expert, so by rank
        token = routing.token[order]
        per_expert, per_rank = split_sizes(routing.expert, self.shape.n_routed_experts, world)
        incoming = torch.empty_like(per_expert)                                # 1. the counts: (P, E_local)
        dist.all_to_all_single(incoming, per_expert, group=self.group)         #    incoming[s, j]: s -> expert j
        incoming = incoming.view(world, local)
        send, recv = per_rank.tolist(), incoming.sum(dim=1).tolist()           # split sizes (read on the host)
        record = exchange_bytes(send, recv, self.rank, self.width, flat.element_size(), local)

        rows = all_to_all(flat[token], send, recv, self.group, record)         # 2. dispatch (R, width)
        local_expert = torch.arange(local, device=rows.device).repeat(world)   # rows arrive (source, expert)
        regroup = torch.argsort(local_expert.repeat_interleave(incoming.reshape(-1)), stable=True)
        rows = rows[regroup]                                                    #    now (expert, source)
        sizes = incoming.sum(dim=0)                                             # rows per local expert (E_local,)
        hidden = F.silu(grouped_matmul(rows, self.gate_proj, sizes)) * grouped_matmul(rows, self.up_proj, sizes)
        out = grouped_matmul(hidden, self.down_proj, sizes)                    # 3. SwiGLU_j of each row
        out = out[torch.argsort(regroup)]                                       #    back to (source, expert)
        back = all_to_all(out, recv, send, self.group, record)                  # 4. combine (A, width)

        gate = routing.gate[order].to(flat.dtype)[:, None]
        y = flat.new_zeros(flat.shape).index_add(0, token, back * gate)        # 5. y_t = sum_a g_a out_a
        if self.shared is not None:
            y = y + self.shared(flat)                                           # shared experts: local
        MoE._record(self, routing, flat.shape[0])                               # this rank's losses and load
        self.last_bytes = record
        return y.view(x.shape)

    @torch.no_grad()
    def reduce_replicated_grads(self) -> None:
        """Sum the gradients of the replicated parameters (router, shared experts) over the ranks.

        Each rank's router and shared experts see only its own tokens; after the sum every rank holds
        the gradient of the sum of all ranks' losses (divide by ``P`` for their mean, as
        ``DistributedDataParallel`` does). The local experts' gradients need nothing: the backward
        all-to-alls already brought every rank's contribution.
        """
        params = list(self.router.parameters()) + (list(self.shared.parameters()) if self.shared is not None else [])
        for param in params:
            if param.grad is not None:
                dist.all_reduce(param.grad, group=self.group)

    def extra_repr(self) -> str:
        return (f"width={self.width}, experts={self.first_expert}..{self.first_expert + self.local_experts - 1} "
                f"of {self.shape.n_routed_experts}, rank={self.rank} of {self.world}")
