"""Linear time-invariant state space models: from a continuous system to a long convolution.

A state space model (SSM) maps an input signal ``u(t)`` to an output ``y(t)`` through a hidden
state ``x(t)`` of size ``N``, as control theory has written it since Kalman (1960)::

    x'(t) = A x(t) + B u(t)          A (N, N), B (N, 1)
    y(t)  = C x(t) + D u(t)          C (1, N), D a scalar (a skip connection)

S4 (Gu, Goel and Re 2022, "Efficiently Modeling Long Sequences with Structured State Spaces") made
this a deep-learning layer: one such system per channel of a ``(batch, channels, length)`` input.
S4D (Gu, Gupta, Goel and Re 2022, "On the Parameterization and Initialization of Diagonal State
Space Models") showed that a *diagonal* ``A`` suffices, with complex entries whose real part is
negative (so the state decays). Then every state coordinate is its own scalar system, and the
shapes in this module are ``A``, ``B``, ``C`` ``(channels, state)``, one row per channel. ``A`` may
be real (S4D-Real, and Mamba) or complex (S4D-Lin); with a complex system the output is the real
part, ``y = Re(C x) + D u`` (S4D writes ``2 Re(...)`` for ``N/2`` conjugate pairs: the factor 2 is
the same as a twice larger ``C``).

**Discretisation.** A sequence model sees samples ``u_k = u(k Delta)`` at a step size ``Delta``
(learned, one per channel). Holding ``u`` constant over each step (zero-order hold) integrates the
ODE exactly; the bilinear (Tustin) transform approximates it with the trapezoid rule::

    zero-order hold (S4D, Mamba):  Abar = exp(Delta A),                   Bbar = (Abar - 1) / A * B
    bilinear (S4, HiPPO):          Abar = (1 + Delta A/2) / (1 - Delta A/2),  Bbar = Delta B / (1 - Delta A/2)

(:func:`discretize_zoh`, :func:`discretize_bilinear`). Both equal ``1 + Delta A + (Delta A)^2/2``
and ``Delta B (1 + Delta A/2)`` up to terms in ``Delta^3``: they agree as ``Delta -> 0``. Both map
the left half-plane (``Re A < 0``, a decaying system) into the unit disc (``|Abar| < 1``, a stable
recurrence).

**Two ways to compute the same outputs.** The discrete system is a linear recurrence::

    x_k = Abar x_{k-1} + Bbar u_k,   y_k = Re(C x_k) + D u_k                      (recurrent mode)

one step per position, with a state of fixed size: how the layer generates (:func:`ssm_recurrent`).
Unrolled from ``x_{-1} = 0`` it is a causal convolution with the kernel ``K``::

    y_k = sum_{j<=k} K_j u_{k-j} + D u_k,   K_j = Re(C Abar^j Bbar)              (convolutional mode)

computed in closed form from the powers of the diagonal ``Abar`` (a Vandermonde matrix,
:func:`ssm_kernel`) and applied with the FFT in ``O(L log L)`` (:func:`causal_convolution_fft`):
how the layer trains, in parallel over the whole sequence. This works only because ``Abar``,
``Bbar`` and ``C`` are the same at every step (time invariance). Mamba
(:mod:`companion.nn.mamba`) makes ``Delta``, ``B`` and ``C`` depend on the input: the convolution
is lost and a scan takes its place (:func:`companion.kernels.selective_scan`).

:class:`S4DLayer` is the layer of S4D with these parts, usable as the decoder's mixer ``"s4d"``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from companion.nn.cache import KVCache


def _check_system(A: torch.Tensor, B: torch.Tensor, delta: torch.Tensor) -> None:
    for name, t in (("A", A), ("B", B)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a (channels, state) tensor, got {got}")
    if A.shape != B.shape:
        raise ValueError(f"A and B must have the same shape (channels, state), got {tuple(A.shape)} and "
                         f"{tuple(B.shape)}")
    if not isinstance(delta, torch.Tensor) or delta.shape != A.shape[:1] or delta.is_complex():
        got = tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__
        raise ValueError(f"delta must be a real (channels,) = {tuple(A.shape[:1])} tensor, got {got}")


def discretize_zoh(A: torch.Tensor, B: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-order hold: ``Abar = exp(Delta A)``, ``Bbar = (Abar - 1) / A * B`` (``Delta B`` where ``A = 0``).

    ``A``, ``B`` ``(channels, state)`` (real or complex; ``A`` diagonal, one row per channel),
    ``delta`` ``(channels,)`` positive step sizes. Exact for an input held constant over each step
    (S4D, Gu et al. 2022, section 2; Mamba, Gu and Dao 2023, equation 4). Returns ``(Abar, Bbar)``,
    each ``(channels, state)``.
    """
    _check_system(A, B, delta)
    dA = delta[:, None] * A
    abar = torch.exp(dA)
    zero = dA == 0
    ratio = torch.expm1(dA) / torch.where(zero, torch.ones_like(dA), dA)   # (exp(Delta A) - 1) / (Delta A)
    ratio = torch.where(zero, torch.ones_like(ratio), ratio)                 # its limit 1 as A -> 0
    return abar, ratio * delta[:, None] * B                                  # = (Abar - 1) / A * B


def discretize_bilinear(A: torch.Tensor, B: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bilinear (Tustin) transform: ``Abar = (1 + Delta A/2) / (1 - Delta A/2)``,
    ``Bbar = Delta B / (1 - Delta A/2)``.

    Same arguments and results as :func:`discretize_zoh`; the trapezoid rule for the ODE, as S4 and
    HiPPO use it (Gu et al. 2022, "Efficiently Modeling Long Sequences with Structured State
    Spaces", equation 3). ``1 - Delta A / 2`` must not vanish (it cannot when ``Re A <= 0``).
    """
    _check_system(A, B, delta)
    half = delta[:, None] * A / 2
    return (1 + half) / (1 - half), delta[:, None] * B / (1 - half)


#: The discretisations by name.
DISCRETIZATIONS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "zoh": discretize_zoh, "bilinear": discretize_bilinear}


def _check_input(u: torch.Tensor, abar: torch.Tensor, bbar: torch.Tensor, C: torch.Tensor) -> None:
    if not isinstance(u, torch.Tensor) or u.ndim != 3 or u.is_complex() or not u.is_floating_point():
        got = f"{u.dtype} of shape {tuple(u.shape)}" if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"u must be a real floating-point (batch, channels, length) tensor, got {got}")
    shapes = {"Abar": abar, "Bbar": bbar, "C": C}
    if any(not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape != abar.shape for t in shapes.values()):
        got = {k: tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for k, t in shapes.items()}
        raise ValueError(f"Abar, Bbar and C must all be (channels, state), got {got}")
    if u.shape[1] != abar.shape[0]:
        raise ValueError(f"u has {u.shape[1]} channels but the system has {abar.shape[0]} "
                         "(u is (batch, channels, length))")


def _skip(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    if D is None:
        return y
    if not isinstance(D, torch.Tensor) or D.shape != u.shape[1:2]:
        got = tuple(D.shape) if isinstance(D, torch.Tensor) else type(D).__name__
        raise ValueError(f"D must be a (channels,) = {tuple(u.shape[1:2])} tensor or None, got {got}")
    return y + D[:, None] * u


def ssm_recurrent(u: torch.Tensor, abar: torch.Tensor, bbar: torch.Tensor, C: torch.Tensor,
                  D: torch.Tensor | None = None, state: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The discrete SSM as a loop over time: ``(y, last state)``.

    ``u`` ``(batch, channels, length)``; ``abar``, ``bbar``, ``C`` ``(channels, state)`` (a diagonal
    ``Abar``); ``D`` ``(channels,)`` or None; ``state`` ``(batch, channels, state)``, the ``x`` left
    by earlier positions (None: zeros)::

        x_k = Abar x_{k-1} + Bbar u_k,    y_k = Re(C x_k) + D u_k

    Returns ``y`` ``(batch, channels, length)`` (real) and ``x`` after the last position, in the
    dtype of the system (complex for a complex ``A``). Each step costs ``O(channels * state)``
    whatever the position: the mode in which an SSM generates.
    """
    _check_input(u, abar, bbar, C)
    batch, channels, length = u.shape
    dtype = torch.promote_types(abar.dtype, bbar.dtype)
    if state is None:
        state = torch.zeros(batch, channels, abar.shape[1], dtype=dtype, device=u.device)
    elif not isinstance(state, torch.Tensor) or state.shape != (batch, *abar.shape):
        got = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
        raise ValueError(f"state must be (batch, channels, state) = {(batch, *abar.shape)}, got {got}")
    outputs = []
    for k in range(length):
        state = abar * state + bbar * u[:, :, k, None]              # x_k = Abar x_{k-1} + Bbar u_k
        outputs.append((C * state).sum(-1).real)                    # Re(C x_k)
    y = torch.stack(outputs, dim=-1).to(u.dtype)
    return _skip(y, u, D), state


def ssm_kernel(abar: torch.Tensor, bbar: torch.Tensor, C: torch.Tensor, length: int) -> torch.Tensor:
    """The convolution kernel of a diagonal discrete SSM, ``K_j = Re(sum_n C_n Abar_n^j Bbar_n)``.

    ``abar``, ``bbar``, ``C`` ``(channels, state)``; returns ``K`` ``(channels, length)``, real, for
    ``j = 0 .. length - 1``. In closed form: the powers ``Abar^j`` make a Vandermonde matrix
    ``(channels, state, length)``, contracted with ``C Bbar`` over the state (S4D, Gu et al. 2022,
    section 3.1). ``K`` is the response of the system to a unit impulse: ``y_k = K_k`` for
    ``u = (1, 0, 0, ...)``.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    shapes = (abar, bbar, C)
    if any(not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape != abar.shape for t in shapes):
        raise ValueError("abar, bbar and C must all be (channels, state) tensors, got "
                         f"{[tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in shapes]}")
    j = torch.arange(1, length, device=abar.device)
    powers = abar[..., None] ** j                                                   # Abar^j, j >= 1
    powers = torch.cat([torch.ones_like(abar[..., None]), powers], dim=-1)         # Abar^0 = 1 (also for Abar = 0)
    return torch.einsum("cn,cnl->cl", C * bbar, powers).real                      # Re(sum_n C_n Bbar_n Abar_n^j)


def causal_convolution_fft(u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``y_k = sum_{j<=k} K_j u_{k-j}`` per channel, with the FFT: ``(batch, channels, length)``.

    ``u`` ``(batch, channels, length)``, ``kernel`` ``(channels, kernel_length)`` real (only the
    first ``length`` taps matter). The FFT multiplies *circular* convolutions; zero-padding both to
    ``2 * length`` leaves room for every product ``K_j u_{k-j}`` so that none wraps around to an
    earlier position (the convolution theorem then gives the linear, causal one). ``O(L log L)``.
    """
    if not isinstance(u, torch.Tensor) or u.ndim != 3 or not isinstance(kernel, torch.Tensor) or kernel.ndim != 2:
        raise ValueError("expected u (batch, channels, length) and kernel (channels, kernel_length), got "
                         f"{getattr(u, 'shape', type(u).__name__)} and "
                         f"{getattr(kernel, 'shape', type(kernel).__name__)}")
    if kernel.shape[0] != u.shape[1] or kernel.is_complex() or u.is_complex():
        raise ValueError(f"the kernel must be real with one row per channel of u ({u.shape[1]}), "
                         f"got {kernel.dtype} of shape {tuple(kernel.shape)}")
    length = u.shape[-1]
    n = 2 * length                                                  # room for the whole linear convolution
    spectrum = torch.fft.rfft(u, n=n) * torch.fft.rfft(kernel[:, :length], n=n)
    return torch.fft.irfft(spectrum, n=n)[..., :length]            # keep positions 0 .. length - 1


def ssm_convolutional(u: torch.Tensor, abar: torch.Tensor, bbar: torch.Tensor, C: torch.Tensor,
                      D: torch.Tensor | None = None) -> torch.Tensor:
    """The discrete SSM as one causal convolution: the same ``y`` as :func:`ssm_recurrent` from a zero state.

    ``y = K * u + D u`` with ``K = ssm_kernel(abar, bbar, C, length)``, applied by
    :func:`causal_convolution_fft`. ``u`` ``(batch, channels, length)``; returns the same shape.
    """
    _check_input(u, abar, bbar, C)
    kernel = ssm_kernel(abar, bbar, C, u.shape[-1]).to(u.dtype)
    return _skip(causal_convolution_fft(u, kernel), u, D)


class S4DLayer(nn.Module):
    """The S4D layer (Gu et al. 2022): ``width`` independent diagonal SSMs of ``state`` modes each, then a mix.

    ``forward(x, positions=None, cache=None, return_weights=False) -> (y, None)`` with ``x`` and
    ``y`` ``(batch, seq, width)``: the decoder's mixer interface (``positions`` unused: the SSM
    is causal and time-invariant by construction). Per channel ``h`` (``A``, ``B``, ``C`` complex)::

        A_h = -exp(log_A_real_h) + i A_imag_h           (S4D-Lin init: A_n = -1/2 + i pi n)
        Delta_h = exp(log_dt_h)                         (init log-uniform in [dt_min, dt_max])
        Abar_h, Bbar_h = discretize(A_h, B_h, Delta_h)   (``discretization``: "zoh" or "bilinear")
        s_h = SSM(Abar_h, Bbar_h, C_h, D_h)(x_h)         (convolutional mode; recurrent with a cache)
        y = out(gelu(s))                                (position-wise mixing of the channels)

    ``real=True`` is S4D-Real instead: ``A_n = -(n + 1)``, no imaginary part. ``B`` is learned,
    initialised to ones; ``C`` is complex normal. Complex parameters are stored as real pairs
    (``torch.view_as_real``) so that optimisers and ``.double()`` treat them as any other.

    Without a cache the layer runs in convolutional mode (:func:`ssm_convolutional`). With a
    :class:`~companion.nn.cache.KVCache` it runs in recurrent mode from the state of layer
    ``layer_index`` (``cache.state``; zeros at first) and stores the new state, ``(batch, width,
    state)`` complex: a size that does not depend on the length.
    """

    def __init__(self, width: int, state: int = 64, *, discretization: str = "zoh", dt_min: float = 1e-3,
                 dt_max: float = 1e-1, real: bool = False, layer_index: int = 0) -> None:
        super().__init__()
        for name, value in (("width", width), ("state", state)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if discretization not in DISCRETIZATIONS:
            raise ValueError(f"discretization must be one of {sorted(DISCRETIZATIONS)}, got {discretization!r}")
        if not (isinstance(dt_min, (int, float)) and isinstance(dt_max, (int, float)) and 0 < dt_min <= dt_max):
            raise ValueError(f"expected 0 < dt_min <= dt_max, got dt_min={dt_min!r}, dt_max={dt_max!r}")
        self.width, self.state_size, self.discretization = width, state, discretization
        self.real, self.layer_index = real, layer_index
        n = torch.arange(state, dtype=torch.float32)
        self.log_dt = nn.Parameter(torch.rand(width) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        if real:
            self.log_A_real = nn.Parameter(torch.log(n + 1).repeat(width, 1))           # A_n = -(n + 1)
            self.register_parameter("A_imag", None)
        else:
            self.log_A_real = nn.Parameter(torch.full((width, state), math.log(0.5)))    # Re A_n = -1/2
            self.A_imag = nn.Parameter(math.pi * n.repeat(width, 1))                    # Im A_n = pi n
        ones = torch.zeros(width, state, 2)
        ones[..., 0] = 1.0
        self.B = nn.Parameter(ones)                                                      # B = 1 (complex)
        self.C = nn.Parameter(torch.randn(width, state, 2) * math.sqrt(0.5))            # C ~ CN(0, 1)
        self.D = nn.Parameter(torch.randn(width))
        self.out = nn.Linear(width, width)

    def system(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The discrete ``(Abar, Bbar, C)``, each ``(width, state)``, complex (real with ``real=True``)."""
        A = -torch.exp(self.log_A_real)
        B, C = torch.view_as_complex(self.B), torch.view_as_complex(self.C)
        if self.real:
            B, C = B.real, C.real  # S4D-Real: a real system throughout
        else:
            A = torch.complex(A, self.A_imag)
        abar, bbar = DISCRETIZATIONS[self.discretization](A, B, torch.exp(self.log_dt))
        return abar, bbar, C

    def kernel(self, length: int) -> torch.Tensor:
        """The convolution kernel ``(width, length)`` of the current parameters (:func:`ssm_kernel`)."""
        return ssm_kernel(*self.system(), length)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None, cache: KVCache | None = None,
                return_weights: bool = False) -> tuple[torch.Tensor, None]:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[1] < 1 or x.shape[2] != self.width:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected x of shape (batch, seq >= 1, width={self.width}), got {got}")
        u = x.transpose(1, 2)                                                   # (batch, width, seq)
        abar, bbar, C = self.system()
        if cache is None:
            s = ssm_convolutional(u, abar, bbar, C, self.D)
        else:
            if x.shape[0] != cache.batch:
                raise ValueError(f"the cache was made for batch {cache.batch}, got input for batch {x.shape[0]}")
            cache.check_room(x.shape[1])
            previous = cache.state(self.layer_index)
            s, state = ssm_recurrent(u, abar, bbar, C, self.D, None if previous is None else previous[0])
            cache.set_state(self.layer_index, (state,))
        return self.out(F.gelu(s.transpose(1, 2))), None

    def extra_repr(self) -> str:
        return (f"width={self.width}, state={self.state_size}, discretization={self.discretization!r}, "
                f"real={self.real}")
