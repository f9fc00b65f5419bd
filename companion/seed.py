"""One call that makes an experiment repeatable."""

from __future__ import annotations

import operator
import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and PyTorch's random number generators with ``seed``.

    Returns a fresh ``torch.Generator`` seeded the same way, for code that prefers an explicit
    generator to the global one. ``PYTHONHASHSEED`` is set too, which only affects child processes.
    """
    if isinstance(seed, (bool, torch.Tensor)) or not hasattr(seed, "__index__"):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = operator.index(seed)  # NumPy integers are accepted too
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
