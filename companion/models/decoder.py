"""One decoder, assembled from a config, whose parts are chosen per layer.

Every language model in the book is a :class:`Decoder`: token embeddings, a stack of blocks, a final
norm and a projection to the vocabulary. A block mixes information across positions (a *mixer*:
attention here; state space layers in chapter 7) and then transforms each position on its own (a
*feed-forward*: SwiGLU or GELU here; a mixture of experts in chapter 6), each wrapped in a residual
connection with a normalisation::

    pre-norm (GPT-2, Llama):   x = x + mixer(norm_1(x));   x = x + ffn(norm_2(x))
    post-norm (Vaswani 2017):  x = norm_1(x + mixer(x));   x = norm_2(x + ffn(x))

(``residual=False`` drops the ``x +``, only to show in chapter 2 what the residual path is for.)

``config.mixers`` and ``config.feedforwards`` name the part of each layer, from the registries
:data:`MIXERS` and :data:`FEEDFORWARDS`; later chapters register new kinds there instead of writing
new models. With RMSNorm, SwiGLU, RoPE, pre-norm and no biases, the decoder is a Llama
(Touvron et al. 2023): :func:`companion.models.from_hf` converts Hugging Face checkpoints.

Positions (``config.positions``): ``"rope"`` rotates queries and keys (Su et al. 2021), optionally
with a ``rope_scaling`` (:class:`~companion.nn.rope_scaling.RopeScaling`: position interpolation,
dynamic NTK, YaRN, LongRoPE, Llama 3); ``"learned"`` and ``"sinusoidal"`` add a vector to each token
embedding; ``"alibi"`` biases every head's scores by ``-slope_h * |i - j|`` (Press et al. 2022);
``"none"`` gives no position information beyond the causal mask.

Multi-head latent attention (DeepSeek-V2/V3, :mod:`companion.nn.latent_attention`) is the mixer
kind ``"latent_attention"``, whose sizes are ``config.latent`` (a
:class:`~companion.nn.latent_attention.LatentShape`); it needs ``positions="rope"``, which then
rotates ``qk_rope_head_dim`` coordinates (``n_kv_heads`` and ``head_dim`` apply to ``"attention"``
layers only).

A mixture of experts (chapter 6, :mod:`companion.nn.moe`) is the feed-forward kind ``"moe"``, whose
sizes and routing policy are ``config.moe`` (a :class:`~companion.nn.moe.MoEShape`); for example
``feedforwards=("moe", "swiglu") * 2`` alternates sparse and dense layers. Each MoE layer leaves its
auxiliary losses on itself after a forward pass: add :func:`~companion.nn.moe.moe_aux_loss` of the
model to the training loss. (The experts have no biases: ``mlp_bias`` applies to dense layers.)

State space layers (chapter 7) are mixers too: ``"s4d"`` (the LTI S4D layer,
:class:`~companion.nn.ssm.S4DLayer`), ``"mamba"`` (:class:`~companion.nn.mamba.MambaMixer`) and
``"mamba2"`` (:class:`~companion.nn.mamba2.Mamba2Mixer`), whose sizes are ``config.ssm`` (a
:class:`~companion.nn.mamba.MambaShape`; ``"s4d"`` reads its ``d_state``, 64 without one). They keep
a state of fixed size in the cache instead of keys and values. A Mamba block has no feed-forward:
the feed-forward kind ``"none"`` makes a block ``x + mixer(norm_1(x))`` (no second norm), and
``positions="none"`` suits a model with no attention. Hybrids (Jamba, Bamba) are per-layer
mixers, e.g. ``mixers=("mamba", "attention", "mamba", "mamba")``.

``causal=False`` lets every position attend to every other (an encoder: BERT, the vision
transformer); it needs every mixer to be ``"attention"``. The patch encoder of chapter 8
(:mod:`companion.models.vit`) is a stack of these same blocks with the mask off.

``model(ids, prefix=embeddings)`` puts given input embeddings ``(batch, P, width)`` before the embedded
ids, with positions running on across both and the causal mask over the whole sequence: the
captioner of chapter 8 (:mod:`companion.models.captioner`, after LLaVA) feeds projected image patches
this way. Without a prefix the computation is exactly the one above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from companion.nn.attention import Attention
from companion.nn.cache import KVCache
from companion.nn.feedforward import GeluMLP, SwiGLU, default_hidden
from companion.nn.latent_attention import LatentAttention, LatentShape
from companion.nn.linear_attention import LinearAttention
from companion.nn.mamba import MambaMixer, MambaShape
from companion.nn.mamba2 import Mamba2Mixer
from companion.nn.moe import MoE, MoEShape
from companion.nn.norms import make_norm
from companion.nn.positions import LearnedPositions, RotaryEmbedding, SinusoidalPositions, alibi_slopes
from companion.nn.rope_scaling import RopeScaling, rope_frequencies
from companion.nn.ssm import S4DLayer
from companion.models.sampling import sample_next

POSITIONS = ("rope", "learned", "sinusoidal", "alibi", "none")


@dataclass(frozen=True)
class DecoderConfig:
    """Everything that defines a decoder's shape. Defaults give a small Llama-style model."""

    vocab_size: int
    width: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None          # None: as many as n_heads (multi-head attention)
    head_dim: int | None = None            # None: width // n_heads
    ffn: str = "swiglu"                    # default feed-forward kind of every layer
    ffn_hidden: int | None = None          # None: 4 x width (gelu) or about 8/3 x width (swiglu)
    norm: str = "rmsnorm"                  # "rmsnorm" or "layernorm"
    norm_eps: float = 1e-5
    norm_position: str = "pre"             # "pre" or "post"
    residual: bool = True                  # False only to show what residual connections do
    positions: str = "rope"                # "rope", "learned", "sinusoidal", "alibi" or "none"
    rope_base: float = 10000.0
    rope_scaling: RopeScaling | None = None  # RoPE's scaling (positions="rope" only); None: plain RoPE
    max_positions: int = 2048              # learned positions: table size; others: initial cache size
    window: int | None = None              # sliding-window attention (None: full causal)
    causal: bool = True                    # False: every position attends to every other (an encoder)
    tie_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    mixers: tuple[str, ...] | None = None        # per layer; None: ("attention",) * n_layers
    feedforwards: tuple[str, ...] | None = None  # per layer; None: (ffn,) * n_layers
    init_std: float = 0.02
    embed_scale: float = 1.0               # token embeddings are multiplied by this (Vaswani et al.: sqrt(width))
    latent: LatentShape | None = None      # the sizes of "latent_attention" layers (MLA); None: no such layer
    moe: MoEShape | None = None            # the sizes and routing of "moe" feed-forwards; None: no such layer
    ssm: MambaShape | None = None          # the sizes of "mamba"/"mamba2" (and "s4d") layers; None: no such layer

    def __post_init__(self) -> None:
        for name in ("vocab_size", "width", "n_layers", "n_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        kv = self.kv_heads
        if kv < 1 or self.n_heads % kv:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({kv})")
        if self.head_dim is None and self.width % self.n_heads and not self.only_latent:
            raise ValueError(f"width ({self.width}) must be divisible by n_heads ({self.n_heads}), or give head_dim")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.positions == "rope" and self.rope_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {self.rope_dim}")
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, RopeScaling):
                raise ValueError(f"rope_scaling must be a RopeScaling or None, got {type(self.rope_scaling).__name__}")
            if self.positions != "rope":
                raise ValueError(f"rope_scaling needs positions='rope', got positions={self.positions!r}")
            rope_frequencies(self.rope_dim, self.rope_base, self.rope_scaling)  # raises if it cannot apply
        if (isinstance(self.embed_scale, bool) or not isinstance(self.embed_scale, (int, float))
                or not math.isfinite(self.embed_scale) or self.embed_scale <= 0):
            raise ValueError(f"embed_scale must be a positive number, got {self.embed_scale!r}")
        if self.norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position must be 'pre' or 'post', got {self.norm_position!r}")
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be a bool, got {self.causal!r}")
        for name, kinds, registry in (("mixers", self.layer_mixers, MIXERS),
                                      ("feedforwards", self.layer_feedforwards, FEEDFORWARDS)):
            if len(kinds) != self.n_layers:
                raise ValueError(f"{name} must name one part per layer ({self.n_layers}), got {len(kinds)}")
            unknown = sorted(set(kinds) - set(registry))
            if unknown:
                raise ValueError(f"unknown {name} {unknown}; registered: {sorted(registry)}")
        if not self.causal and set(self.layer_mixers) != {"attention"}:
            raise ValueError(f"causal=False needs every mixer to be 'attention' (the others are causal by "
                             f"construction), got {sorted(set(self.layer_mixers))}")
        if self.latent is not None or "latent_attention" in self.layer_mixers:
            self._check_latent()
        if self.moe is not None or "moe" in self.layer_feedforwards:
            self._check_moe()
        if self.ssm is not None or {"mamba", "mamba2"} & set(self.layer_mixers):
            self._check_ssm()

    def _check_latent(self) -> None:
        """``latent`` is set exactly when some layer is ``"latent_attention"``, with rotary positions."""
        if self.latent is None:
            raise ValueError("mixers 'latent_attention' need latent, a LatentShape, got None")
        if not isinstance(self.latent, LatentShape):
            raise ValueError(f"latent must be a LatentShape or None, got {type(self.latent).__name__}")
        if "latent_attention" not in self.layer_mixers:
            raise ValueError("latent is set but no layer is 'latent_attention'; expected latent=None")
        if self.positions != "rope":
            raise ValueError(f"latent attention rotates its decoupled key with RoPE: expected positions='rope', "
                             f"got {self.positions!r}")
        if self.rope_scaling is not None:
            rope_frequencies(self.latent.qk_rope_head_dim, self.rope_base, self.rope_scaling)

    def _check_moe(self) -> None:
        """``moe`` is set exactly when some layer's feed-forward is ``"moe"``."""
        if self.moe is None:
            raise ValueError("feedforwards 'moe' need moe, a MoEShape, got None")
        if not isinstance(self.moe, MoEShape):
            raise ValueError(f"moe must be a MoEShape or None, got {type(self.moe).__name__}")
        if "moe" not in self.layer_feedforwards:
            raise ValueError("moe is set but no layer's feed-forward is 'moe'; expected moe=None")

    def _check_ssm(self) -> None:
        """``ssm`` is set when some layer is ``"mamba"`` or ``"mamba2"``, and only with a state space layer."""
        if self.ssm is None:
            raise ValueError("mixers 'mamba' and 'mamba2' need ssm, a MambaShape, got None")
        if not isinstance(self.ssm, MambaShape):
            raise ValueError(f"ssm must be a MambaShape or None, got {type(self.ssm).__name__}")
        if not {"mamba", "mamba2", "s4d"} & set(self.layer_mixers):
            raise ValueError("ssm is set but no layer is 's4d', 'mamba' or 'mamba2'; expected ssm=None")
        if "mamba2" in self.layer_mixers:
            self.ssm.check_mamba2(self.width)

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def dim_per_head(self) -> int:
        return self.width // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def only_latent(self) -> bool:
        """Whether every layer is latent attention (then ``n_kv_heads`` and ``head_dim`` play no part)."""
        return isinstance(self.latent, LatentShape) and all(kind == "latent_attention" for kind in self.layer_mixers)

    @property
    def rope_dim(self) -> int:
        """The rotary dimension of the decoder's shared RoPE: ``latent.qk_rope_head_dim`` when every
        layer is latent attention, else ``dim_per_head``."""
        return self.latent.qk_rope_head_dim if self.only_latent else self.dim_per_head

    @property
    def hidden(self) -> int:
        return default_hidden(self.ffn, self.width) if self.ffn_hidden is None else self.ffn_hidden

    @property
    def layer_mixers(self) -> tuple[str, ...]:
        return ("attention",) * self.n_layers if self.mixers is None else tuple(self.mixers)

    @property
    def layer_feedforwards(self) -> tuple[str, ...]:
        return (self.ffn,) * self.n_layers if self.feedforwards is None else tuple(self.feedforwards)


def _attention(config: DecoderConfig, index: int, rope: RotaryEmbedding | None) -> nn.Module:
    slopes = alibi_slopes(config.n_heads) if config.positions == "alibi" else None
    return Attention(config.width, config.n_heads, config.kv_heads, config.dim_per_head,
                     bias=config.attention_bias, rope=rope, window=config.window, causal=config.causal,
                     layer_index=index, alibi_slopes=slopes)


def _latent_attention(config: DecoderConfig, index: int, rope: RotaryEmbedding | None) -> nn.Module:
    """Multi-head latent attention (DeepSeek-V2) with ``config.latent``'s sizes and ``config.n_heads`` heads."""
    shape = config.latent
    if rope is None or rope.head_dim != shape.qk_rope_head_dim:  # beside "attention" layers: a RoPE of its own
        rope = RotaryEmbedding(shape.qk_rope_head_dim, config.rope_base, max_positions=config.max_positions,
                               scaling=config.rope_scaling)
    return LatentAttention(config.width, config.n_heads, shape, rope=rope, layer_index=index,
                           bias=config.attention_bias, window=config.window)


def _linear_attention(config: DecoderConfig, index: int, rope: RotaryEmbedding | None) -> nn.Module:
    """Linear attention (Katharopoulos et al. 2020): ``config.n_heads`` heads of ``config.dim_per_head``.

    It uses no rotary positions (order enters through the causal running sums); a decoder of only
    linear-attention layers gets positions from ``config.positions`` (``"learned"``, ``"sinusoidal"``)
    or none at all (``"none"``); with ``"rope"`` the rotation is simply not applied in these layers.
    """
    return LinearAttention(config.width, config.n_heads, head_dim=config.dim_per_head, bias=config.attention_bias,
                           layer_index=index)


def _s4d(config: DecoderConfig, index: int, rope: RotaryEmbedding | None) -> nn.Module:
    """The LTI S4D layer (Gu et al. 2022) with ``config.ssm.d_state`` modes per channel (64 without ``ssm``)."""
    return S4DLayer(config.width, 64 if config.ssm is None else config.ssm.d_state, layer_index=index)


def _mamba(config: DecoderConfig, index: int, rope: RotaryEmbedding | None) -> nn.Module:
    """A Mamba layer (Gu and Dao 2023) with ``config.ssm``'s sizes; no positions (order is in the scan)."""
    return MambaMixer(config.width, config.ssm, layer_index=index)


def _mamba2(config: DecoderConfig, index: int, rope: RotaryEmbedding | None) -> nn.Module:
    """A Mamba-2 layer (Dao and Gu 2024) with ``config.ssm``'s sizes; its gated norm uses ``config.norm_eps``."""
    return Mamba2Mixer(config.width, config.ssm, layer_index=index, eps=config.norm_eps)


def _swiglu(config: DecoderConfig, index: int) -> nn.Module:
    return SwiGLU(config.width, config.hidden, bias=config.mlp_bias)


def _gelu(config: DecoderConfig, index: int) -> nn.Module:
    return GeluMLP(config.width, config.hidden, bias=config.mlp_bias)


def _moe(config: DecoderConfig, index: int) -> nn.Module:
    """A mixture of experts with ``config.moe``'s sizes; GPT-2's initialisation, as the dense layers get."""
    return MoE(config.width, config.moe, init_std=config.init_std,
               out_std=config.init_std / (2 * config.n_layers) ** 0.5)


def _no_feedforward(config: DecoderConfig, index: int) -> None:
    """No feed-forward (a Mamba block): the block is its mixer with a residual and one norm."""
    return None


# Registries of the parts a layer can use. A mixer is built as ``MIXERS[kind](config, layer, rope)``
# and called as ``mixer(x, positions, cache, return_weights) -> (y, weights or None)``; a
# feed-forward is built as ``FEEDFORWARDS[kind](config, layer)`` and called as ``ffn(x) -> y``
# (a builder that returns None, as "none" does, leaves the block without feed-forward).
MIXERS: dict[str, Callable[..., nn.Module]] = {"attention": _attention, "latent_attention": _latent_attention,
                                                "linear_attention": _linear_attention, "s4d": _s4d,
                                                "mamba": _mamba, "mamba2": _mamba2}
FEEDFORWARDS: dict[str, Callable[..., nn.Module | None]] = {"swiglu": _swiglu, "gelu": _gelu, "moe": _moe,
                                                            "none": _no_feedforward}


class Block(nn.Module):
    """A mixer and a feed-forward, each with a residual connection and a norm (pre or post).

    With the feed-forward kind ``"none"`` (``ffn`` and ``norm_2`` are None) the block is the mixer
    alone: ``x + mixer(norm_1(x))`` (pre) or ``norm_1(x + mixer(x))`` (post).
    """

    def __init__(self, config: DecoderConfig, index: int, rope: RotaryEmbedding | None) -> None:
        super().__init__()
        self.pre = config.norm_position == "pre"
        self.residual = config.residual
        self.norm_1 = make_norm(config.norm, config.width, config.norm_eps)
        self.mixer = MIXERS[config.layer_mixers[index]](config, index, rope)
        ffn = FEEDFORWARDS[config.layer_feedforwards[index]](config, index)
        self.norm_2 = None if ffn is None else make_norm(config.norm, config.width, config.norm_eps)
        self.ffn = ffn

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        keep = 1.0 if self.residual else 0.0  # without residuals each sublayer replaces x
        if self.pre:
            mixed, weights = self.mixer(self.norm_1(x), positions, cache, return_weights)
            x = keep * x + mixed
            if self.ffn is None:
                return x, weights
            return keep * x + self.ffn(self.norm_2(x)), weights
        mixed, weights = self.mixer(x, positions, cache, return_weights)
        x = self.norm_1(keep * x + mixed)
        if self.ffn is None:
            return x, weights
        return self.norm_2(keep * x + self.ffn(x)), weights


@dataclass
class DecoderOutput:
    """What :meth:`Decoder.forward` returns when asked for more than logits."""

    logits: torch.Tensor
    attention: list[torch.Tensor | None] = field(default_factory=list)


class Decoder(nn.Module):
    """A decoder-only language model: ``model(ids)`` -> logits ``(batch, seq, vocab_size)``."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.width)
        self.rope = (RotaryEmbedding(config.rope_dim, config.rope_base, max_positions=config.max_positions,
                                     scaling=config.rope_scaling)
                     if config.positions == "rope" else None)
        if config.positions == "learned":
            self.positions = LearnedPositions(config.max_positions, config.width)
        elif config.positions == "sinusoidal":
            self.positions = SinusoidalPositions(config.width, max_positions=config.max_positions)
        else:
            self.positions = None
        self.blocks = nn.ModuleList(Block(config, i, self.rope) for i in range(config.n_layers))
        self.norm = make_norm(config.norm, config.width, config.norm_eps)
        self.lm_head = nn.Linear(config.width, config.vocab_size, bias=False)
        self.apply(self._init)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def _init(self, module: nn.Module) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases; residual outputs scaled by 1/sqrt(2L).

        A module marked ``_no_reinit`` keeps the initialisation its layer gave it (Mamba's ``dt_proj``,
        as in the reference implementation); a mixer's output projection is ``out`` or ``out_proj``.
        """
        std = self.config.init_std
        if getattr(module, "_no_reinit", False):
            return
        if isinstance(module, nn.Linear):
            out_proj = any(module is getattr(b.mixer, "out", None) or module is getattr(b.mixer, "out_proj", None)
                           or module is getattr(b.ffn, "down", None)
                           or module is getattr(getattr(b.ffn, "shared", None), "down", None)  # MoE's shared experts
                           for b in getattr(self, "blocks", []))
            nn.init.normal_(module.weight, std=std / (2 * self.config.n_layers) ** 0.5 if out_proj else std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)

    def new_cache(self, batch: int, max_length: int) -> KVCache:
        """An empty key-value cache for ``batch`` sequences of up to ``max_length`` tokens."""
        param = self.embed.weight
        return KVCache(batch, max_length, dtype=param.dtype, device=param.device)

    def _check_ids(self, ids: torch.Tensor) -> None:
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long or ids.ndim != 2 or ids.shape[1] == 0:
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"expected token ids as a (batch, seq >= 1) torch.long tensor, got {shape}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), "
                             f"got [{int(ids.min())}, {int(ids.max())}]")

    def _check_prefix(self, prefix: torch.Tensor, ids: torch.Tensor) -> None:
        """Raise unless ``prefix`` is ``(batch, P >= 1, width)`` in the model's dtype and on its device."""
        width = self.config.width
        param = self.embed.weight
        expected = f"(batch={ids.shape[0]}, P >= 1, width={width})"
        if not isinstance(prefix, torch.Tensor):
            raise TypeError(f"expected prefix embeddings as a torch.Tensor {expected}, got {type(prefix).__name__}")
        if prefix.dtype != param.dtype:
            raise TypeError(f"expected prefix embeddings of dtype {param.dtype} (the model's), got {prefix.dtype}")
        if prefix.ndim != 3 or prefix.shape[1] == 0:
            raise ValueError(f"expected prefix embeddings {expected}, got shape {tuple(prefix.shape)}")
        if prefix.shape[2] != width:
            raise ValueError(f"expected prefix embeddings of width {width} (the model's) {expected}, "
                             f"got width {prefix.shape[2]}")
        if prefix.shape[0] != ids.shape[0]:
            raise ValueError(f"expected prefix embeddings for the batch of the ids, {ids.shape[0]}, {expected}, "
                             f"got batch {prefix.shape[0]}")
        if prefix.device != param.device:
            raise ValueError(f"expected prefix embeddings on {param.device} (the model's device), got {prefix.device}")

    def forward(self, ids: torch.Tensor, *, prefix: torch.Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False, return_attention: bool = False) -> torch.Tensor | DecoderOutput:
        """Next-token logits for every position of ``ids`` ``(batch, seq)``.

        With a ``cache``, ``ids`` continue the cached sequence (their positions start at
        ``cache.length``) and the cache is extended. ``last_only`` computes logits for the last
        position only, ``(batch, 1, vocab)``. ``return_attention`` returns a :class:`DecoderOutput`
        with each layer's attention probabilities ``(batch, heads, seq, keys)``.

        ``prefix`` ``(batch, P, width)`` puts given input embeddings before the embedded ids (a
        multimodal model's projected image patches, as LLaVA does: :mod:`companion.models.captioner`).
        The sequence is then ``[prefix; embed(ids)]``, ``P + seq`` positions long: positions run on
        from the prefix into the ids (``P`` is counted by the cache too), additive position vectors
        (``"learned"``, ``"sinusoidal"``) are added to the prefix as well, ``embed_scale`` applies to
        the embedded ids only, and attention stays causal over the whole sequence (so a prefix
        position sees the positions before it, not after; LLaVA does the same). The logits are for
        the positions of ``ids`` only, ``(batch, seq, vocab)``; ``ids`` may then be empty
        ``(batch, 0)``, for example to feed a prefix into a cache before decoding, and
        ``last_only`` gives the logits of the last position fed, a prefix position when ``ids`` is
        empty. With ``return_attention`` the maps cover the whole sequence,
        ``(batch, heads, P + seq, keys)``. ``prefix=None`` runs exactly the computation without it.

        Args:
            ids: token ids ``(batch, seq)``, ``torch.long``; ``seq >= 1`` unless a prefix is given.
            prefix: input embeddings ``(batch, P >= 1, width)`` in the model's dtype and on its
                device, put before the ids; None: none.
            cache: a :class:`~companion.nn.cache.KVCache` to continue and extend; None: none.
            last_only: compute the logits of the last position only.
            return_attention: also return each layer's attention probabilities.

        Returns:
            Logits ``(batch, seq, vocab)`` (``(batch, 1, vocab)`` with ``last_only``), or a
            :class:`DecoderOutput` holding them and the attention maps.

        Raises:
            ValueError: ids that are not a ``(batch, seq)`` long tensor of valid ids; a prefix of
                another shape, width, batch or device.
            TypeError: a prefix that is not a tensor of the model's dtype.
        """
        prefix_alone = (prefix is not None and isinstance(ids, torch.Tensor) and ids.dtype == torch.long
                        and ids.ndim == 2 and ids.shape[1] == 0)
        if not prefix_alone:
            self._check_ids(ids)
        if prefix is not None:
            self._check_prefix(prefix, ids)
        return self._run(ids, cache, last_only, return_attention, prefix)

    def _run(self, ids: torch.Tensor, cache: KVCache | None, last_only: bool,
             return_attention: bool = False, prefix: torch.Tensor | None = None) -> torch.Tensor | DecoderOutput:
        """The forward pass on ids (and a prefix) already known to be valid."""
        start = cache.length if cache is not None else 0
        n_prefix = 0 if prefix is None else prefix.shape[1]
        positions = torch.arange(start, start + n_prefix + ids.shape[1], device=ids.device)
        x = self.embed(ids)
        if self.config.embed_scale != 1.0:
            x = x * self.config.embed_scale
        if prefix is not None:
            x = torch.cat([prefix, x], dim=1)
        if self.positions is not None:
            x = x + self.positions(positions)
        maps = []
        for block in self.blocks:
            x, weights = block(x, positions, cache, return_attention)
            maps.append(weights)
        if cache is not None:
            cache.advance(x.shape[1])
        if prefix is not None and not last_only:
            x = x[:, n_prefix:]  # logits for the ids' positions only
        x = self.norm(x[:, -1:] if last_only else x)
        logits = self.lm_head(x)
        return DecoderOutput(logits, maps) if return_attention else logits

    def generate(self, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, *,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """Extend ``ids`` ``(batch, seq)`` by ``max_new_tokens`` tokens; returns ``(batch, seq + new)``.

        ``temperature=0`` is greedy decoding; otherwise tokens are sampled (see
        :mod:`companion.models.sampling`) with ``generator``. With ``use_cache`` (the default) each
        step runs only the newest token through the model, reading earlier keys and values from a
        :class:`~companion.nn.cache.KVCache`; without it, every step reruns the whole sequence. Both
        give the same tokens.
        """
        self._check_ids(ids)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        if max_new_tokens == 0:
            return ids
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():  # like no_grad, with less bookkeeping per operation
                out = self._generate(ids, max_new_tokens, temperature, top_k, top_p, generator, use_cache)
            return out.clone()  # a normal tensor again, usable as input to a model being trained
        finally:
            self.train(was_training)

    def _generate(self, ids: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None,
                  top_p: float | None, generator: torch.Generator | None, use_cache: bool) -> torch.Tensor:
        """The generation loop (the output tensor is written in place, one column per step)."""
        batch, prompt = ids.shape
        cache = self.new_cache(batch, prompt + max_new_tokens) if use_cache else None
        out = torch.empty(batch, prompt + max_new_tokens, dtype=ids.dtype, device=ids.device)
        out[:, :prompt] = ids
        logits = self._run(ids, cache, last_only=True)[:, -1]
        for step in range(max_new_tokens):
            end = prompt + step
            out[:, end] = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                      generator=generator)
            if step + 1 == max_new_tokens:
                break
            # sampled tokens are valid ids by construction: no need to check them again
            if use_cache:
                logits = self._run(out[:, end:end + 1], cache, last_only=True)[:, -1]
            else:
                logits = self._run(out[:, :end + 1], None, last_only=True)[:, -1]
        return out

    def num_parameters(self, *, embeddings: bool = True) -> int:
        """Parameters, counting tied weights once (optionally without the token embedding table)."""
        unique = {id(p): p for p in self.parameters()}
        total = sum(p.numel() for p in unique.values())
        return total if embeddings else total - self.embed.weight.numel()


def with_changes(config: DecoderConfig, **changes) -> DecoderConfig:
    """A copy of ``config`` with some fields changed (validated again)."""
    return replace(config, **changes)
