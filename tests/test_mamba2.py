"""Mamba-2's SSD: the chunked algorithm equals the recurrence (and Mamba's selective scan); the gated norm."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from companion.kernels import selective_scan
from companion.nn.mamba2 import GatedRMSNorm, segment_sum, ssd_chunked

EXACT = dict(atol=1e-10, rtol=1e-10)


def ssd_recurrence(x, dt, A, B, C, D=None, state=None):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,  y_t = h_t C_t + D x_t, per head (Dao and Gu 2024, section 3)."""
    batch, seq, heads, head_dim = x.shape
    per_group = heads // B.shape[2]
    B, C = B.repeat_interleave(per_group, dim=2), C.repeat_interleave(per_group, dim=2)
    h = x.new_zeros(batch, heads, head_dim, B.shape[-1]) if state is None else state
    ys = []
    for t in range(seq):
        decay = torch.exp(dt[:, t] * A)[..., None, None]                                   # (b, h, 1, 1)
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]    # (b, h, p, n)
        y = (h * C[:, t, :, None, :]).sum(-1)
        ys.append(y if D is None else y + D[:, None] * x[:, t])
    return torch.stack(ys, dim=1), h


def random_inputs(batch=2, seq=11, heads=4, head_dim=3, groups=2, state=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    x = rand(batch, seq, heads, head_dim)
    dt = F.softplus(rand(batch, seq, heads))
    A = -torch.exp(rand(heads) * 0.5)
    B, C = rand(batch, seq, groups, state), rand(batch, seq, groups, state)
    return x, dt, A, B, C, rand(heads), rand(batch, heads, head_dim, state)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 11, 64])
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_ssd_equals_the_recurrence(chunk_size, groups, with_state):
    x, dt, A, B, C, D, h0 = random_inputs(groups=groups, seed=chunk_size + groups)
    h0 = h0 if with_state else None
    y, last = ssd_chunked(x, dt, A, B, C, chunk_size, D=D, initial_state=h0)
    expected, expected_last = ssd_recurrence(x, dt, A, B, C, D, h0)
    assert y.shape == (2, 11, 4, 3) and last.shape == (2, 4, 3, 5) and expected.abs().max() > 0.5
    torch.testing.assert_close(y, expected, **EXACT)
    torch.testing.assert_close(last, expected_last, **EXACT)


def test_chunked_ssd_continues_from_its_final_state():
    x, dt, A, B, C, D, _ = random_inputs(seq=17, seed=9)
    whole, last = ssd_chunked(x, dt, A, B, C, 4, D=D)
    first, state = ssd_chunked(x[:, :9], dt[:, :9], A, B[:, :9], C[:, :9], 4, D=D)
    pieces = [first]
    for t in range(9, 17):   # one token at a time: a chunk of one is a step of the recurrence
        y, state = ssd_chunked(x[:, t:t + 1], dt[:, t:t + 1], A, B[:, t:t + 1], C[:, t:t + 1], 4, D=D,
                               initial_state=state)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, 1), whole, **EXACT)
    torch.testing.assert_close(state, last, **EXACT)


@pytest.mark.parametrize("groups", [1, 2])
def test_the_ssd_is_the_selective_scan_with_a_scalar_a_per_head(groups):
    """Mamba-2's SSM is Mamba's with A and dt tied across the P channels of a head: the kernel computes it too."""
    x, dt, A, B, C, D, _ = random_inputs(groups=groups, seed=3)
    batch, seq, heads, p = x.shape
    n = B.shape[-1]
    y, last = ssd_chunked(x, dt, A, B, C, 4, D=D)
    u = x.reshape(batch, seq, heads * p).transpose(1, 2)                                    # (b, d, L)
    delta = dt.repeat_interleave(p, dim=-1).transpose(1, 2)
    A_full = A.repeat_interleave(p)[:, None].expand(heads * p, n)                           # (d, n)
    scanned, state = selective_scan(u, delta, A_full, B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1),  # (b, g, n, L)
                                    D=D.repeat_interleave(p), return_last_state=True)
    torch.testing.assert_close(scanned.transpose(1, 2).reshape(batch, seq, heads, p), y, **EXACT)
    torch.testing.assert_close(state.reshape(batch, heads, p, n), last, **EXACT)


def test_segment_sum_by_hand():
    out = segment_sum(torch.tensor([1.0, 2.0, 4.0]))
    inf = -math.inf
    assert out.tolist() == [[0.0, inf, inf], [2.0, 0.0, inf], [6.0, 4.0, 0.0]]   # sum over (j, i]
    x = torch.randn(2, 6, dtype=torch.float64)
    cumsum = x.cumsum(-1)
    lower = torch.ones(6, 6, dtype=torch.bool).tril()
    torch.testing.assert_close(segment_sum(x)[:, lower], (cumsum[:, :, None] - cumsum[:, None, :])[:, lower], **EXACT)


def test_ssd_float32_stays_close_to_float64_over_many_chunks():
    x, dt, A, B, C, D, h0 = random_inputs(seq=300, heads=2, groups=1, seed=4)
    y64, _ = ssd_chunked(x, dt, A, B, C, 64, D=D, initial_state=h0)
    y32, last32 = ssd_chunked(x.float(), dt.float(), A.float(), B.float(), C.float(), 64, D=D.float(),
                              initial_state=h0.float())
    assert y32.dtype == last32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("call, message", [
    (lambda x, dt, A, B, C: ssd_chunked(x, dt, A, B, C, 0), "chunk_size must be a positive int"),
    (lambda x, dt, A, B, C: ssd_chunked(x, dt[:, :, :3], A, B, C, 4), r"dt \(batch, seq, heads\)"),
    (lambda x, dt, A, B, C: ssd_chunked(x, dt, A, B[:, :, :, :3], C, 4), r"B and C \(batch, seq, groups, N\)"),
    (lambda x, dt, A, B, C: ssd_chunked(x, dt, A, B[:, :, :1].expand(-1, -1, 3, -1),
                                        C[:, :, :1].expand(-1, -1, 3, -1), 4), "groups dividing heads"),
    (lambda x, dt, A, B, C: ssd_chunked(x, dt, A, B, C, 4, initial_state=torch.zeros(2, 4, 3, 4)), "initial_state"),
])
def test_bad_ssd_inputs_raise(call, message):
    x, dt, A, B, C, _, _ = random_inputs()
    with pytest.raises(ValueError, match=message):
        call(x, dt, A, B, C)


def test_gated_rmsnorm_normalises_each_group_after_the_gate():
    norm = GatedRMSNorm(6, group_size=3, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    y, z = torch.randn(2, 4, 6, dtype=torch.float64), torch.randn(2, 4, 6, dtype=torch.float64)
    gated = y * z * torch.sigmoid(z)
    expected = torch.cat([g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + 1e-6) for g in gated.split(3, -1)], -1)
    torch.testing.assert_close(norm(y, z), expected * torch.arange(1.0, 7.0, dtype=torch.float64), **EXACT)
    whole = GatedRMSNorm(6, group_size=6, eps=1e-6).double()
    assert (whole(y, z) - norm(y, z) / torch.arange(1.0, 7.0, dtype=torch.float64)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="group_size"):
        GatedRMSNorm(6, group_size=4)
