"""The companion package of *Attention and Beyond*.

Layers, from the bottom up (nothing imports from a layer above it):
``device``/``seed`` -> ``data`` -> ``kernels`` -> ``nn`` -> ``models`` -> ``train`` -> ``bench`` /
``interpret`` / ``calibration`` (the analysis tools) -> ``plot`` / ``widgets``. Submodules are
imported explicitly (``from companion import data``), so that ``import companion`` stays cheap.
"""

__version__ = "0.1.0"

from companion.seed import seed_everything

__all__ = ["__version__", "seed_everything"]
