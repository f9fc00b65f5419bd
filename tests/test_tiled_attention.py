"""companion.kernels.tiled_attention: FlashAttention's online softmax in PyTorch equals attention."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.bench import peak_memory
from companion.kernels import attention
from companion.kernels import tiled_attention
from companion.nn import alibi_slopes


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 2), kv_heads=st.integers(1, 3), group=st.integers(1, 3), q_len=st.integers(1, 19),
       extra=st.integers(0, 9), head_dim=st.sampled_from([1, 4, 7, 16]), causal=st.booleans(),
       window=st.one_of(st.none(), st.integers(1, 12)), alibi=st.booleans(),
       block_q=st.integers(1, 8), block_k=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_tiled_equals_attention_on_random_shapes(batch, kv_heads, group, q_len, extra, head_dim, causal, window,
                                                 alibi, block_q, block_k, seed):
    g = torch.Generator().manual_seed(seed)
    kv_len = q_len + extra
    q = torch.randn(batch, kv_heads * group, q_len, head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(batch, kv_heads, kv_len, head_dim, generator=g, dtype=torch.float64)
    v = torch.randn(batch, kv_heads, kv_len, head_dim, generator=g, dtype=torch.float64)
    slopes = alibi_slopes(kv_heads * group).double() if alibi else None
    options = dict(causal=causal, window=window, alibi_slopes=slopes)
    torch.testing.assert_close(tiled_attention(q, k, v, block_q=block_q, block_k=block_k, **options),
                               attention(q, k, v, backend="reference", **options), rtol=1e-10, atol=1e-10)


def test_rows_that_see_no_key_are_zero_and_gradients_match():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 6, 4, generator=g, requires_grad=True)   # q_len > kv_len: the first rows see nothing
    k = torch.randn(1, 2, 3, 4, generator=g, requires_grad=True)
    v = torch.randn(1, 2, 3, 4, generator=g, requires_grad=True)
    out = tiled_attention(q, k, v, causal=True, block_q=2, block_k=2)
    assert torch.equal(out[:, :, :3], torch.zeros_like(out[:, :, :3]))
    expected = attention(q, k, v, causal=True, backend="reference")
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b)


def test_half_precision_is_computed_in_float32():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 33, 8, generator=g).to(torch.bfloat16) for _ in range(3))
    out = tiled_attention(q, k, v, causal=True, block_q=16, block_k=16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, attention(q, k, v, causal=True, backend="reference"))


def test_memory_grows_linearly_not_quadratically():
    """Peak tensor memory (exact, counted per operator) at 256 and 1024 tokens: the tiled version adds
    per-tile memory only; the textbook formula holds a (q_len, kv_len) matrix."""
    def peak(fn, n):
        q, k, v = (torch.randn(1, 1, n, 16) for _ in range(3))
        return peak_memory(lambda: fn(q, k, v, causal=True))

    tiled = [peak(lambda *a, **kw: tiled_attention(*a, **kw, block_q=64, block_k=64), n) for n in (256, 1024)]
    def naive_attention(q, k, v, causal):
        scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril()
        return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v

    naive = [peak(naive_attention, n) for n in (256, 1024)]
    assert tiled[1] / tiled[0] < 5      # about 4x for 4x the tokens
    assert tiled[1] < 1024 * 1024 * 4   # far below one 1024 x 1024 float32 score matrix
    assert naive[1] / naive[0] > 12     # the whole score matrix: about 16x (so the comparison can fail)


@pytest.mark.parametrize("kwargs, message", [
    (dict(block_q=0), "block_q to be a positive int"),
    (dict(block_k=2.5), "block_k to be a positive int"),
    (dict(block_k=True), "block_k to be a positive int"),
    (dict(window=0), "window"),
    (dict(causal=1), "causal"),
])
def test_bad_arguments_raise(kwargs, message):
    q = k = v = torch.zeros(1, 1, 4, 2)
    with pytest.raises(ValueError, match=message):
        tiled_attention(q, k, v, **kwargs)


def test_bad_tensors_raise_like_attention():
    with pytest.raises(ValueError, match="rank 4"):
        tiled_attention(torch.zeros(1, 4, 2), torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2))
