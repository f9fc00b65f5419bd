"""The parts that models are assembled from: sequence mixers, feed-forwards, norms, positions."""

from companion.nn.attention import Attention
from companion.nn.cache import KVCache
from companion.nn.feedforward import GeluMLP, SwiGLU
from companion.nn.norms import LayerNorm, RMSNorm
from companion.nn.positions import (LearnedPositions, RotaryEmbedding, SinusoidalPositions, alibi_slopes,
                                    apply_rotary)
from companion.nn.recurrent import Recurrent
from companion.nn.rope_scaling import RopeScaling, rope_frequencies

__all__ = [
    "Attention", "GeluMLP", "KVCache", "LayerNorm", "LearnedPositions", "RMSNorm", "Recurrent",
    "RopeScaling", "RotaryEmbedding", "SinusoidalPositions", "SwiGLU", "alibi_slopes", "apply_rotary",
    "rope_frequencies",
]
