"""RoPE's scalings: how the rotation frequencies change so that a model reaches past its training length.

RoPE (Su et al., "RoFormer", 2021) turns coordinate pair ``i`` of a query or key at position ``p``
by the angle ``p * theta_i``, with ``theta_i = base^(-2i/d)`` (``d`` the rotary dimension,
``i = 0 .. d/2 - 1``). A model trained on ``L`` positions has only seen angles up to
``L * theta_i``; beyond ``L`` the slow pairs turn further than ever in training. Each scaling changes
the ``theta_i`` (and two of them also scale cos and sin by an *attention factor* ``m``) so that a
longer context lands on angles the model knows. With ``s`` the scaling ``factor`` and
``lambda_i = 2 pi / theta_i`` the wavelength of pair ``i``:

* ``"default"``: plain RoPE, ``theta_i``.
* ``"linear"``, position interpolation (kaiokendev 2023; Chen et al., "Extending Context Window of
  Large Language Models via Positional Interpolation", 2023): ``theta_i' = theta_i / s``, i.e.
  position ``p`` is read as ``p / s``.
* ``"dynamic"``, dynamic NTK-aware scaling (bloc97 and emozilla, r/LocalLLaMA, 2023): NTK-aware
  scaling raises the base, ``base' = base * s^(d / (d - 2))``, which leaves the fastest pair alone
  and interpolates the slowest by ``s``; the dynamic variant picks the amount from the current
  length ``n`` (max position + 1), ``base' = base * (s n / L - (s - 1))^(d / (d - 2))`` for
  ``n > L``, and plain RoPE for ``n <= L``.
* ``"yarn"`` (Peng et al., "YaRN: Efficient Context Window Extension of Large Language Models",
  2023): interpolate only the slow pairs. Pair ``i`` turns ``r_i = L / lambda_i`` times over the
  original context; a ramp ``gamma_i`` is 1 where ``r_i > beta_fast`` (fast pairs: kept, i.e.
  extrapolated), 0 where ``r_i < beta_slow`` (slow pairs: divided by ``s``), linear between, and
  ``theta_i' = (1 - gamma_i) theta_i / s + gamma_i theta_i``. The ramp is written in dimension
  index: ``r_i = beta`` at ``i(beta) = d ln(L / (2 pi beta)) / (2 ln base)`` (floored / ceiled when
  ``truncate``). cos and sin are scaled by ``m = 0.1 ln s + 1`` (the paper's ``sqrt(1/t)``), or by
  ``(0.1 mscale ln s + 1) / (0.1 mscale_all_dim ln s + 1)`` when both are given (DeepSeek's form).
* ``"longrope"`` (Ding et al., "LongRoPE: Extending LLM Context Window Beyond 2 Million Tokens",
  2024; Phi-3's form): a searched factor per pair, ``theta_i' = theta_i / f_i`` with
  ``f = long_factor`` when ``n > L`` and ``short_factor`` otherwise, and
  ``m = sqrt(1 + ln s / ln L)`` (1 when ``s <= 1``).
* ``"llama3"`` (Meta, "The Llama 3 Herd of Models", 2024): by wavelength, with
  ``low = low_freq_factor``, ``high = high_freq_factor``: ``lambda_i < L / high``: ``theta_i``;
  ``lambda_i > L / low``: ``theta_i / s``; between, with ``g = (L / lambda_i - low) / (high - low)``,
  ``theta_i' = (1 - g) theta_i / s + g theta_i``.

:func:`rope_frequencies` computes these exactly as Hugging Face transformers does
(``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS``, version 5), operation for operation in
float32, so that the frequencies agree bit for bit; tests/test_rope_scaling.py checks this. Its
``head_dim`` is the rotary dimension (a model that rotates only part of each head passes that part,
``int(head_dim * partial_rotary_factor)``, which is transformers' ``dim``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

KINDS = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
# the fields each kind reads besides ``kind``; any other field must keep its default
_USES = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor", "original_max_positions"),
    "yarn": ("factor", "original_max_positions", "attention_factor", "beta_fast", "beta_slow", "mscale",
             "mscale_all_dim", "truncate"),
    "longrope": ("factor", "original_max_positions", "attention_factor", "short_factor", "long_factor"),
    "llama3": ("factor", "original_max_positions", "low_freq_factor", "high_freq_factor"),
}


@dataclass(frozen=True)
class RopeScaling:
    """How RoPE's frequencies are scaled (see the module docstring for each ``kind``'s equations).

    ``factor`` is ``s``, the context extension ratio (>= 1); ``original_max_positions`` is ``L``,
    the training length (for ``"dynamic"``: the length up to which plain RoPE is used). Fields that
    a kind does not read must stay at their defaults. Defaults (as transformers'): YaRN's
    ``beta_fast = 32``, ``beta_slow = 1``, ``truncate = True``; ``attention_factor`` None means the
    paper's value from ``factor``. ``mscale`` and ``mscale_all_dim`` are used only when both are
    nonzero (as transformers, which tests their truth). Frozen and hashable (factor lists become
    tuples), so it can sit in a :class:`~companion.models.DecoderConfig`.
    """

    kind: str = "default"
    factor: float = 1.0
    original_max_positions: int | None = None
    attention_factor: float | None = None          # yarn, longrope
    beta_fast: float | None = None                 # yarn (None: 32)
    beta_slow: float | None = None                 # yarn (None: 1)
    mscale: float | None = None                    # yarn
    mscale_all_dim: float | None = None            # yarn
    truncate: bool = True                          # yarn
    short_factor: tuple[float, ...] | None = None  # longrope, one per frequency
    long_factor: tuple[float, ...] | None = None   # longrope, one per frequency
    low_freq_factor: float | None = None           # llama3
    high_freq_factor: float | None = None          # llama3

    def __post_init__(self) -> None:
        for name in ("short_factor", "long_factor"):
            value = getattr(self, name)
            if value is not None:
                try:
                    object.__setattr__(self, name, tuple(float(x) for x in value))
                except (TypeError, ValueError):
                    raise ValueError(f"RopeScaling {name} must be a sequence of numbers, got {value!r}") from None
        if self.kind not in KINDS:
            raise ValueError(f"RopeScaling kind must be one of {KINDS}, got {self.kind!r}")
        defaults = RopeScaling.__dataclass_fields__
        unused = [f.name for f in fields(self) if f.name != "kind" and f.name not in _USES[self.kind]
                  and getattr(self, f.name) != defaults[f.name].default]
        if unused:
            raise ValueError(f"RopeScaling kind {self.kind!r} does not use {unused}")
        if self.kind == "default":
            return
        if not _number(self.factor) or self.factor < 1:
            raise ValueError(f"RopeScaling factor must be a number >= 1, got {self.factor!r}")
        if self.kind == "linear":
            return
        L = self.original_max_positions
        if isinstance(L, bool) or not isinstance(L, int) or L < 1:
            raise ValueError(f"RopeScaling kind {self.kind!r} needs original_max_positions, a positive int, got {L!r}")
        if self.attention_factor is not None and (not _number(self.attention_factor) or self.attention_factor <= 0):
            raise ValueError(f"attention_factor must be None or a number > 0, got {self.attention_factor!r}")
        if self.kind == "yarn":
            fast, slow = self.yarn_betas
            if not (_number(fast) and _number(slow) and 0 < slow <= fast):
                raise ValueError(f"YaRN needs 0 < beta_slow <= beta_fast, got beta_slow={slow!r}, beta_fast={fast!r}")
            for name in ("mscale", "mscale_all_dim"):
                if getattr(self, name) is not None and not _number(getattr(self, name)):
                    raise ValueError(f"YaRN's {name} must be None or a number, got {getattr(self, name)!r}")
            if not isinstance(self.truncate, bool):
                raise ValueError(f"YaRN's truncate must be True or False, got {self.truncate!r}")
        elif self.kind == "longrope":
            if self.attention_factor is None and self.factor > 1 and L == 1:
                raise ValueError("LongRoPE's attention factor sqrt(1 + ln factor / ln original_max_positions) "
                                 "needs original_max_positions > 1 (or an explicit attention_factor)")
            for name in ("short_factor", "long_factor"):
                value = getattr(self, name)
                if not value or any(not (math.isfinite(x) and x > 0) for x in value):
                    raise ValueError(f"LongRoPE needs {name}, a list of positive numbers (one per frequency), "
                                     f"got {value!r}")
        elif self.kind == "llama3":
            low, high = self.low_freq_factor, self.high_freq_factor
            if not (_number(low) and _number(high) and 0 < low < high):
                raise ValueError(f"llama3 scaling needs 0 < low_freq_factor < high_freq_factor, "
                                 f"got {low!r} and {high!r}")

    @property
    def yarn_betas(self) -> tuple[float, float]:
        """``(beta_fast, beta_slow)`` with their defaults 32 and 1."""
        return (32 if self.beta_fast is None else self.beta_fast, 1 if self.beta_slow is None else self.beta_slow)

    @property
    def depends_on_length(self) -> bool:
        """Whether the frequencies depend on the current sequence length (``"dynamic"``, ``"longrope"``)."""
        return self.kind in ("dynamic", "longrope")

    def regime(self, seq_len: int) -> object:
        """A key that is equal for two lengths exactly when they get the same frequencies."""
        if self.kind == "dynamic":
            return max(seq_len, self.original_max_positions)
        if self.kind == "longrope":
            return seq_len > self.original_max_positions
        return None


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _exponents(head_dim: int) -> torch.Tensor:
    """``2i / d`` for ``i = 0 .. d/2 - 1``, float32."""
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head_dim >= 2, got {head_dim!r}")
    return torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention factor ``0.1 mscale ln s + 1`` (1 for ``s <= 1``)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(exponents: torch.Tensor, head_dim: int, base: float, s: RopeScaling) -> tuple[torch.Tensor, float]:
    if s.attention_factor is not None:
        attention_factor = float(s.attention_factor)
    elif s.mscale and s.mscale_all_dim:
        attention_factor = float(_yarn_mscale(s.factor, s.mscale) / _yarn_mscale(s.factor, s.mscale_all_dim))
    else:
        attention_factor = _yarn_mscale(s.factor)

    def dimension(rotations: float) -> float:  # i(beta) = d ln(L / (2 pi beta)) / (2 ln base)
        return head_dim * math.log(s.original_max_positions / (rotations * 2 * math.pi)) / (2 * math.log(base))

    beta_fast, beta_slow = s.yarn_betas
    low, high = dimension(beta_fast), dimension(beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # gamma_i: 1 for the fast pairs (kept), 0 for the slow ones (interpolated)
    wavelengths = base ** exponents  # 1 / theta_i
    inv_freq = (1.0 / (s.factor * wavelengths)) * (1 - keep) + (1.0 / wavelengths) * keep
    return inv_freq, attention_factor


def _longrope(exponents: torch.Tensor, head_dim: int, base: float, s: RopeScaling,
              seq_len: int | None) -> tuple[torch.Tensor, float]:
    L = s.original_max_positions
    for name in ("short_factor", "long_factor"):
        if len(getattr(s, name)) != head_dim // 2:
            raise ValueError(f"LongRoPE's {name} must have head_dim // 2 = {head_dim // 2} entries, "
                             f"got {len(getattr(s, name))}")
    if s.attention_factor is not None:
        attention_factor = float(s.attention_factor)
    else:
        attention_factor = 1.0 if s.factor <= 1 else math.sqrt(1 + math.log(s.factor) / math.log(L))
    chosen = s.long_factor if seq_len and seq_len > L else s.short_factor
    return 1.0 / (torch.tensor(chosen, dtype=torch.float32) * base ** exponents), attention_factor


def _llama3(exponents: torch.Tensor, base: float, s: RopeScaling) -> torch.Tensor:
    inv_freq = 1.0 / (base ** exponents)
    L, low, high = s.original_max_positions, s.low_freq_factor, s.high_freq_factor
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > L / low, inv_freq / s.factor, inv_freq)
    g = (L / wavelength - low) / (high - low)
    smoothed = (1 - g) * scaled / s.factor + g * scaled
    medium = ~(wavelength < L / high) * ~(wavelength > L / low)
    return torch.where(medium, smoothed, scaled)


def rope_frequencies(head_dim: int, base: float = 10000.0, scaling: RopeScaling | None = None, *,
                     seq_len: int | torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """RoPE's inverse frequencies ``theta'`` (float32, ``(head_dim // 2,)``) and attention factor ``m``.

    ``scaling`` None is plain RoPE. ``seq_len`` (the current length, max position + 1) matters only
    for ``"dynamic"`` (NTK base from ``max(seq_len, L)``; None means ``L``) and ``"longrope"``
    (long factors when ``seq_len > L``; None means short). The cos and sin of the rotation are
    multiplied by ``m``. Equal, bit for bit, to ``ROPE_INIT_FUNCTIONS[kind](config, seq_len=...)``
    of transformers 5 (the default kind: ``LlamaRotaryEmbedding.compute_default_rope_parameters``)
    for the same ``seq_len``: an int, or a 0-dim integer tensor, which is what transformers' forward
    passes (``max(position_ids) + 1``) and with which dynamic NTK computes its new base in float32
    tensor arithmetic rather than in Python floats (the two differ in the last bits).
    """
    exponents = _exponents(head_dim)
    base = float(base)
    if not math.isfinite(base) or base <= 1:
        raise ValueError(f"the RoPE base must be a number > 1, got {base!r}")
    s = RopeScaling() if scaling is None else scaling
    if not isinstance(s, RopeScaling):
        raise ValueError(f"scaling must be a RopeScaling or None, got {type(scaling).__name__}")
    if s.kind == "default":
        return 1.0 / (base ** exponents), 1.0
    if s.kind == "linear":
        return 1.0 / (base ** exponents) / s.factor, 1.0
    if s.kind == "dynamic":
        if head_dim < 4:
            raise ValueError(f"dynamic NTK scaling needs head_dim >= 4 (its exponent is d / (d - 2)), got {head_dim}")
        L = s.original_max_positions
        if isinstance(seq_len, torch.Tensor):  # as transformers' forward: the new base in float32 arithmetic
            n = torch.maximum(seq_len, torch.tensor(L, dtype=seq_len.dtype, device=seq_len.device))
        else:
            n = L if seq_len is None else max(int(seq_len), L)
        base = base * ((s.factor * n / L) - (s.factor - 1)) ** (head_dim / (head_dim - 2))
        return 1.0 / (base ** exponents), 1.0
    if s.kind == "yarn":
        return _yarn(exponents, head_dim, base, s)
    if s.kind == "longrope":
        return _longrope(exponents, head_dim, base, s, seq_len)
    return _llama3(exponents, base, s), 1.0
