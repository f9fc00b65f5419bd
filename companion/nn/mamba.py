"""The Mamba mixer: a selective state space model (Gu and Dao 2023).

Gu and Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023, arXiv
2312.00752). An LTI state space model (:mod:`companion.nn.ssm`) applies the same ``Abar``, ``Bbar``,
``C`` at every step, which is what lets it run as one convolution, and also why it cannot choose
what to remember: every token enters the state in the same way. Mamba makes the step size ``Delta``
and the matrices ``B`` and ``C`` functions of the input (section 3.2, "selection"), so that a token
can be let in (large ``Delta``: ``Abar = exp(Delta A)`` near 0, the state is reset to this token) or
ignored (``Delta`` near 0: ``Abar`` near 1, the state passes through). The convolution is lost;
a scan over time takes its place (:func:`~companion.kernels.selective_scan.selective_scan`).

The block of Figure 3, for ``x`` ``(batch, seq, width)``, with ``d_inner = expand * width``,
``N = d_state`` and ``R = dt_rank``::

    x_in, z  = in_proj(x)                           (d_inner each)    the SSM branch and the gate
    u        = silu(causal_conv1d(x_in))            (d_inner)         depthwise, kernel d_conv
    dt, B, C = x_proj(u)                            (R, N, N)         selection: all depend on u
    Delta    = softplus(dt_proj(dt))                (d_inner)         one step size per channel
    A        = -exp(A_log)                          (d_inner, N)      real, negative (S4D-Real init)
    h_t      = exp(Delta_t A) h_{t-1} + Delta_t B_t u_t               zero-order hold for A; Euler for B
    y_t      = C_t h_t + D u_t                                        (equation 2a/2b, Algorithm 2)
    out      = out_proj(y * silu(z))

(``Bbar = Delta B`` is the simplification of the zero-order hold that the paper and its code use.)
This is transformers' ``MambaMixer`` (and the reference ``mamba_simple.Mamba``) parameter for
parameter: :meth:`MambaMixer.load_state_dict` takes theirs unchanged.

**Decoding with a constant state.** Everything the layer needs from the past is the last
``d_conv - 1`` inputs of the convolution and the SSM state ``h``: ``conv_state`` ``(batch,
d_inner, d_conv - 1)`` and ``ssm_state`` ``(batch, d_inner, N)``, kept in the
:class:`~companion.nn.cache.KVCache` with ``set_state``. A prefill runs the full scan
(``return_last_state=True``); every later token is one :func:`~companion.kernels.selective_scan.selective_scan_step`.
The memory does not grow with the context, unlike an attention layer's keys and values.

:class:`MambaShape` holds the sizes of Mamba and Mamba-2 layers (:mod:`companion.nn.mamba2`) in a
decoder (``DecoderConfig.ssm``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from companion.kernels.selective_scan import selective_scan, selective_scan_step
from companion.nn.cache import KVCache


def _positive_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


@dataclass(frozen=True)
class MambaShape:
    """The sizes of a decoder's Mamba (``"mamba"``) and Mamba-2 (``"mamba2"``) layers.

    Both: ``d_state`` (``N``, the state per channel), ``d_conv`` (the causal convolution's kernel),
    ``expand`` (``d_inner = expand * width``), ``conv_bias`` (the convolution's bias), ``bias``
    (biases on ``in_proj`` and ``out_proj``). Mamba only: ``dt_rank`` (``R``; None:
    ``ceil(width / 16)``, the paper's choice). Mamba-2 only: ``head_dim`` (``P``; ``d_inner /
    head_dim`` heads), ``n_groups`` (``G``: heads in a group share ``B`` and ``C``), ``chunk_size``
    (the SSD's chunk length). Defaults: Mamba's (``N = 16``), except ``head_dim``, ``n_groups`` and
    ``chunk_size``, which are Mamba-2's (the paper's Mamba-2 uses ``N = 128``). An ``"s4d"`` layer
    reads ``d_state`` only.
    """

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    head_dim: int = 64
    n_groups: int = 1
    chunk_size: int = 256
    conv_bias: bool = True
    bias: bool = False

    def __post_init__(self) -> None:
        for name in ("d_state", "d_conv", "expand", "head_dim", "n_groups", "chunk_size"):
            if not _positive_int(getattr(self, name)):
                raise ValueError(f"MambaShape: expected {name} to be a positive int, got {getattr(self, name)!r}")
        if self.dt_rank is not None and not _positive_int(self.dt_rank):
            raise ValueError(f"MambaShape: expected dt_rank to be None or a positive int, got {self.dt_rank!r}")
        for name in ("conv_bias", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"MambaShape: expected {name} to be a bool, got {getattr(self, name)!r}")

    def d_inner(self, width: int) -> int:
        """``expand * width``: the channels of the SSM branch."""
        return self.expand * width

    def rank(self, width: int) -> int:
        """Mamba's ``dt_rank``: as given, or ``ceil(width / 16)``."""
        return math.ceil(width / 16) if self.dt_rank is None else self.dt_rank

    def n_heads(self, width: int) -> int:
        """Mamba-2's heads, ``d_inner / head_dim``."""
        return self.d_inner(width) // self.head_dim

    def check_mamba2(self, width: int) -> None:
        """Raise ``ValueError`` unless ``d_inner`` splits into heads of ``head_dim`` and the heads into ``n_groups``."""
        d_inner = self.d_inner(width)
        if d_inner % self.head_dim:
            raise ValueError(f"Mamba-2 needs d_inner = expand * width = {d_inner} to be a multiple of "
                             f"head_dim ({self.head_dim})")
        if self.n_heads(width) % self.n_groups:
            raise ValueError(f"Mamba-2 needs its {self.n_heads(width)} heads to be a multiple of "
                             f"n_groups ({self.n_groups})")


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A depthwise causal convolution that can continue from where it stopped: ``(y, new state)``.

    ``x`` ``(batch, channels, seq)``; ``weight`` ``(channels, 1, k)`` (an ``nn.Conv1d`` with
    ``groups=channels``); ``bias`` ``(channels,)`` or None; ``state`` ``(batch, channels, k - 1)``,
    the inputs just before ``x`` (None: zeros, i.e. the sequence starts here)::

        y[c, t] = bias[c] + sum_{i<k} weight[c, 0, i] * x[c, t - (k - 1) + i]

    Returns ``y`` ``(batch, channels, seq)`` and the last ``k - 1`` inputs, the state for the next call.
    """
    batch, channels, _ = x.shape
    past = weight.shape[-1] - 1
    if state is None:
        state = x.new_zeros(batch, channels, past)
    elif state.shape != (batch, channels, past):
        raise ValueError(f"conv state must be (batch, channels, d_conv - 1) = {(batch, channels, past)}, "
                         f"got {tuple(state.shape)}")
    padded = torch.cat([state.to(x.dtype), x], dim=-1)                      # (batch, channels, k - 1 + seq)
    y = F.conv1d(padded, weight, bias, groups=channels)                     # no padding: causal by construction
    return y, padded[..., padded.shape[-1] - past:]


def check_mixer_input(x: torch.Tensor, width: int, cache: KVCache | None,
                      layer_index: int) -> tuple[int, int, tuple[torch.Tensor, ...] | None]:
    """The checks that open a Mamba or Mamba-2 mixer's ``forward``: ``x`` must be ``(batch, seq >= 1,
    width)`` and a ``cache`` made for this batch, with room for ``seq`` more positions (a
    ``ValueError`` otherwise). Returns ``(batch, seq, previous)``: ``previous`` is the layer's cached
    ``(conv_state, ssm_state)``, or ``None`` without a cache or before the cache holds one."""
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[1] < 1 or x.shape[2] != width:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected x of shape (batch, seq >= 1, width={width}), got {got}")
    batch, seq, _ = x.shape
    previous = None
    if cache is not None:
        if batch != cache.batch:
            raise ValueError(f"the cache was made for batch {cache.batch}, got input for batch {batch}")
        cache.check_room(seq)
        previous = cache.state(layer_index)
    return batch, seq, previous


class MambaMixer(nn.Module):
    """A Mamba layer (Gu and Dao 2023, Figure 3) with the decoder's mixer interface.

    ``forward(x, positions=None, cache=None, return_weights=False) -> (y, None)``: ``x`` and ``y``
    are ``(batch, seq, width)``; ``positions`` is not used (the convolution and the scan are causal
    and carry order themselves); there are no attention weights. The equations, the sizes and the
    cache are in the module docstring; sizes come from ``shape`` (a :class:`MambaShape`).

    Initialisation as in the paper and transformers: ``A_n = -n`` (S4D-Real), ``D = 1``, ``dt_proj``'s
    bias the inverse softplus of step sizes log-uniform in ``[dt_min, dt_max]`` (floored at
    ``dt_init_floor``), its weight uniform in ``+-dt_rank^-1/2``; ``dt_proj`` is marked
    ``_no_reinit`` so that the decoder's own initialisation leaves it alone.
    """

    def __init__(self, width: int, shape: MambaShape | None = None, *, layer_index: int = 0,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
        super().__init__()
        shape = MambaShape() if shape is None else shape
        if not isinstance(shape, MambaShape):
            raise ValueError(f"shape must be a MambaShape, got {type(shape).__name__}")
        if not _positive_int(width):
            raise ValueError(f"width must be a positive int, got {width!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"expected 0 < dt_min <= dt_max, got {dt_min!r} and {dt_max!r}")
        self.width, self.shape, self.layer_index = width, shape, layer_index
        d_inner, n, rank = shape.d_inner(width), shape.d_state, shape.rank(width)
        self.d_inner, self.d_state, self.dt_rank = d_inner, n, rank
        self.in_proj = nn.Linear(width, 2 * d_inner, bias=shape.bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, shape.d_conv, groups=d_inner, bias=shape.conv_bias)
        self.x_proj = nn.Linear(d_inner, rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(rank, d_inner, bias=True)
        self.dt_proj._no_reinit = True
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, width, bias=shape.bias)
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -rank ** -0.5, rank ** -0.5)
            dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))            # softplus^-1(dt)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None, cache: KVCache | None = None,
                return_weights: bool = False) -> tuple[torch.Tensor, None]:
        _, seq, previous = check_mixer_input(x, self.width, cache, self.layer_index)
        u, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)           # (batch, d_inner, seq) each
        u, conv_state = causal_conv1d(u, self.conv1d.weight, self.conv1d.bias,
                                      None if previous is None else previous[0])
        u = F.silu(u)
        dt, B, C = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self.dt_proj.weight @ dt.transpose(1, 2)                 # (batch, d_inner, seq); bias in the scan
        A = -torch.exp(self.A_log.to(torch.promote_types(x.dtype, torch.float32)))   # (d_inner, N)
        B, C = B.transpose(1, 2), C.transpose(1, 2)                       # (batch, N, seq)
        # the kernel computes in float32 at least, whatever the dtypes (mixed freely, as mamba_ssm's)
        options = dict(D=self.D, delta_bias=self.dt_proj.bias, delta_softplus=True)
        if previous is None:                                              # training, or a prefill
            y = selective_scan(u, delta, A, B, C, z=z, return_last_state=cache is not None, **options)
            y, ssm_state = y if cache is not None else (y, None)
        else:                                                             # decoding: one step per token
            ssm_state, outputs = previous[1], []
            for t in range(seq):
                y_t, ssm_state = selective_scan_step(ssm_state, u[..., t], delta[..., t], A, B[..., t], C[..., t],
                                                     z=z[..., t], **options)
                outputs.append(y_t)
            y = torch.stack(outputs, dim=-1)
        if cache is not None:
            cache.set_state(self.layer_index, (conv_state, ssm_state))   # constant size: replaces the last
        return self.out_proj(y.transpose(1, 2).to(x.dtype)), None

    def extra_repr(self) -> str:
        return (f"width={self.width}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, "
                f"d_conv={self.shape.d_conv}")
