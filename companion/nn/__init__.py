"""The parts that models are assembled from: sequence mixers, feed-forwards, norms, positions."""

from companion.nn.recurrent import Recurrent

__all__ = ["Recurrent"]
