"""The parts that models are assembled from: sequence mixers, feed-forwards, norms, positions."""

from companion.nn.attention import Attention
from companion.nn.cache import KVCache
from companion.nn.feedforward import GeluMLP, SwiGLU
from companion.nn.latent_attention import (LatentAttention, LatentShape, latent_attention_from_hf,
                                            latent_softmax_scale)
from companion.nn.linear_attention import (LinearAttention, linear_attention_chunked,
                                           linear_attention_parallel, linear_attention_recurrent)
from companion.nn.norms import LayerNorm, RMSNorm
from companion.nn.positions import (LearnedPositions, RotaryEmbedding, SinusoidalPositions, alibi_slopes,
                                    apply_rotary)
from companion.nn.recurrent import Recurrent
from companion.nn.rope_scaling import RopeScaling, rope_frequencies

__all__ = [
    "Attention", "GeluMLP", "KVCache", "LatentAttention", "LatentShape", "LayerNorm", "LearnedPositions",
    "RMSNorm", "Recurrent",
    "RopeScaling", "RotaryEmbedding", "SinusoidalPositions", "SwiGLU", "alibi_slopes", "apply_rotary",
    "latent_attention_from_hf", "latent_softmax_scale", "LinearAttention", "linear_attention_chunked",
    "linear_attention_parallel", "linear_attention_recurrent", "rope_frequencies",
]
