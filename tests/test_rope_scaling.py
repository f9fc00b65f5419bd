"""RoPE's scalings: companion.nn.rope_scaling against transformers, against the papers' formulas,
and inside RotaryEmbedding.

transformers' functions (``ROPE_INIT_FUNCTIONS`` and Llama's default) are the reference the
checkpoints were trained with: for random configurations (head dims, bases, factors, original
lengths, YaRN's betas and mscales, Llama 3's band factors, LongRoPE's factor lists) and lengths
below, at and above the original length, the inverse frequencies must be equal bit for bit and the
attention factors equal as floats. The configurations go through ``rope_from_config``, so a field
read from the wrong key shows up too. The formula tests are written from the papers in float64 and
call nothing of the companion's arithmetic.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion.models import DecoderConfig
from companion.nn import RopeScaling, RotaryEmbedding, rope_frequencies
from companion.nn.positions import rope_inverse_frequencies

F64 = torch.float64
KINDS = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
RANDOM = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def transformers_frequencies(config, kind, seq_len):
    """transformers' inverse frequencies and attention factor for ``config`` at ``seq_len``."""
    rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    if kind == "default":
        return llama.LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    return rope_utils.ROPE_INIT_FUNCTIONS[kind](config, None, seq_len=seq_len)


@st.composite
def rope_configs(draw, kind):
    """A random transformers rope configuration of ``kind``: (head_dim, LlamaConfig, original length)."""
    head_dim = 2 * draw(st.integers(2, 48))
    theta = draw(st.floats(1.5, 1e6) | st.integers(2, 500_000) | st.just(10_000.0))
    original = draw(st.integers(2 if kind == "longrope" else 1, 4096))  # LongRoPE divides by ln(original)
    max_positions = original * draw(st.integers(1, 8))
    params = {"rope_type": kind, "rope_theta": theta}
    if kind != "default":
        params["factor"] = draw(st.floats(1.0, 64.0) | st.integers(1, 32))
    if kind in ("yarn", "longrope", "llama3"):
        params["original_max_position_embeddings"] = original
    if kind == "yarn":
        beta_fast = draw(st.none() | st.floats(1.0, 128.0))  # below 1 (the default beta_slow): invalid
        if beta_fast is not None:
            params["beta_fast"] = beta_fast
        beta_slow = draw(st.none() | st.floats(0.01, 1.0))  # a fraction of beta_fast
        if beta_slow is not None:
            params["beta_slow"] = beta_slow * (beta_fast or 32)
        if draw(st.booleans()):
            params["attention_factor"] = draw(st.floats(0.1, 4.0))
        if draw(st.booleans()):
            params["mscale"] = draw(st.floats(0.1, 2.0))
            params["mscale_all_dim"] = draw(st.floats(0.1, 2.0))
        if draw(st.booleans()):
            params["truncate"] = draw(st.booleans())
    elif kind == "longrope":
        factors = st.lists(st.floats(0.25, 64.0), min_size=head_dim // 2, max_size=head_dim // 2)
        params["short_factor"] = draw(factors)
        params["long_factor"] = draw(factors)
        if draw(st.booleans()):
            del params["factor"]  # transformers then uses max_position_embeddings / original
        if draw(st.booleans()):
            params["attention_factor"] = draw(st.floats(0.1, 4.0))
    elif kind == "llama3":
        low = draw(st.floats(0.05, 8.0))
        params["low_freq_factor"] = low
        params["high_freq_factor"] = low + draw(st.floats(0.01, 16.0))
    if kind == "dynamic":
        max_positions = original  # dynamic NTK's original length is max_position_embeddings
    from transformers import LlamaConfig
    heads = draw(st.integers(1, 3))
    config = LlamaConfig(hidden_size=head_dim * heads, num_attention_heads=heads, head_dim=head_dim,
                         max_position_embeddings=max_positions, rope_parameters=dict(params))
    return head_dim, config, original


@pytest.mark.parametrize("kind", KINDS)
@RANDOM
@given(data=st.data())
def test_frequencies_equal_transformers_for_random_configurations(kind, data):
    pytest.importorskip("transformers")
    from companion.models import rope_from_config

    head_dim, config, original = data.draw(rope_configs(kind))
    base, scaling = rope_from_config(config)
    assert (scaling is None) == (kind == "default")
    lengths = [None, data.draw(st.integers(1, original)), original, original + 1,
               data.draw(st.integers(original + 1, 4 * original + 8))]
    for seq_len in lengths:
        expected, expected_factor = transformers_frequencies(config, kind, seq_len)
        got, factor = rope_frequencies(head_dim, base, scaling, seq_len=seq_len)
        assert got.dtype == torch.float32 and got.shape == (head_dim // 2,)
        assert torch.equal(got, expected), (seq_len, (got - expected).abs().max())
        assert factor == expected_factor
        if kind == "dynamic" and seq_len is not None:  # transformers' forward passes a 0-dim tensor
            expected, _ = transformers_frequencies(config, kind, torch.tensor(seq_len))
            got, _ = rope_frequencies(head_dim, base, scaling, seq_len=torch.tensor(seq_len))
            assert torch.equal(got, expected)


def test_plain_rope_is_the_old_inverse_frequencies_bit_for_bit():
    for head_dim, base in [(2, 10000.0), (8, 500.0), (64, 10000.0), (128, 500000.0)]:
        got, factor = rope_frequencies(head_dim, base)
        assert torch.equal(got, rope_inverse_frequencies(head_dim, base)) and factor == 1.0
        assert torch.equal(rope_frequencies(head_dim, base, RopeScaling())[0], got)
        assert torch.equal(RotaryEmbedding(head_dim, base, scaling=RopeScaling()).inv_freq, got)


# ------------------------------------------------------------------------------------------------
# The papers' formulas, in float64
# ------------------------------------------------------------------------------------------------

def theta(head_dim, base):
    return base ** (-torch.arange(0, head_dim, 2, dtype=F64) / head_dim)


def assert_frequencies(got, expected):
    torch.testing.assert_close(got.double(), expected, rtol=2e-6, atol=0)


def test_linear_interpolation_divides_every_frequency_by_the_factor():
    got, factor = rope_frequencies(16, 500.0, RopeScaling("linear", factor=4.0))
    assert_frequencies(got, theta(16, 500.0) / 4)
    assert factor == 1.0


def test_dynamic_ntk_raises_the_base_beyond_the_original_length_only():
    s = RopeScaling("dynamic", factor=4.0, original_max_positions=100)
    for n in (None, 1, 50, 100):
        assert_frequencies(rope_frequencies(16, 1000.0, s, seq_len=n)[0], theta(16, 1000.0))
    for n in (101, 250, 1000):
        new_base = 1000.0 * (4.0 * n / 100 - 3.0) ** (16 / 14)
        got, factor = rope_frequencies(16, 1000.0, s, seq_len=n)
        assert_frequencies(got, theta(16, new_base))
        assert factor == 1.0
    # the fastest pair is never interpolated; the slowest is interpolated by s' = new_base^((d-2)/d) / base^...
    far = rope_frequencies(16, 1000.0, s, seq_len=1000)[0]
    assert far[0] == 1.0 and far[-1] < theta(16, 1000.0)[-1] / 10


def test_yarn_keeps_fast_pairs_interpolates_slow_ones_and_scales_attention():
    head_dim, base, L, s = 32, 10000.0, 512, 8.0
    got, factor = rope_frequencies(head_dim, base, RopeScaling("yarn", factor=s, original_max_positions=L))
    plain = theta(head_dim, base)
    rotations = L * plain / (2 * math.pi)  # r_i: turns of pair i over the original context
    fast, slow = rotations > 32, rotations < 1
    assert fast.any() and slow.any() and (~fast & ~slow).any()

    def dim(beta):  # the dimension index where r_i = beta
        return head_dim * math.log(L / (2 * math.pi * beta)) / (2 * math.log(base))

    index = torch.arange(head_dim // 2)
    kept, interpolated = index <= math.floor(dim(32)), index >= math.ceil(dim(1))
    assert_frequencies(got[kept], plain[kept])
    assert_frequencies(got[interpolated], plain[interpolated] / s)
    middle = ~kept & ~interpolated
    assert middle.any()
    assert torch.all(got[middle].double() < plain[middle]) and torch.all(got[middle].double() > plain[middle] / s)
    assert torch.all(got[1:] < got[:-1])  # still one frequency per pair, ordered
    assert math.isclose(factor, 0.1 * math.log(s) + 1, rel_tol=1e-12)
    # DeepSeek's form of the attention factor, and an explicit one
    _, mixed = rope_frequencies(head_dim, base, RopeScaling("yarn", factor=s, original_max_positions=L,
                                                            mscale=0.7, mscale_all_dim=0.3))
    assert math.isclose(mixed, (0.07 * math.log(s) + 1) / (0.03 * math.log(s) + 1), rel_tol=1e-12)
    _, given_factor = rope_frequencies(head_dim, base, RopeScaling("yarn", factor=s, original_max_positions=L,
                                                                   attention_factor=1.25))
    assert given_factor == 1.25


def test_longrope_divides_by_the_short_or_long_factor_per_pair():
    short, long = [1.0, 1.5, 2.0, 3.0], [2.0, 4.0, 8.0, 16.0]
    s = RopeScaling("longrope", factor=16.0, original_max_positions=256, short_factor=short, long_factor=long)
    plain = theta(8, 10000.0)
    for n, factors in [(None, short), (1, short), (256, short), (257, long), (4096, long)]:
        got, factor = rope_frequencies(8, 10000.0, s, seq_len=n)
        assert_frequencies(got, plain / torch.tensor(factors, dtype=F64))
        assert math.isclose(factor, math.sqrt(1 + math.log(16) / math.log(256)), rel_tol=1e-12)


def test_llama3_scales_by_wavelength_band():
    head_dim, base, L, s, low, high = 64, 500000.0, 8192, 8.0, 1.0, 4.0
    got, factor = rope_frequencies(head_dim, base, RopeScaling("llama3", factor=s, original_max_positions=L,
                                                               low_freq_factor=low, high_freq_factor=high))
    plain = theta(head_dim, base)
    wavelength = 2 * math.pi / plain
    short, long = wavelength < L / high, wavelength > L / low
    middle = ~short & ~long
    assert short.any() and long.any() and middle.any()
    g = (L / wavelength - low) / (high - low)
    expected = torch.where(short, plain, torch.where(long, plain / s, (1 - g) * plain / s + g * plain))
    assert_frequencies(got, expected)
    assert factor == 1.0


# ------------------------------------------------------------------------------------------------
# RotaryEmbedding with a scaling
# ------------------------------------------------------------------------------------------------

def test_rotary_embedding_uses_the_scaled_frequencies_and_attention_factor():
    s = RopeScaling("yarn", factor=4.0, original_max_positions=32, beta_fast=8.0, beta_slow=0.5)
    inv_freq, m = rope_frequencies(16, 1000.0, s)
    assert m > 1
    rope = RotaryEmbedding(16, 1000.0, scaling=s, max_positions=8)
    positions = torch.tensor([0, 3, 7, 40, 100])  # beyond the initial cache too
    cos, sin = rope(positions)
    angles = positions[:, None].float() * inv_freq[None, :]
    torch.testing.assert_close(cos, torch.cat([angles.cos(), angles.cos()], -1) * m)
    torch.testing.assert_close(sin, torch.cat([angles.sin(), angles.sin()], -1) * m)


def test_dynamic_rotary_embedding_follows_the_length_of_each_call():
    s = RopeScaling("dynamic", factor=2.0, original_max_positions=16)
    rope = RotaryEmbedding(8, 100.0, scaling=s, max_positions=16)
    original = rope_frequencies(8, 100.0, s)[0]
    assert torch.equal(rope.inv_freq, original)
    for length in (10, 16, 17, 40, 12, 41, 16):
        cos, _ = rope(torch.arange(length))
        expected = original if length <= 16 else rope_frequencies(8, 100.0, s, seq_len=torch.tensor(length))[0]
        assert torch.equal(rope.inv_freq, expected), length
        angles = torch.arange(length)[:, None].float() * expected[None, :]
        torch.testing.assert_close(cos, torch.cat([angles.cos(), angles.cos()], -1), atol=0, rtol=0)
    # a decoding step: one position, whose length is its position + 1
    cos, _ = rope(torch.tensor([29]))
    assert torch.equal(rope.inv_freq, rope_frequencies(8, 100.0, s, seq_len=torch.tensor(30))[0])
    assert not torch.equal(rope.inv_freq, original)


def test_longrope_rotary_embedding_switches_factors_at_the_original_length():
    s = RopeScaling("longrope", factor=4.0, original_max_positions=16,
                    short_factor=[1.0, 1.0, 2.0, 2.0], long_factor=[1.0, 3.0, 9.0, 27.0])
    rope = RotaryEmbedding(8, 100.0, scaling=s, max_positions=8)
    short, m = rope_frequencies(8, 100.0, s)
    long, _ = rope_frequencies(8, 100.0, s, seq_len=17)
    assert not torch.equal(short, long)
    for length, expected in [(16, short), (17, long), (3, short), (40, long)]:
        cos, _ = rope(torch.arange(length))
        angles = torch.arange(length)[:, None].float() * expected[None, :]
        torch.testing.assert_close(cos, torch.cat([angles.cos(), angles.cos()], -1) * m, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    (dict(kind="ntk"), "kind must be one of"),
    (dict(kind="linear", factor=0.5), "factor must be a number >= 1"),
    (dict(kind="linear", factor=float("nan")), "factor must be a number >= 1"),
    (dict(kind="yarn", factor=2.0), "needs original_max_positions"),
    (dict(kind="dynamic", factor=2.0, original_max_positions=0), "needs original_max_positions"),
    (dict(kind="llama3", factor=2.0, original_max_positions=64.0, low_freq_factor=1.0, high_freq_factor=4.0),
     "needs original_max_positions"),
    (dict(kind="linear", factor=2.0, original_max_positions=64), r"does not use \['original_max_positions'\]"),
    (dict(kind="default", factor=2.0), r"does not use \['factor'\]"),
    (dict(kind="dynamic", factor=2.0, original_max_positions=64, beta_fast=16.0), "does not use"),
    (dict(kind="yarn", factor=2.0, original_max_positions=64, short_factor=[1.0]), "does not use"),
    (dict(kind="yarn", factor=2.0, original_max_positions=64, beta_fast=1.0, beta_slow=2.0), "beta_slow <= beta_fast"),
    (dict(kind="yarn", factor=2.0, original_max_positions=64, attention_factor=0.0), "attention_factor"),
    (dict(kind="yarn", factor=2.0, original_max_positions=64, mscale="1"), "mscale"),
    (dict(kind="llama3", factor=2.0, original_max_positions=64, low_freq_factor=4.0, high_freq_factor=1.0),
     "low_freq_factor < high_freq_factor"),
    (dict(kind="llama3", factor=2.0, original_max_positions=64), "low_freq_factor < high_freq_factor"),
    (dict(kind="longrope", factor=2.0, original_max_positions=64, short_factor=[1.0]), "long_factor"),
    (dict(kind="longrope", factor=2.0, original_max_positions=1, short_factor=[1.0], long_factor=[1.0]),
     "needs original_max_positions > 1"),
    (dict(kind="longrope", factor=2.0, original_max_positions=64, short_factor=[1.0], long_factor=[0.0]),
     "long_factor"),
    (dict(kind="longrope", factor=2.0, original_max_positions=64, short_factor=[1.0], long_factor=["x"]),
     "long_factor must be a sequence of numbers"),
])
def test_bad_scalings_raise_naming_what_was_expected(fields, message):
    with pytest.raises(ValueError, match=message):
        RopeScaling(**fields)


def test_bad_uses_of_a_valid_scaling_raise():
    longrope = RopeScaling("longrope", factor=2.0, original_max_positions=64,
                           short_factor=[1.0] * 4, long_factor=[2.0] * 4)
    with pytest.raises(ValueError, match=r"short_factor must have head_dim // 2 = 8 entries, got 4"):
        rope_frequencies(16, 10000.0, longrope)
    with pytest.raises(ValueError, match="short_factor must have head_dim // 2 = 8"):
        DecoderConfig(vocab_size=10, width=32, n_layers=1, n_heads=2, rope_scaling=longrope)
    linear = RopeScaling("linear", factor=2.0)
    with pytest.raises(ValueError, match="rope_scaling needs positions='rope'"):
        DecoderConfig(vocab_size=10, width=32, n_layers=1, n_heads=4, positions="alibi", rope_scaling=linear)
    with pytest.raises(ValueError, match="rope_scaling must be a RopeScaling"):
        DecoderConfig(vocab_size=10, width=32, n_layers=1, n_heads=4, rope_scaling={"kind": "linear"})
    with pytest.raises(ValueError, match="either scaling or inv_freq"):
        RotaryEmbedding(8, scaling=linear, attention_factor=2.0)
    with pytest.raises(ValueError, match="even head_dim"):
        rope_frequencies(7, 10000.0, linear)
    with pytest.raises(ValueError, match="base must be a number > 1"):
        rope_frequencies(8, 1.0, linear)
    with pytest.raises(ValueError, match="head_dim >= 4"):
        rope_frequencies(2, 10000.0, RopeScaling("dynamic", factor=2.0, original_max_positions=8))
    with pytest.raises(ValueError, match="scaling must be a RopeScaling"):
        rope_frequencies(8, 10000.0, "linear")
    with pytest.raises(ValueError, match="scaling must be a RopeScaling"):
        RotaryEmbedding(8, scaling={"kind": "linear", "factor": 2.0})


def test_scaling_is_frozen_and_hashable_so_configs_compare():
    a = RopeScaling("longrope", factor=2.0, original_max_positions=8, short_factor=[1, 2], long_factor=[3, 4])
    b = RopeScaling("longrope", factor=2.0, original_max_positions=8, short_factor=(1.0, 2.0),
                    long_factor=(3.0, 4.0))
    assert a == b and hash(a) == hash(b) and a.short_factor == (1.0, 2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.factor = 3.0
    small = dict(vocab_size=10, width=16, n_layers=1, n_heads=4)
    assert DecoderConfig(**small, rope_scaling=a) == DecoderConfig(**small, rope_scaling=b)
