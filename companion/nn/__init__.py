"""The parts that models are assembled from: sequence mixers, feed-forwards, norms, positions."""

from companion.nn.attention import Attention
from companion.nn.cache import KVCache
from companion.nn.feedforward import GeluMLP, SwiGLU
from companion.nn.norms import LayerNorm, RMSNorm
from companion.nn.positions import LearnedPositions, RotaryEmbedding, SinusoidalPositions, apply_rotary
from companion.nn.recurrent import Recurrent

__all__ = [
    "Attention", "GeluMLP", "KVCache", "LayerNorm", "LearnedPositions", "RMSNorm", "Recurrent",
    "RotaryEmbedding", "SinusoidalPositions", "SwiGLU", "apply_rotary",
]
