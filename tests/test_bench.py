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


# ------------------------------------------------------------------------- time_call on CUDA
class _FakeEvent:
    """Stands in for ``torch.cuda.Event``: 'records' the perf_counter, reports milliseconds."""

    log: list = []

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.when = None

    def record(self, stream=None):
        import time
        self.when = time.perf_counter()
        _FakeEvent.log.append("record")

    def synchronize(self):
        _FakeEvent.log.append("synchronize")

    def elapsed_time(self, end):
        return (end.when - self.when) * 1e3 + 1000.0  # 1000 ms more than the truth: visible below


@pytest.fixture
def fake_cuda(monkeypatch):
    import contextlib
    _FakeEvent.log = []
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: _FakeEvent.log.append("sync"))
    return _FakeEvent.log


def test_time_call_on_cuda_times_each_call_with_a_pair_of_events(fake_cuda):
    calls = []
    timing = bench.time_call(lambda: calls.append(1), repeats=3, warmup=2, device="cuda")
    assert len(calls) == 5
    # the events' elapsed_time (milliseconds, here 1000 ms too many) is what is reported, in seconds
    assert 1.0 <= timing.minimum <= timing.median < 1.5
    assert fake_cuda == ["sync"] + ["record", "record", "synchronize"] * 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_time_call_on_a_real_gpu_covers_the_kernels():
    x = torch.randn(2048, 2048, device="cuda")
    one = bench.time_call(lambda: x @ x, repeats=5, warmup=2, device="cuda")
    four = bench.time_call(lambda: [x @ x for _ in range(4)], repeats=5, warmup=2, device="cuda")
    assert one.minimum > 0
    assert four.median > one.median  # the kernels are timed, not just their launches


# --------------------------------------------------------------------------------------- compare
def test_compare_alternates_the_two_candidates_after_warming_both_up():
    log = []
    result = bench.compare(lambda: log.append("a"), lambda: log.append("b"), repeats=5, warmup=3)
    assert len(log) == 2 * (3 + 5)
    assert log[6:] == ["a", "b"] * 5          # after the warm-up: a, b, a, b, ...
    assert log[:6].count("a") == log[:6].count("b") == 3
    assert result.a.repeats == result.b.repeats == 5


def test_compare_with_no_warmup_starts_alternating_at_once():
    log = []
    bench.compare(lambda: log.append("a"), lambda: log.append("b"), repeats=2, warmup=0)
    assert log == ["a", "b", "a", "b"]


def test_compare_speedup_says_how_many_times_faster_a_is_than_b():
    import time

    quick, slow = (lambda: time.sleep(0.002)), (lambda: time.sleep(0.006))
    forward = bench.compare(quick, slow, repeats=5, warmup=1, names=("quick", "slow"))
    assert forward.a.median < forward.b.median
    assert forward.speedup > 1
    assert "quick is" in str(forward) and "x faster" in str(forward)
    backward = bench.compare(slow, quick, repeats=5, warmup=1, names=("slow", "quick"))
    assert backward.speedup < 1
    assert "quick is" in str(backward)


def test_comparison_speedup_and_text_from_known_timings():
    a, b = bench.Timing(0.0123, 0.012, 7), bench.Timing(0.015, 0.0149, 7)
    result = bench.Comparison(a=a, b=b, names=("fused", "naive"))
    assert result.speedup == pytest.approx(0.015 / 0.0123)
    assert str(result) == "fused: 12.3 ms, naive: 15 ms (median of 7, alternated) -> fused is 1.22x faster"
    flipped = bench.Comparison(a=b, b=a, names=("naive", "fused"))
    assert flipped.speedup == pytest.approx(0.0123 / 0.015)
    assert str(flipped).endswith("-> fused is 1.22x faster")
    assert str(bench.Comparison(a=a, b=a)).endswith("-> a is 1x faster")


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"names": ("only one",)}])
def test_compare_rejects_bad_arguments(kwargs):
    calls = []
    with pytest.raises(ValueError):
        bench.compare(lambda: calls.append(1), lambda: calls.append(2), **kwargs)
    assert calls == []


# ----------------------------------------------------------------------------------- FLOP counts
class _Counter:
    """Counts multiply-adds done through it, two FLOPs each."""

    def __init__(self):
        self.flops = 0

    def mac(self, acc, x, y):
        self.flops += 2
        return acc + x * y


def _loop_matmul(a, b, m, n, k, counter):
    out = [[0.0] * n for _ in range(m)]
    for i in range(m):
        for j in range(n):
            for p in range(k):
                out[i][j] = counter.mac(out[i][j], a[i][p], b[p][j])
    return out


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (2, 3, 4), (5, 1, 3), (3, 4, 0), (0, 2, 2)])
def test_matmul_flops_counts_every_multiply_add_of_a_triple_loop(m, n, k):
    counter = _Counter()
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = _loop_matmul(a.tolist(), b.tolist(), m, n, k, counter)
    assert bench.matmul_flops(m, n, k) == counter.flops == 2 * m * n * k
    torch.testing.assert_close(torch.tensor(out).reshape(m, n), a @ b)


def test_matmul_and_linear_flops_agree_with_pytorchs_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40)
    x = torch.randn(3, 7, 24)
    with FlopCounterMode(display=False) as counter:
        linear(x)
    assert counter.get_total_flops() == bench.linear_flops(3 * 7, 24, 40)
    with FlopCounterMode(display=False) as counter:
        torch.randn(6, 11) @ torch.randn(11, 9)
    assert counter.get_total_flops() == bench.matmul_flops(6, 9, 11)


def _loop_attention_flops(batch, heads, q_len, kv_len, head_dim, mask):
    """Multiply-adds of q k^T and p v, visiting only the pairs the mask keeps."""
    counter = _Counter()
    for _ in range(batch * heads):
        for i in range(q_len):
            for j in range(kv_len):
                if mask[i][j]:
                    for _ in range(head_dim):
                        counter.mac(0.0, 1.0, 1.0)  # the score's multiply-add
                    for _ in range(head_dim):
                        counter.mac(0.0, 1.0, 1.0)  # the output's multiply-add
    return counter.flops


def _bottom_right_mask(q_len, kv_len):
    return torch.ones(q_len, kv_len, dtype=torch.bool).tril(diagonal=kv_len - q_len)


@pytest.mark.parametrize("q_len, kv_len", [(4, 4), (1, 5), (3, 6), (6, 3), (5, 0), (0, 5), (1, 1)])
def test_attention_flops_against_explicit_loops(q_len, kv_len):
    batch, heads, head_dim = 2, 3, 4
    full = [[True] * kv_len for _ in range(q_len)]
    assert bench.attention_flops(batch, heads, q_len, kv_len, head_dim) == _loop_attention_flops(
        batch, heads, q_len, kv_len, head_dim, full)
    causal = _bottom_right_mask(q_len, kv_len).tolist()
    assert bench.attention_flops(batch, heads, q_len, kv_len, head_dim, causal=True) == \
        _loop_attention_flops(batch, heads, q_len, kv_len, head_dim, causal)


@pytest.mark.parametrize("q_len, kv_len", [(16, 16), (5, 23), (1, 9)])
def test_attention_flops_equals_the_flop_counter_for_the_two_matmuls(q_len, kv_len):
    from torch.utils.flop_counter import FlopCounterMode

    batch, q_heads, kv_heads, head_dim = 2, 6, 2, 8
    q = torch.randn(batch, q_heads, q_len, head_dim)
    k, v = (torch.randn(batch, kv_heads, kv_len, head_dim) for _ in range(2))
    with FlopCounterMode(display=False) as counter:
        k_, v_ = (t.repeat_interleave(q_heads // kv_heads, dim=1) for t in (k, v))
        p = torch.softmax(q @ k_.transpose(-2, -1) / head_dim**0.5, dim=-1)
        p @ v_
    counts = counter.get_flop_counts()["Global"]
    matmul_flops = sum(n for op, n in counts.items() if "bmm" in str(op) or "mm" in str(op))
    assert matmul_flops == counter.get_total_flops()  # nothing else counted: softmax is free here
    assert bench.attention_flops(batch, q_heads, q_len, kv_len, head_dim) == matmul_flops


@pytest.mark.parametrize("q_len, kv_len", [(q, kv) for q in range(0, 9) for kv in range(0, 9)])
def test_causal_pairs_is_the_sum_of_the_bottom_right_mask(q_len, kv_len):
    expected = int(_bottom_right_mask(q_len, kv_len).sum())
    assert bench.causal_pairs(q_len, kv_len) == expected
    # query i sees min(kv_len, i + kv_len - q_len + 1) keys, at least 0
    assert expected == sum(max(0, min(kv_len, i + kv_len - q_len + 1)) for i in range(q_len))


def test_causal_pairs_special_cases():
    assert bench.causal_pairs(100, 100) == 100 * 101 // 2
    assert bench.causal_pairs(1, 4096) == 4096           # one decoding step sees the whole cache
    assert bench.causal_pairs(10**7, 10**7) == 10**7 * (10**7 + 1) // 2   # closed form: instant


def _tiny_decoder_forward(*, layers, width, heads, kv_heads, head_dim, ffn_hidden, vocab, tokens,
                          context, ffn):
    """A Llama-style forward written out op by op (new tokens attend a cache of earlier keys)."""
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)

    def weight(rows, cols):
        return torch.randn(rows, cols, generator=generator) * 0.1

    weights = []
    x = torch.randn(1, tokens, width, generator=generator)
    for _ in range(layers):
        wq = weight(heads * head_dim, width)
        wk, wv = weight(kv_heads * head_dim, width), weight(kv_heads * head_dim, width)
        wo = weight(width, heads * head_dim)
        ffn_weights = [weight(ffn_hidden, width), weight(width, ffn_hidden)]
        if ffn == "swiglu":
            ffn_weights.insert(0, weight(ffn_hidden, width))
        weights += [wq, wk, wv, wo, *ffn_weights]
        h = F.rms_norm(x, (width,))
        q = F.linear(h, wq).view(1, tokens, heads, head_dim).transpose(1, 2)
        k = F.linear(h, wk).view(1, tokens, kv_heads, head_dim).transpose(1, 2)
        v = F.linear(h, wv).view(1, tokens, kv_heads, head_dim).transpose(1, 2)
        past = context - tokens
        k = torch.cat([torch.randn(1, kv_heads, past, head_dim, generator=generator), k], dim=2)
        v = torch.cat([torch.randn(1, kv_heads, past, head_dim, generator=generator), v], dim=2)
        k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
        p = torch.softmax(q @ k.transpose(-2, -1) / head_dim**0.5, dim=-1)
        o = (p @ v).transpose(1, 2).reshape(1, tokens, heads * head_dim)
        x = x + F.linear(o, wo)
        h = F.rms_norm(x, (width,))
        if ffn == "swiglu":
            h = F.silu(F.linear(h, ffn_weights[0])) * F.linear(h, ffn_weights[1])
            x = x + F.linear(h, ffn_weights[2])
        else:
            x = x + F.linear(F.gelu(F.linear(h, ffn_weights[0])), ffn_weights[1])
    head = weight(vocab, width)
    weights.append(head)
    F.linear(F.rms_norm(x, (width,)), head)
    return sum(w.numel() for w in weights)


@pytest.mark.parametrize("ffn", ["swiglu", "gelu"])
@pytest.mark.parametrize("tokens, context", [(7, 7), (1, 12), (5, 20)])
def test_decoder_flops_equals_the_flop_counter_on_a_written_out_decoder(ffn, tokens, context):
    from torch.utils.flop_counter import FlopCounterMode

    sizes = dict(layers=2, width=32, heads=4, kv_heads=2, head_dim=8, ffn_hidden=48, vocab=50,
                 tokens=tokens, context=context, ffn=ffn)
    with FlopCounterMode(display=False) as counter:
        _tiny_decoder_forward(**sizes)
    assert bench.decoder_flops(**sizes) == counter.get_total_flops()


def test_decoder_flops_without_context_is_two_flops_per_weight_per_token():
    sizes = dict(layers=3, width=32, heads=4, kv_heads=1, head_dim=16, ffn_hidden=80, vocab=97,
                 ffn="swiglu")
    weights = _tiny_decoder_forward(**sizes, tokens=1, context=1)
    attention_part = 4 * 1 * 1 * 4 * 16 * 3
    assert bench.decoder_flops(**sizes, tokens=1, context=0) == 2 * weights
    assert bench.decoder_flops(**sizes, tokens=1, context=1) == 2 * weights + attention_part
    assert bench.decoder_flops(**sizes, tokens=10, context=0) == 20 * weights


def test_decoder_flops_causal_counts_only_the_kept_pairs():
    sizes = dict(layers=2, width=64, heads=8, kv_heads=2, head_dim=8, ffn_hidden=128, vocab=100)
    full = bench.decoder_flops(**sizes, tokens=16, context=16)
    causal = bench.decoder_flops(**sizes, tokens=16, context=16, causal=True)
    assert full - causal == 2 * 4 * 8 * 8 * (16 * 16 - 16 * 17 // 2)
    # decoding one token: the causal mask hides nothing
    assert bench.decoder_flops(**sizes, tokens=1, context=30, causal=True) == \
        bench.decoder_flops(**sizes, tokens=1, context=30)


@pytest.mark.parametrize("call", [
    lambda: bench.matmul_flops(-1, 2, 3),
    lambda: bench.matmul_flops(2.5, 2, 3),
    lambda: bench.matmul_flops(True, 2, 3),
    lambda: bench.linear_flops(4, "8", 2),
    lambda: bench.attention_flops(1, 2, -3, 4, 8),
    lambda: bench.causal_pairs(3, -1),
    lambda: bench.decoder_flops(layers=1, width=8, heads=3, kv_heads=2, head_dim=4, ffn_hidden=8,
                                vocab=10, tokens=1, context=1),
    lambda: bench.decoder_flops(layers=1, width=8, heads=2, kv_heads=0, head_dim=4, ffn_hidden=8,
                                vocab=10, tokens=1, context=1),
    lambda: bench.decoder_flops(layers=1, width=8, heads=2, kv_heads=1, head_dim=4, ffn_hidden=8,
                                vocab=10, tokens=1, context=1, ffn="relu"),
    lambda: bench.attention_bytes(1, 6, 4, 8, 8, 16, 2),
    lambda: bench.attention_bytes(1, 4, 2, 8, 8, 16, 0),
    lambda: bench.naive_attention_bytes(1, 4, 2, -8, 8, 16, 2),
])
def test_counts_reject_bad_arguments(call):
    with pytest.raises(ValueError):
        call()


def test_counts_accept_numpy_integers():
    assert bench.matmul_flops(np.int64(2), np.int32(3), 4) == 48


# ----------------------------------------------------------------------------------- byte counts
def test_attention_bytes_reads_q_k_v_and_writes_o_once():
    batch, q_heads, kv_heads, q_len, kv_len, head_dim, dtype_bytes = 2, 8, 2, 16, 40, 64, 2
    q = o = batch * q_heads * q_len * head_dim
    k = v = batch * kv_heads * kv_len * head_dim
    fused = bench.attention_bytes(batch, q_heads, kv_heads, q_len, kv_len, head_dim, dtype_bytes)
    assert fused == dtype_bytes * (q + k + v + o) == 2 * (2 * 16384 + 2 * 10240)
    naive = bench.naive_attention_bytes(batch, q_heads, kv_heads, q_len, kv_len, head_dim, dtype_bytes)
    scores = batch * q_heads * q_len * kv_len
    assert naive == fused + 4 * dtype_bytes * scores


def test_naive_attention_bytes_grow_quadratically_and_fused_linearly():
    fused = [bench.attention_bytes(1, 8, 8, n, n, 64, 2) for n in (1024, 2048)]
    naive = [bench.naive_attention_bytes(1, 8, 8, n, n, 64, 2) for n in (1024, 2048)]
    assert fused[1] == 2 * fused[0]
    assert 3.5 < naive[1] / naive[0] < 4


# -------------------------------------------------------------------------------------- roofline
def test_roofline_memory_bound_by_hand():
    # 1e9 FLOPs over 1e9 bytes on a 100 TFLOP/s, 1 TB/s machine: intensity 1 FLOP/B, ridge 100
    r = bench.roofline(1e9, 1e9, peak_flops=100e12, peak_bandwidth=1e12)
    assert r.intensity == 1.0
    assert r.ridge == 100.0
    assert r.attainable_flops == 1e12          # min(100e12, 1 * 1e12)
    assert r.bound == "memory"
    assert r.time_lower_bound == pytest.approx(1e-3)   # 1e9 B / 1e12 B/s
    assert r.efficiency(2e-3) == pytest.approx(0.5)
    assert str(r) == ("1 GFLOP over 954 MiB: 1 FLOP/B against a ridge of 100 FLOP/B -> memory-bound, "
                      "at most 1 TFLOP/s, at least 1 ms")


def test_roofline_compute_bound_by_hand():
    # a 4096^3 matmul in bf16: 2 * 4096^3 FLOPs over 3 * 4096^2 * 2 bytes -> intensity 4096 / 3
    flops, moved = bench.matmul_flops(4096, 4096, 4096), 3 * 4096 * 4096 * 2
    r = bench.roofline(flops, moved, peak_flops=1e15, peak_bandwidth=4e12)
    assert r.intensity == pytest.approx(4096 / 3)
    assert r.ridge == 250.0
    assert r.bound == "compute"
    assert r.attainable_flops == 1e15
    assert r.time_lower_bound == pytest.approx(flops / 1e15)
    assert "compute-bound" in str(r)


def test_roofline_at_the_ridge_and_at_the_extremes():
    at_ridge = bench.roofline(200, 2, peak_flops=100.0, peak_bandwidth=1.0)
    assert at_ridge.bound == "compute" and at_ridge.attainable_flops == 100.0
    assert at_ridge.time_lower_bound == 2.0
    no_bytes = bench.roofline(10, 0, peak_flops=5.0, peak_bandwidth=1.0)
    assert no_bytes.intensity == math.inf and no_bytes.bound == "compute"
    assert no_bytes.time_lower_bound == 2.0
    no_flops = bench.roofline(0, 8, peak_flops=5.0, peak_bandwidth=2.0)
    assert no_flops.intensity == 0 and no_flops.bound == "memory" and no_flops.attainable_flops == 0
    assert no_flops.time_lower_bound == 4.0


@pytest.mark.parametrize("args, kwargs", [
    ((1e9, 1e9), {"peak_flops": 0, "peak_bandwidth": 1e12}),
    ((1e9, 1e9), {"peak_flops": 1e12, "peak_bandwidth": -1.0}),
    ((-1, 1e9), {"peak_flops": 1e12, "peak_bandwidth": 1e12}),
    ((1e9, math.nan), {"peak_flops": 1e12, "peak_bandwidth": 1e12}),
    ((math.inf, 1), {"peak_flops": 1e12, "peak_bandwidth": 1e12}),
    ((0, 0), {"peak_flops": 1e12, "peak_bandwidth": 1e12}),
    (("1e9", 1), {"peak_flops": 1e12, "peak_bandwidth": 1e12}),
])
def test_roofline_rejects_bad_arguments(args, kwargs):
    with pytest.raises(ValueError):
        bench.roofline(*args, **kwargs)


def test_roofline_efficiency_rejects_a_non_positive_time():
    with pytest.raises(ValueError, match="positive"):
        bench.roofline(1, 1, peak_flops=1.0, peak_bandwidth=1.0).efficiency(0)


@pytest.mark.parametrize("n, unit, text", [
    (0, "FLOP", "0 FLOP"), (999, "FLOP", "999 FLOP"), (1000, "FLOP", "1 kFLOP"),
    (1.5e12, "FLOP", "1.5 TFLOP"), (989e12, "FLOP/s", "989 TFLOP/s"), (3.35e12, "B/s", "3.35 TB/s"),
    (999.6e9, "FLOP", "1 TFLOP"), (2e21, "FLOP", "2e+03 EFLOP"),
])
def test_format_flops(n, unit, text):
    assert bench.format_flops(n, unit) == text
