"""companion.bench: exact peak tensor memory, timing, power-law fits and readable units."""

import math

import numpy as np
import pytest
import torch

from companion import bench

MB4 = 1000 * 1000 * 4  # one (1000, 1000) float32 tensor


# ----------------------------------------------------------------------------------- peak_memory
def test_peak_memory_counts_the_bytes_of_a_new_tensor():
    assert bench.peak_memory(lambda: torch.empty(1000, 1000)) == MB4
    assert bench.peak_memory(lambda: torch.zeros(1000, 1000, dtype=torch.float64)) == 2 * MB4
    assert bench.peak_memory(lambda: torch.ones(10, dtype=torch.int8)) == 10


def test_peak_memory_is_the_maximum_not_the_sum():
    def one_after_another():
        a = torch.ones(1000, 1000)
        del a
        b = torch.ones(1000, 1000)
        del b
        c = torch.ones(500, 1000)
        return c

    def both_alive():
        a = torch.ones(1000, 1000)
        b = torch.ones(1000, 1000)
        return a, b

    assert bench.peak_memory(one_after_another) == MB4
    assert bench.peak_memory(both_alive) == 2 * MB4


def test_peak_memory_counts_only_what_the_call_allocates():
    existing = torch.randn(1000, 1000)
    assert bench.peak_memory(lambda: existing + 1) == MB4
    assert bench.peak_memory(lambda: existing) == 0
    # views and in-place updates of a tensor that existed before the call allocate nothing
    assert bench.peak_memory(lambda: existing.view(-1)) == 0
    assert bench.peak_memory(lambda: existing.T) == 0
    assert bench.peak_memory(lambda: existing[::2]) == 0
    assert bench.peak_memory(lambda: existing.mul_(1.0)) == 0
    # a view of a tensor made inside the call is not counted twice
    assert bench.peak_memory(lambda: torch.ones(1000, 1000).view(-1, 10).T) == MB4


def test_peak_memory_does_not_count_a_models_weights():
    # nn.Linear transposes its weight (a view of a parameter that existed before the call)
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(10, 64)
    with torch.no_grad():
        assert bench.peak_memory(lambda: linear(x)) == 10 * 32 * 4
        assert bench.peak_memory(lambda: linear(x[0])) == 32 * 4


def test_peak_memory_is_repeatable():
    x = torch.randn(64, 32)

    def fn():
        return torch.softmax(x @ x.T, dim=-1) @ x

    assert bench.peak_memory(fn) == bench.peak_memory(fn)


def _attention(length: int, dim: int = 16):
    generator = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(length, dim, generator=generator) for _ in range(3))
    return lambda: torch.softmax(q @ k.T, dim=-1) @ v


@pytest.mark.parametrize("length", [32, 64, 100])
def test_peak_memory_of_attention_holds_the_score_matrix(length):
    # the scores q k^T (L x L float32) exist, and at the softmax both they and the softmax output do;
    # the output (L x d) is smaller. So the peak is exactly two L x L float32 matrices.
    peak = bench.peak_memory(_attention(length))
    assert peak >= length * length * 4
    assert peak == 2 * length * length * 4


def test_peak_memory_of_attention_grows_four_times_when_length_doubles():
    small, large = bench.peak_memory(_attention(64)), bench.peak_memory(_attention(128))
    assert large == 4 * small


def test_peak_memory_rejects_other_devices():
    with pytest.raises(ValueError, match="'cpu' and 'cuda'"):
        bench.peak_memory(lambda: None, device="meta")


# ------------------------------------------------------------------------------------- time_call
def test_time_call_calls_warmup_plus_repeats_times_and_returns_positive_times():
    calls = []

    def fn():
        calls.append(1)
        return sum(range(1000))

    timing = bench.time_call(fn, repeats=4, warmup=2)
    assert len(calls) == 6
    assert timing.repeats == 4
    assert 0 < timing.minimum <= timing.median
    assert "median of 4" in str(timing)


def test_time_call_measures_a_sleep():
    import time

    timing = bench.time_call(lambda: time.sleep(0.01), repeats=3, warmup=0)
    assert timing.minimum >= 0.01


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"repeats": -1}, {"warmup": -1}])
def test_time_call_rejects_bad_arguments(kwargs):
    calls = []
    with pytest.raises(ValueError, match="repeats >= 1 and warmup >= 0"):
        bench.time_call(lambda: calls.append(1), **kwargs)
    assert calls == []


# --------------------------------------------------------------------------------- fit_power_law
@pytest.mark.parametrize("p, c", [(2.0, 3.0), (1.0, 0.5), (0.5, 10.0), (3.0, 1e-6), (-1.0, 2.0)])
def test_fit_power_law_recovers_noise_free_power_laws(p, c):
    x = [16, 32, 64, 128, 256, 1000]
    y = [c * v**p for v in x]
    fitted_p, fitted_c = bench.fit_power_law(x, y)
    assert fitted_p == pytest.approx(p, rel=1e-12, abs=1e-12)
    assert fitted_c == pytest.approx(c, rel=1e-9)


def test_fit_power_law_with_noise_is_the_least_squares_line_on_log_log_axes():
    rng = np.random.default_rng(0)
    x = np.geomspace(8, 4096, 12)
    y = 0.25 * x**2 * np.exp(rng.normal(0.0, 0.05, size=x.shape))
    p, c = bench.fit_power_law(x.tolist(), y.tolist())
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    assert p == pytest.approx(slope, rel=1e-9)
    assert math.log(c) == pytest.approx(intercept, rel=1e-9, abs=1e-9)
    assert abs(p - 2.0) < 0.05


@pytest.mark.parametrize("x, y, message", [
    ([1, 2, 3], [1, 2], "equal length"),
    ([1], [1], "equal length >= 2"),
    ([], [], "equal length >= 2"),
    ([0, 1, 2], [1, 2, 3], "positive"),
    ([1, 2, 3], [1, -2, 3], "positive"),
    ([4, 4, 4], [1, 2, 3], "two distinct x"),
])
def test_fit_power_law_rejects_bad_input(x, y, message):
    with pytest.raises(ValueError, match=message):
        bench.fit_power_law(x, y)


# ----------------------------------------------------------------------------------------- units
@pytest.mark.parametrize("seconds, text", [
    (0.00123, "1.23 ms"),
    (2.5, "2.5 s"),
    (1.0, "1 s"),
    (12.345, "12.3 s"),
    (0.5, "500 ms"),
    (1.5e-6, "1.5 us"),
    (3e-9, "3 ns"),
    (0.0, "0 ns"),
    (0.9996, "1 s"),          # rounds to 1.00 s: not "1e+03 ms"
    (0.00099996, "1 ms"),
])
def test_format_seconds(seconds, text):
    assert bench.format_seconds(seconds) == text


@pytest.mark.parametrize("n, text", [
    (0, "0 B"),
    (512, "512 B"),
    (1023, "1023 B"),
    (1024, "1 KiB"),
    (1536, "1.5 KiB"),
    (4_000_000, "3.81 MiB"),
    (3 * 1024**3, "3 GiB"),
    (1024**4, "1 TiB"),
    (2048 * 1024**4, "2.05e+03 TiB"),   # no unit above TiB
    (1000 * 1024, "0.977 MiB"),         # not "1e+03 KiB"
    (1024**2 - 1, "1 MiB"),
])
def test_format_bytes(n, text):
    assert bench.format_bytes(n) == text


def test_format_bytes_shows_three_significant_figures_without_exponents_below_tib():
    for n in np.geomspace(1024, 1024**4, 400):
        text = bench.format_bytes(float(n))
        number, unit = text.split()
        assert "e" not in number, text
        scale = 1024 ** ["KiB", "MiB", "GiB", "TiB"].index(unit) * 1024
        assert float(number) == pytest.approx(n / scale, rel=5e-3), text
