"""The Mamba-2 mixer: state space duality, computed in chunks (Dao and Gu 2024).

Dao and Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured
State Space Duality" (2024, arXiv 2405.21060). Mamba-2 restricts Mamba's ``A`` to a *scalar* per
head (times the identity) and splits the channels into heads of ``head_dim`` ``P`` that share one
step size, like attention heads. Per head ``h``, with ``x_t`` ``(P,)``, ``B_t``, ``C_t`` ``(N,)``::

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T        (P, N)        the selective SSM, scalar decay
    y_t = h_t C_t + D x_t                                            (section 3; ``D`` per head)

Unrolled, ``y = M x`` with ``M_ts = C_t . B_s exp(sum_{s<r<=t} dt_r A)`` for ``s <= t``: a causal
*attention* matrix whose scores ``C_t . B_s`` (queries ``C``, keys ``B``) are weighted by a decay
mask. This is the duality of the title: the same ``y`` by a linear recurrence (linear in length)
or by a masked matrix (quadratic, but all matrix multiplies). The SSD algorithm (section 6, the
paper's ``ssd_minimal`` listing; :func:`ssd_chunked`) uses both: the matrix form *within* chunks of
``chunk_size`` positions and the recurrence *across* chunks, passing one state per chunk.

``B`` and ``C`` are shared by the heads of a group (``n_groups`` ``G``, like grouped-query
attention's keys). The block (section 7, Figure 6, and transformers' ``Mamba2Mixer``), for ``x``
``(batch, seq, width)``, ``d_inner = expand * width = heads * P``::

    z, xBC, dt = in_proj(x)                      (d_inner, d_inner + 2 G N, heads)   one projection, in parallel
    xs, B, C   = silu(causal_conv1d(xBC))        (d_inner, G N, G N)             conv over x, B and C together
    dt         = softplus(dt + dt_bias)          (heads,)
    A          = -exp(A_log)                     (heads,)
    y          = SSD(xs, dt, A, B, C) + D xs     (d_inner)
    out        = out_proj(GatedRMSNorm(y, z))    norm(y * silu(z)), per group of d_inner / G channels

**Decoding.** The state is ``conv_state`` ``(batch, d_inner + 2 G N, d_conv - 1)`` and
``ssm_state`` ``(batch, heads, P, N)``, kept in the :class:`~companion.nn.cache.KVCache`. Tokens
after the first call continue from it through :func:`ssd_chunked` with ``initial_state`` (a single
token is a chunk of one: the recurrence above, one step).

Mamba-2's SSM is Mamba's selective scan (:func:`~companion.kernels.selective_scan.selective_scan`, with
``B`` and ``C`` in groups) with ``A`` and ``dt`` tied across the ``P`` channels of each head; the tests
check that identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from companion.nn.cache import KVCache
from companion.nn.mamba import MambaShape, causal_conv1d, check_mixer_input


def segment_sum(x: torch.Tensor) -> torch.Tensor:
    """``out[..., i, j] = x[..., j+1] + ... + x[..., i]`` for ``j <= i`` (0 on the diagonal), ``-inf`` above it.

    ``x`` ``(..., T)`` -> ``(..., T, T)``. ``exp(segment_sum(dt A))`` is the decay from position ``j``
    to position ``i``; the sums are taken directly over the masked entries (not as differences of
    one cumulative sum), which keeps them exact when the decays are large.
    """
    length = x.shape[-1]
    x = x[..., None].expand(*x.shape, length)                                # [..., i, j] = x_i
    ones = torch.ones(length, length, dtype=torch.bool, device=x.device)
    sums = x.masked_fill(~ones.tril(-1), 0).cumsum(dim=-2)                   # sum_{j < r <= i} x_r
    return sums.masked_fill(~ones.tril(0), -torch.inf)                       # j > i: no path, exp(-inf) = 0


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                chunk_size: int, D: torch.Tensor | None = None,
                initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSD of Mamba-2 in chunks (Dao and Gu 2024, section 6, listing 1): ``(y, final state)``.

    ``x`` ``(batch, seq, heads, P)``; ``dt`` ``(batch, seq, heads)`` (after softplus); ``A``
    ``(heads,)``; ``B``, ``C`` ``(batch, seq, groups, N)`` with ``heads`` a multiple of ``groups``;
    ``D`` ``(heads,)`` or None; ``initial_state`` ``(batch, heads, P, N)`` (None: zeros). Returns
    ``y`` ``(batch, seq, heads, P)`` and the state after the last position ``(batch, heads, P, N)``.
    The same numbers as the recurrence ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``,
    ``y_t = h_t C_t + D x_t`` (module docstring), in four steps per chunk of ``chunk_size``
    positions (a shorter sequence is one chunk; the last chunk is zero-padded, which leaves the
    state unchanged since ``dt = 0`` there):

    1. within each chunk, the quadratic (attention-like) form: ``Y_diag = (C B^T o L) (dt x)``,
       ``L = exp(segment_sum(dt A))`` the causal decay mask;
    2. each chunk's own contribution to the state at its end: ``sum_s exp(decay s -> end) B_s (dt x)_s``;
    3. the recurrence across chunks (a small scan over ``seq / chunk_size`` states, again as a
       decay-masked matrix), starting from ``initial_state``;
    4. the contribution of the state entering each chunk to its outputs: ``Y_off = C h exp(decay)``.

    Computed in float32 at least (float64 inputs stay float64), as transformers' torch path does.
    """
    batch, seq, heads, head_dim = x.shape
    groups = B.shape[2]
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if dt.shape != (batch, seq, heads) or A.shape != (heads,):
        raise ValueError(f"expected dt (batch, seq, heads) = {(batch, seq, heads)} and A (heads,) = {(heads,)}, "
                         f"got {tuple(dt.shape)} and {tuple(A.shape)}")
    if B.shape != C.shape or B.ndim != 4 or B.shape[:2] != (batch, seq) or heads % groups:
        raise ValueError(f"expected B and C (batch, seq, groups, N) with groups dividing heads ({heads}), "
                         f"got {tuple(B.shape)} and {tuple(C.shape)}")
    state_size = B.shape[-1]
    if initial_state is not None and initial_state.shape != (batch, heads, head_dim, state_size):
        raise ValueError(f"initial_state must be (batch, heads, P, N) = {(batch, heads, head_dim, state_size)}, "
                         f"got {tuple(initial_state.shape)}")
    compute = torch.promote_types(x.dtype, torch.float32)
    x, dt, A = x.to(compute), dt.to(compute), A.to(compute)
    B = B.to(compute).repeat_interleave(heads // groups, dim=2)               # (batch, seq, heads, N)
    C = C.to(compute).repeat_interleave(heads // groups, dim=2)
    size = min(chunk_size, seq)
    pad = (size - seq % size) % size

    def chunks(t: torch.Tensor) -> torch.Tensor:                               # (b, seq, ...) -> (b, c, l, ...)
        t = F.pad(t, (0, 0) * (t.ndim - 2) + (0, pad))
        return t.reshape(batch, -1, size, *t.shape[2:])

    xs, dA = chunks(x * dt[..., None]), chunks(A * dt)                          # dt x (b,c,l,h,p); dt A (b,c,l,h)
    Bc, Cc = chunks(B), chunks(C)                                                # (b, c, l, h, n)
    dA = dA.permute(0, 3, 1, 2)                                                  # (b, h, c, l)
    dA_cumsum = dA.cumsum(dim=-1)
    # 1. within chunks: the masked "attention" form
    decay = torch.exp(segment_sum(dA))                                           # (b, h, c, l, s)
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cc, Bc, decay, xs)
    # 2. each chunk's contribution to the state at its end
    decay_to_end = torch.exp(dA_cumsum[..., -1:] - dA_cumsum)                   # (b, h, c, l)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_to_end, xs)
    # 3. the recurrence across chunks, from the initial state
    start = (torch.zeros_like(states[:, :1]) if initial_state is None
             else initial_state.to(compute)[:, None])
    states = torch.cat([start, states], dim=1)                                   # (b, c + 1, h, p, n)
    decay_chunk = torch.exp(segment_sum(F.pad(dA_cumsum[..., -1], (1, 0))))     # (b, h, c + 1, c + 1)
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final_state = states[:, :-1], states[:, -1]                          # entering each chunk; after all
    # 4. the state entering each chunk, read out by C with the decay since the chunk began
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, states, torch.exp(dA_cumsum))
    y = (y_diag + y_off).reshape(batch, -1, heads, head_dim)[:, :seq]
    if D is not None:
        y = y + D.to(compute)[:, None] * x
    return y, final_state


class GatedRMSNorm(nn.Module):
    """Mamba-2's gated RMSNorm: ``norm(y * silu(z)) * weight``, normalised per group of ``group_size`` channels.

    ``y``, ``z`` ``(..., width)``. Each group of ``group_size`` consecutive channels (``d_inner /
    n_groups``: the channels whose ``B`` and ``C`` are shared) is divided by its own root mean
    square; the gate comes first (transformers' ``MambaRMSNormGated``, ``norm_before_gate=False`` in
    the reference kernels). Computed in float32 at least.
    """

    def __init__(self, width: int, group_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        if not (isinstance(group_size, int) and group_size >= 1 and width % group_size == 0):
            raise ValueError(f"group_size must be a positive divisor of width ({width}), got {group_size!r}")
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        compute = torch.promote_types(y.dtype, torch.float32)
        gated = y.to(compute) * F.silu(z.to(compute))
        groups = gated.unflatten(-1, (-1, self.group_size))
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * groups.flatten(-2).to(y.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, group_size={self.group_size}, eps={self.eps}"


class Mamba2Mixer(nn.Module):
    """A Mamba-2 layer (Dao and Gu 2024, section 7) with the decoder's mixer interface.

    ``forward(x, positions=None, cache=None, return_weights=False) -> (y, None)``: ``x`` and ``y``
    ``(batch, seq, width)``; ``positions`` is not used. Sizes from ``shape`` (a
    :class:`~companion.nn.mamba.MambaShape`: ``d_state``, ``d_conv``, ``expand``, ``head_dim``,
    ``n_groups``, ``chunk_size``, ``conv_bias``, ``bias``); ``eps`` is the gated norm's. The parameters
    are transformers' ``Mamba2Mixer``'s, with the same names and shapes (``in_proj``, ``conv1d``,
    ``dt_bias``, ``A_log``, ``D``, ``norm.weight``, ``out_proj``). Initialisation as theirs:
    ``A_h = -h`` for heads ``1..H``, ``D = 1``, ``dt_bias`` the inverse softplus of step sizes
    log-uniform in ``[dt_min, dt_max]``.
    """

    def __init__(self, width: int, shape: MambaShape | None = None, *, layer_index: int = 0, eps: float = 1e-5,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
        super().__init__()
        shape = MambaShape() if shape is None else shape
        if not isinstance(shape, MambaShape):
            raise ValueError(f"shape must be a MambaShape, got {type(shape).__name__}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        shape.check_mamba2(width)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"expected 0 < dt_min <= dt_max, got {dt_min!r} and {dt_max!r}")
        self.width, self.shape, self.layer_index = width, shape, layer_index
        self.d_inner, self.n_heads = shape.d_inner(width), shape.n_heads(width)
        self.head_dim, self.n_groups, self.d_state = shape.head_dim, shape.n_groups, shape.d_state
        self.conv_dim = self.d_inner + 2 * self.n_groups * self.d_state
        self.in_proj = nn.Linear(width, self.d_inner + self.conv_dim + self.n_heads, bias=shape.bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, shape.d_conv, groups=self.conv_dim,
                                bias=shape.conv_bias)
        dt = torch.exp(torch.rand(self.n_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))               # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, self.n_heads + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(self.n_heads))
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // self.n_groups, eps=eps)
        self.out_proj = nn.Linear(self.d_inner, width, bias=shape.bias)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None, cache: KVCache | None = None,
                return_weights: bool = False) -> tuple[torch.Tensor, None]:
        batch, seq, previous = check_mixer_input(x, self.width, cache, self.layer_index)
        z, xbc, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        xbc, conv_state = causal_conv1d(xbc.transpose(1, 2), self.conv1d.weight, self.conv1d.bias,
                                        None if previous is None else previous[0])
        xbc = F.silu(xbc).transpose(1, 2)
        xs, B, C = xbc.split([self.d_inner, self.n_groups * self.d_state, self.n_groups * self.d_state], dim=-1)
        compute = torch.promote_types(x.dtype, torch.float32)
        dt = F.softplus(dt.to(compute) + self.dt_bias.to(compute))                   # (batch, seq, heads)
        A = -torch.exp(self.A_log.to(compute))                                       # (heads,)
        y, ssm_state = ssd_chunked(xs.reshape(batch, seq, self.n_heads, self.head_dim), dt, A,
                                   B.reshape(batch, seq, self.n_groups, self.d_state),
                                   C.reshape(batch, seq, self.n_groups, self.d_state),
                                   self.shape.chunk_size, D=self.D,
                                   initial_state=None if previous is None else previous[1])
        if cache is not None:
            cache.set_state(self.layer_index, (conv_state, ssm_state))   # constant size: replaces the last
        y = self.norm(y.reshape(batch, seq, self.d_inner), z)
        return self.out_proj(y.to(x.dtype)), None

    def extra_repr(self) -> str:
        return (f"width={self.width}, d_inner={self.d_inner}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
                f"n_groups={self.n_groups}, d_state={self.d_state}, chunk_size={self.shape.chunk_size}")
