"""Linear attention: attention without the softmax, which turns a transformer into an RNN.

Katharopoulos et al. 2020 ("Transformers are RNNs: Fast Autoregressive Transformers with Linear
Attention") replace the similarity ``exp(q . k / sqrt(d))`` of softmax attention by a dot product of
features, ``phi(q) . phi(k)``, with a feature map ``phi`` that keeps it non-negative. Causal
attention at position ``i`` then reads::

    out_i = sum_{j<=i} phi(q_i)^T phi(k_j) v_j^T  /  sum_{j<=i} phi(q_i)^T phi(k_j)
          = phi(q_i)^T S_i / (phi(q_i)^T z_i + eps)

    S_i = sum_{j<=i} phi(k_j) v_j^T  = S_{i-1} + phi(k_i) v_i^T      (feature_dim, head_dim_v)
    z_i = sum_{j<=i} phi(k_j)        = z_{i-1} + phi(k_i)            (feature_dim,)

because the sum over ``j`` can be moved inside the product with ``phi(q_i)``. The same numbers can be
computed three ways, all here and all tested equal:

- **parallel** (:func:`linear_attention_parallel`): the ``(seq, seq)`` matrix
  ``A = tril(phi(Q) phi(K)^T)``, normalised row by row, times ``V``. Quadratic in length, like
  softmax attention, and just as parallel: the form to train with on short sequences and the one
  that shows the weights (:func:`linear_attention_weights`).
- **recurrent** (:func:`linear_attention_recurrent`): a loop over time that carries ``(S, z)``; each
  step costs ``O(feature_dim * head_dim)`` whatever the position, and the state has a fixed size.
  This is the RNN of the paper's title, the form that generates with constant memory.
- **chunked** (:func:`linear_attention_chunked`): the parallel form within chunks of ``chunk_size``
  positions, the recurrence across chunks; linear in length and mostly matrix multiplies.

Feature maps (:data:`FEATURE_MAPS`; a callable ``phi(x) -> (..., feature_dim)`` may be given too):

- ``"elu+1"``: ``phi(x) = elu(x) + 1``, positive everywhere; the choice of Katharopoulos et al.
- ``"relu"``: ``phi(x) = max(x, 0)``, non-negative but can be zero for a whole row (then the output
  is ``0``, kept finite by ``eps``).
- ``"identity"``: ``phi(x) = x``. The scores ``q . k`` can be negative, so the normaliser
  ``phi(q_i)^T z_i`` can cross zero and the output blow up: shown only to say why ``phi`` must be
  non-negative. With ``normalize=False`` (no denominator: ``out_i = phi(q_i)^T S_i``, the "fast
  weight" form of Schlag et al. 2021 that later linear RNNs build on) it is well defined.

Performer (Choromanski et al. 2021, "Rethinking Attention with Performers") picks random features
whose dot product approximates the softmax kernel ``exp(q . k)`` in expectation; such a map can be
passed as a callable. Whatever the map, everything the model keeps about the past is ``(S, z)``:
``feature_dim * (head_dim + 1)`` numbers per head. That fixed size is what makes decoding cheap and
also what limits recall: a model cannot store more key-value associations than its state has room
for (Arora et al. 2023, "Zoology"), the failure :func:`companion.data.associative_recall_task` measures.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from companion.nn.cache import KVCache

FeatureMap = Callable[[torch.Tensor], torch.Tensor]


def _elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


#: The named feature maps ``phi`` (see the module docstring).
FEATURE_MAPS: dict[str, FeatureMap] = {"elu+1": _elu_plus_one, "relu": F.relu, "identity": _identity}

State = tuple[torch.Tensor, torch.Tensor]


def feature_map_function(feature_map: str | FeatureMap) -> FeatureMap:
    """The function ``phi`` named by ``feature_map`` (a key of :data:`FEATURE_MAPS`), or ``feature_map`` itself if callable."""
    if callable(feature_map):
        return feature_map
    if isinstance(feature_map, str) and feature_map in FEATURE_MAPS:
        return FEATURE_MAPS[feature_map]
    raise ValueError(f"feature_map must be one of {sorted(FEATURE_MAPS)} or a callable, got {feature_map!r}")


def _check_eps(eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0 or eps == float("inf"):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")


def _features(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None,
              feature_map: str | FeatureMap, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the inputs and return ``phi(q)``, ``phi(k)`` ``(batch, heads, seq, feature_dim)``."""
    _check_eps(eps)
    phi = feature_map_function(feature_map)
    named = {"q": q, "k": k} if v is None else {"q": q, "k": k, "v": v}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or not t.is_floating_point():
            got = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a floating-point (batch, heads, seq, head_dim) tensor, got {got}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape (batch, heads, seq, head_dim), "
                         f"got {tuple(q.shape)} and {tuple(k.shape)}")
    if v is not None and v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be (batch, heads, seq, head_dim_v) with (batch, heads, seq) = {tuple(q.shape[:3])}, "
                         f"got {tuple(v.shape)}")
    if len({t.dtype for t in named.values()}) > 1 or len({t.device for t in named.values()}) > 1:
        raise ValueError("q, k and v must share one dtype and one device, got "
                         + ", ".join(f"{name}: {t.dtype} on {t.device}" for name, t in named.items()))
    if q.shape[2] == 0:
        raise ValueError("the sequence must hold at least one position, got seq = 0")
    phi_q, phi_k = phi(q), phi(k)
    if (not isinstance(phi_q, torch.Tensor) or phi_q.shape[:3] != q.shape[:3] or phi_q.ndim != 4
            or not isinstance(phi_k, torch.Tensor) or phi_k.shape != phi_q.shape):
        raise ValueError("the feature map must return (batch, heads, seq, feature_dim) tensors of the same shape "
                         f"for q and k, got {getattr(phi_q, 'shape', type(phi_q).__name__)} and "
                         f"{getattr(phi_k, 'shape', type(phi_k).__name__)}")
    return phi_q, phi_k


def _normalise(num: torch.Tensor, den: torch.Tensor, eps: float, normalize: bool) -> torch.Tensor:
    """``num / (den + eps)`` along the last dimension of ``num``, or ``num`` itself without normalisation."""
    return num / (den + eps).unsqueeze(-1) if normalize else num


def linear_attention_weights(q: torch.Tensor, k: torch.Tensor, *, feature_map: str | FeatureMap = "elu+1",
                             causal: bool = True, eps: float = 1e-6, normalize: bool = True) -> torch.Tensor:
    """The weight matrix of linear attention, ``(batch, heads, seq, seq)``: ``out = weights @ v``.

    ``q``, ``k`` ``(batch, heads, seq, head_dim)``::

        A = phi(Q) phi(K)^T,   masked to j <= i when causal       (Katharopoulos et al. 2020, linearized attention)
        W_ij = A_ij / (sum_j A_ij + eps)                          (normalize=True; else W = A)

    With a non-negative ``phi`` each row sums to ``1 - eps / (sum_j A_ij + eps)``, i.e. to one up to
    ``eps``: a weighted average of the values, like softmax attention, without the ``exp``.
    """
    phi_q, phi_k = _features(q, k, None, feature_map, eps)
    return _weights(phi_q, phi_k, causal, eps, normalize)


def _weights(phi_q: torch.Tensor, phi_k: torch.Tensor, causal: bool, eps: float, normalize: bool) -> torch.Tensor:
    """:func:`linear_attention_weights` from the features ``phi(q)``, ``phi(k)``."""
    scores = phi_q @ phi_k.transpose(-2, -1)                                    # A = phi(Q) phi(K)^T
    if causal:
        seq = phi_q.shape[2]
        keep = torch.ones(seq, seq, dtype=torch.bool, device=phi_q.device).tril()
        scores = scores.masked_fill(~keep, 0.0)                                 # only j <= i
    if not normalize:
        return scores
    return scores / (scores.sum(-1, keepdim=True) + eps)                        # rows: A_ij / (sum_j A_ij + eps)


def linear_attention_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                              feature_map: str | FeatureMap = "elu+1", causal: bool = True,
                              eps: float = 1e-6, normalize: bool = True) -> torch.Tensor:
    """Linear attention in its quadratic, parallel form: ``(batch, heads, seq, head_dim_v)``.

    ``q``, ``k`` ``(batch, heads, seq, head_dim)``, ``v`` ``(batch, heads, seq, head_dim_v)``::

        out_i = sum_j A_ij v_j / (sum_j A_ij + eps),   A = phi(Q) phi(K)^T masked to j <= i

    which is :func:`linear_attention_weights` times ``V``. ``causal=False`` lets every position see
    every other (the form of an encoder, which has no recurrent counterpart).
    """
    phi_q, phi_k = _features(q, k, v, feature_map, eps)
    return _weights(phi_q, phi_k, causal, eps, normalize) @ v                   # W V


def _initial_state(phi_k: torch.Tensor, v: torch.Tensor, state: State | None) -> State:
    """The state ``(S, z)`` to start from: zeros, or ``state`` after checking its shapes."""
    batch, heads, _, features = phi_k.shape
    shapes = ((batch, heads, features, v.shape[-1]), (batch, heads, features))
    if state is None:
        return phi_k.new_zeros(shapes[0]), phi_k.new_zeros(shapes[1])
    if (not isinstance(state, (tuple, list)) or len(state) != 2
            or not all(isinstance(t, torch.Tensor) for t in state)
            or tuple(state[0].shape) != shapes[0] or tuple(state[1].shape) != shapes[1]):
        got = ([tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in state]
               if isinstance(state, (tuple, list)) else type(state).__name__)
        raise ValueError(f"state must be (S, z) with S (batch, heads, feature_dim, head_dim_v) = {shapes[0]} "
                         f"and z (batch, heads, feature_dim) = {shapes[1]}, got {got}")
    if state[0].dtype != v.dtype or state[1].dtype != v.dtype or state[0].device != v.device:
        raise ValueError(f"state must be {v.dtype} on {v.device} like q, k and v, got "
                         f"{state[0].dtype} and {state[1].dtype} on {state[0].device}")
    return state[0], state[1]


def linear_attention_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                               feature_map: str | FeatureMap = "elu+1", state: State | None = None,
                               eps: float = 1e-6, normalize: bool = True) -> tuple[torch.Tensor, State]:
    """Causal linear attention as an RNN: one step per position, carrying ``(S, z)``.

    ``q``, ``k`` ``(batch, heads, seq, head_dim)``, ``v`` ``(batch, heads, seq, head_dim_v)``;
    ``state`` the ``(S, z)`` left by earlier positions (``None``: nothing seen yet), with
    ``S`` ``(batch, heads, feature_dim, head_dim_v)`` and ``z`` ``(batch, heads, feature_dim)``.
    Returns the outputs ``(batch, heads, seq, head_dim_v)`` and the state after the last position::

        S_i = S_{i-1} + phi(k_i) v_i^T,   z_i = z_{i-1} + phi(k_i)
        out_i = phi(q_i)^T S_i / (phi(q_i)^T z_i + eps)            (Katharopoulos et al. 2020, "transformers are RNNs")

    The state has the same size at every step: memory ``O(1)`` in the sequence length.
    """
    phi_q, phi_k = _features(q, k, v, feature_map, eps)
    s, z = _initial_state(phi_k, v, state)
    outputs = []
    for i in range(q.shape[2]):
        s = s + phi_k[:, :, i, :, None] * v[:, :, i, None, :]                   # S_i = S_{i-1} + phi(k_i) v_i^T
        z = z + phi_k[:, :, i]                                                  # z_i = z_{i-1} + phi(k_i)
        num = (phi_q[:, :, i, :, None] * s).sum(-2)                             # phi(q_i)^T S_i
        den = (phi_q[:, :, i] * z).sum(-1)                                      # phi(q_i)^T z_i
        outputs.append(_normalise(num, den, eps, normalize))
    return torch.stack(outputs, dim=2), (s, z)


def linear_attention_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                             feature_map: str | FeatureMap = "elu+1", chunk_size: int = 64,
                             state: State | None = None, eps: float = 1e-6,
                             normalize: bool = True) -> tuple[torch.Tensor, State]:
    """Causal linear attention, parallel within chunks of ``chunk_size`` positions, recurrent across them.

    Same arguments and results as :func:`linear_attention_recurrent`. For the chunk ``C`` of positions
    that follows the state ``(S, z)`` of every earlier chunk::

        num_C = phi(Q_C) S + tril(phi(Q_C) phi(K_C)^T) V_C        (the past through S, the chunk itself exactly)
        den_C = phi(Q_C) z + tril(phi(Q_C) phi(K_C)^T) 1
        S <- S + phi(K_C)^T V_C,   z <- z + phi(K_C)^T 1

    Cost ``O(seq * (chunk_size + feature_dim) * head_dim)``: linear in length. ``chunk_size >= seq``
    is the parallel form (plus the initial state); ``chunk_size = 1`` is the recurrence.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    phi_q, phi_k = _features(q, k, v, feature_map, eps)
    s, z = _initial_state(phi_k, v, state)
    seq = q.shape[2]
    size = min(chunk_size, seq)
    tril = torch.ones(size, size, dtype=torch.bool, device=q.device).tril()
    outputs = []
    for start in range(0, seq, size):
        fq, fk, vc = phi_q[:, :, start:start + size], phi_k[:, :, start:start + size], v[:, :, start:start + size]
        n = fq.shape[2]
        scores = (fq @ fk.transpose(-2, -1)).masked_fill(~tril[:n, :n], 0.0)   # tril(phi(Q_C) phi(K_C)^T)
        num = fq @ s + scores @ vc                                              # phi(Q_C) S + tril(...) V_C
        den = (fq @ z.unsqueeze(-1)).squeeze(-1) + scores.sum(-1)              # phi(Q_C) z + tril(...) 1
        outputs.append(_normalise(num, den, eps, normalize))
        s = s + fk.transpose(-2, -1) @ vc                                       # S <- S + phi(K_C)^T V_C
        z = z + fk.sum(-2)                                                      # z <- z + phi(K_C)^T 1
    return torch.cat(outputs, dim=2), (s, z)


class LinearAttention(nn.Module):
    """A causal linear-attention mixer (Katharopoulos et al. 2020) with the decoder's mixer interface.

    ``forward(x, positions, cache=None, return_weights=False)``: ``x`` is ``(batch, seq, width)``.
    Returns ``(y, weights)`` with ``y`` ``(batch, seq, width)`` and, when ``return_weights`` is set,
    the equivalent normalised weights ``(batch, n_heads, seq, seq)`` of the parallel form (rows sum
    to one, up to ``eps``, for a non-negative feature map), else ``None``.

    Projections as in :class:`~companion.nn.attention.Attention` (one ``qkv`` matrix, one ``out``)::

        q_h, k_h, v_h = x W_q^h, x W_k^h, x W_v^h;   o_h = linear_attention(q_h, k_h, v_h);   y = concat_h(o_h) W_o

    ``positions`` is accepted and not used: there is no RoPE or other position code, because the
    causal sum (the recurrence ``S_i = S_{i-1} + phi(k_i) v_i^T``) already lets each position see
    only its past. (Being a plain sum, it weighs the past without regard to distance; gated linear
    RNNs such as Mamba add a decay, chapter 7.)

    Without a cache the layer runs :func:`linear_attention_chunked` (``chunk_size`` positions at a
    time). With a :class:`~companion.nn.cache.KVCache` it keeps no keys or values: it reads the state
    ``(S, z)`` of layer ``layer_index`` (``cache.state``), continues the recurrence over the new
    positions, and stores the new state (``cache.set_state``). A prefill builds the state, each
    decoding step updates it; its size, ``batch * n_heads * head_dim * (head_dim + 1)`` numbers, does
    not depend on the sequence length. With a cache that already holds positions,
    ``return_weights`` raises ``ValueError``: the state does not keep the past keys that weights
    would need.
    """

    def __init__(self, width: int, n_heads: int, *, head_dim: int | None = None,
                 feature_map: str | FeatureMap = "elu+1", layer_index: int = 0, bias: bool = False,
                 eps: float = 1e-6, chunk_size: int = 64, normalize: bool = True) -> None:
        super().__init__()
        for name, value in (("width", width), ("n_heads", n_heads), ("chunk_size", chunk_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if head_dim is None and width % n_heads:
            raise ValueError(f"width ({width}) must be divisible by n_heads ({n_heads}), or give head_dim")
        head_dim = width // n_heads if head_dim is None else head_dim
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
            raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
        feature_map_function(feature_map)  # raises for an unknown name
        _check_eps(eps)
        self.width, self.n_heads, self.head_dim = width, n_heads, head_dim
        self.feature_map, self.layer_index = feature_map, layer_index
        self.eps, self.chunk_size, self.normalize = eps, chunk_size, normalize
        self.qkv = nn.Linear(width, 3 * n_heads * head_dim, bias=bias)
        self.out = nn.Linear(n_heads * head_dim, width, bias=bias)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values, each ``(batch, n_heads, seq, head_dim)``."""
        batch, seq, _ = x.shape
        heads = self.qkv(x).view(batch, seq, 3 * self.n_heads, self.head_dim).transpose(1, 2)
        q, k, v = heads.split(self.n_heads, dim=1)
        return q, k, v

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None, cache: KVCache | None = None,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[1] < 1 or x.shape[2] != self.width:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected x of shape (batch, seq >= 1, width={self.width}), got {got}")
        batch, seq, _ = x.shape
        if cache is not None:
            if return_weights and cache.length > 0:
                raise ValueError("return_weights needs every key, but with a cache holding "
                                 f"{cache.length} positions only the recurrent state of the past is kept")
            if batch != cache.batch:
                raise ValueError(f"the cache was made for batch {cache.batch}, got input for batch {batch}")
            cache.check_room(seq)
        q, k, v = self.project(x)
        state = cache.state(self.layer_index) if cache is not None else None
        o, state = linear_attention_chunked(q, k, v, feature_map=self.feature_map, chunk_size=self.chunk_size,
                                            state=state, eps=self.eps, normalize=self.normalize)
        if cache is not None:
            cache.set_state(self.layer_index, state)  # (S, z): replaces the previous state, same size
        y = self.out(o.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim))
        weights = (linear_attention_weights(q, k, feature_map=self.feature_map, eps=self.eps,
                                            normalize=self.normalize) if return_weights else None)
        return y, weights

    def extra_repr(self) -> str:
        return (f"width={self.width}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
                f"feature_map={self.feature_map!r}, normalize={self.normalize}")
