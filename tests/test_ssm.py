"""The LTI diagonal SSM (S4D): discretisations by hand, recurrent mode == convolutional mode, the layer."""

from __future__ import annotations

import cmath
import math

import pytest
import torch

from companion.nn.cache import KVCache
from companion.nn.ssm import (S4DLayer, causal_convolution_fft, discretize_bilinear, discretize_zoh, ssm_convolutional,
                              ssm_kernel, ssm_recurrent)

EXACT = dict(atol=1e-10, rtol=1e-10)


def scalar(value, dtype=torch.float64):
    return torch.tensor([[value]], dtype=dtype)


def random_system(channels=3, state=4, complex_=True, seed=0):
    """A stable diagonal system (Re A < 0), with random B, C and step sizes, in float64 / complex128."""
    g = torch.Generator().manual_seed(seed)
    real = -torch.rand(channels, state, generator=g, dtype=torch.float64) * 2 - 0.05
    if complex_:
        A = torch.complex(real, torch.randn(channels, state, generator=g, dtype=torch.float64) * 3)
        B = torch.complex(*torch.randn(2, channels, state, generator=g, dtype=torch.float64))
        C = torch.complex(*torch.randn(2, channels, state, generator=g, dtype=torch.float64))
    else:
        A, B, C = real, *torch.randn(2, channels, state, generator=g, dtype=torch.float64)
    delta = torch.rand(channels, generator=g, dtype=torch.float64) * 0.5 + 0.01
    return A, B, C, delta


# ------------------------------------------------------------------------------ discretisations
def test_zoh_by_hand_real_scalar():
    abar, bbar = discretize_zoh(scalar(-1.0), scalar(1.0), torch.tensor([0.5], dtype=torch.float64))
    assert math.isclose(abar.item(), math.exp(-0.5), rel_tol=1e-14)         # 0.60653...
    assert math.isclose(bbar.item(), 1 - math.exp(-0.5), rel_tol=1e-14)     # (e^-0.5 - 1) / -1
    abar, bbar = discretize_zoh(scalar(2.0), scalar(3.0), torch.tensor([0.25], dtype=torch.float64))
    assert math.isclose(abar.item(), math.exp(0.5), rel_tol=1e-14)
    assert math.isclose(bbar.item(), (math.exp(0.5) - 1) / 2 * 3, rel_tol=1e-14)


def test_zoh_by_hand_complex_scalar_and_its_limit_at_a_zero():
    A, B = -0.5 + 1j * math.pi, 2 - 1j
    abar, bbar = discretize_zoh(scalar(A, torch.complex128), scalar(B, torch.complex128),
                                torch.tensor([1.0], dtype=torch.float64))
    assert cmath.isclose(abar.item(), -math.exp(-0.5), rel_tol=1e-14)      # e^-0.5 e^{i pi}
    assert cmath.isclose(bbar.item(), (-math.exp(-0.5) - 1) / A * B, rel_tol=1e-14)
    abar, bbar = discretize_zoh(scalar(0.0), scalar(3.0), torch.tensor([0.1], dtype=torch.float64))
    assert abar.item() == 1.0 and math.isclose(bbar.item(), 0.3, rel_tol=1e-14)   # Delta B: an integrator


def test_bilinear_by_hand():
    abar, bbar = discretize_bilinear(scalar(-1.0), scalar(1.0), torch.tensor([0.5], dtype=torch.float64))
    assert math.isclose(abar.item(), 0.6, rel_tol=1e-14)   # (1 - 0.25) / (1 + 0.25)
    assert math.isclose(bbar.item(), 0.4, rel_tol=1e-14)   # 0.5 / 1.25
    abar, bbar = discretize_bilinear(scalar(-2.0), scalar(1.0), torch.tensor([1.0], dtype=torch.float64))
    assert abar.item() == 0.0 and bbar.item() == 0.5       # Delta A = -2: the state forgets at once
    A = -1 + 2j
    abar, bbar = discretize_bilinear(scalar(A, torch.complex128), scalar(1.0 + 0j, torch.complex128),
                                     torch.tensor([0.5], dtype=torch.float64))
    assert cmath.isclose(abar.item(), (1 + A / 4) / (1 - A / 4), rel_tol=1e-14)
    assert cmath.isclose(bbar.item(), 0.5 / (1 - A / 4), rel_tol=1e-14)


def test_the_discretisations_converge_to_each_other_as_delta_shrinks():
    A, B, _, _ = random_system(channels=2, state=3)
    gaps_a, gaps_b = [], []
    for step in (0.1, 0.05, 0.025, 0.0125):
        delta = torch.full((2,), step, dtype=torch.float64)
        (za, zb), (ba, bb) = discretize_zoh(A, B, delta), discretize_bilinear(A, B, delta)
        gaps_a.append((za - ba).abs().max().item())
        gaps_b.append(((zb - bb) / (delta[:, None] * B)).abs().max().item())   # relative to Delta B
    # they share the terms up to Delta^2 (Abar) and Delta (Bbar / Delta B): gaps fall 8x and 4x per halving
    for a0, a1 in zip(gaps_a, gaps_a[1:]):
        assert 7.0 < a0 / a1 < 9.0
    for b0, b1 in zip(gaps_b, gaps_b[1:]):
        assert 3.5 < b0 / b1 < 4.5
    assert gaps_a[-1] < 1e-5


def test_both_kernels_approach_the_continuous_impulse_response():
    """K_j / Delta -> h(j Delta) = Re(C exp(A j Delta) B): the discrete systems sample one continuous system."""
    A, B, C, _ = random_system(channels=2, state=3, seed=1)
    horizon = 2.0
    errors = {"zoh": [], "bilinear": []}
    for step in (0.02, 0.01, 0.005):
        length = round(horizon / step)
        t = torch.arange(length, dtype=torch.float64) * step
        h = torch.einsum("cn,cnl->cl", C * B, torch.exp(A[..., None] * t)).real
        delta = torch.full((2,), step, dtype=torch.float64)
        for name, fn in (("zoh", discretize_zoh), ("bilinear", discretize_bilinear)):
            abar, bbar = fn(A, B, delta)
            errors[name].append((ssm_kernel(abar, bbar, C, length) / step - h).abs().max().item())
    for errs in errors.values():  # first order in Delta: the error halves with the step
        assert all(1.8 < e0 / e1 < 2.2 for e0, e1 in zip(errs, errs[1:]))
        assert errs[-1] < 0.01 * h.abs().max().item()


# ----------------------------------------------------------------------- recurrent == convolution
@pytest.mark.parametrize("complex_", [True, False])
@pytest.mark.parametrize("method", [discretize_zoh, discretize_bilinear])
def test_recurrent_and_convolutional_modes_are_equal(complex_, method):
    A, B, C, delta = random_system(complex_=complex_, seed=2)
    abar, bbar = method(A, B, delta)
    u = torch.randn(2, 3, 37, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    D = torch.randn(3, dtype=torch.float64)
    y_rec, state = ssm_recurrent(u, abar, bbar, C, D)
    y_conv = ssm_convolutional(u, abar, bbar, C, D)
    assert y_rec.shape == y_conv.shape == (2, 3, 37) and state.shape == (2, 3, 4)
    assert not y_rec.is_complex() and y_rec.abs().max() > 0.1
    torch.testing.assert_close(y_conv, y_rec, **EXACT)


def test_the_kernel_is_the_impulse_response_of_the_recurrence():
    A, B, C, delta = random_system(seed=4)
    abar, bbar = discretize_zoh(A, B, delta)
    impulse = torch.zeros(1, 3, 20, dtype=torch.float64)
    impulse[..., 0] = 1.0
    y, _ = ssm_recurrent(impulse, abar, bbar, C)
    torch.testing.assert_close(ssm_kernel(abar, bbar, C, 20), y[0], **EXACT)
    # and the closed form: K_j = Re(sum_n C_n Abar_n^j Bbar_n), checked at one entry by hand
    c, n, j = 1, 2, 7
    expected = sum((C[c, m] * abar[c, m] ** j * bbar[c, m]).item() for m in range(4)).real
    assert math.isclose(ssm_kernel(abar, bbar, C, 20)[c, j].item(), expected, rel_tol=1e-12)


def test_the_fft_convolution_is_causal_and_needs_its_padding():
    g = torch.Generator().manual_seed(5)
    u = torch.randn(2, 3, 16, generator=g, dtype=torch.float64)
    kernel = torch.randn(3, 16, generator=g, dtype=torch.float64)
    direct = torch.stack([sum(kernel[:, j] * u[..., k - j] for j in range(k + 1)) for k in range(16)], dim=-1)
    torch.testing.assert_close(causal_convolution_fft(u, kernel), direct, **EXACT)
    circular = torch.fft.irfft(torch.fft.rfft(u, n=16) * torch.fft.rfft(kernel, n=16), n=16)   # no padding
    assert (circular - direct).abs().max() > 0.1                                               # wraps around
    later = u.clone()
    later[..., 9:] += 1.0                                                                       # the future
    torch.testing.assert_close(causal_convolution_fft(later, kernel)[..., :9], direct[..., :9], **EXACT)


def test_a_recurrence_split_in_two_continues_from_its_state():
    A, B, C, delta = random_system(seed=6)
    abar, bbar = discretize_bilinear(A, B, delta)
    u = torch.randn(2, 3, 15, dtype=torch.float64)
    whole, last = ssm_recurrent(u, abar, bbar, C)
    first, state = ssm_recurrent(u[..., :6], abar, bbar, C)
    second, state = ssm_recurrent(u[..., 6:], abar, bbar, C, state=state)
    torch.testing.assert_close(torch.cat([first, second], -1), whole, **EXACT)
    torch.testing.assert_close(state, last, **EXACT)


@pytest.mark.parametrize("call, message", [
    (lambda: discretize_zoh(torch.zeros(3), torch.zeros(3), torch.ones(3)), r"A must be a \(channels, state\)"),
    (lambda: discretize_zoh(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2)), "same shape"),
    (lambda: discretize_bilinear(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3)),
     r"delta must be a real \(channels,\)"),
    (lambda: ssm_recurrent(torch.zeros(1, 2, 5), *torch.zeros(3, 3, 4)), "2 channels but the system has 3"),
    (lambda: ssm_recurrent(torch.zeros(2, 5), *torch.zeros(3, 2, 4)), r"\(batch, channels, length\)"),
    (lambda: ssm_recurrent(torch.zeros(1, 2, 5), *torch.zeros(3, 2, 4), state=torch.zeros(1, 2, 3)), "state must be"),
    (lambda: ssm_convolutional(torch.zeros(1, 2, 5), *torch.zeros(3, 2, 4), D=torch.zeros(3)),
     r"D must be a \(channels,\)"),
    (lambda: ssm_kernel(*torch.zeros(3, 2, 4), length=0), "length must be a positive int"),
    (lambda: causal_convolution_fft(torch.zeros(1, 2, 5), torch.zeros(3, 5)), "one row per channel"),
])
def test_bad_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------------- the layer
@pytest.mark.parametrize("kwargs", [{}, dict(real=True), dict(discretization="bilinear")])
def test_s4d_layer_cached_recurrence_equals_the_convolution(kwargs):
    torch.manual_seed(0)
    layer = S4DLayer(6, 5, layer_index=2, **kwargs).double()
    with torch.no_grad():
        layer.log_dt.add_(2.0)  # steps of 0.007-0.7: a long, oscillating memory
    x = torch.randn(2, 23, 6, dtype=torch.float64)
    full, weights = layer(x)
    assert full.shape == (2, 23, 6) and weights is None
    cache = KVCache(2, 23, dtype=torch.float64)
    pieces = [layer(x[:, :9], None, cache)[0]]
    cache.advance(9)
    for t in range(9, 23):
        pieces.append(layer(x[:, t:t + 1], None, cache)[0])
        cache.advance(1)
    (state,) = cache.state(2)
    assert state.shape == (2, 6, 5) and state.is_complex() != bool(kwargs.get("real"))
    torch.testing.assert_close(torch.cat(pieces, 1), full, **EXACT)


def test_s4d_layer_uses_its_discretisation_and_init():
    layer = S4DLayer(4, 3)
    abar, bbar, C = layer.system()
    A = torch.complex(-torch.full((4, 3), 0.5), math.pi * torch.arange(3.0).repeat(4, 1))   # S4D-Lin
    expected, _ = discretize_zoh(A, torch.ones(4, 3, dtype=torch.complex64), torch.exp(layer.log_dt.detach()))
    torch.testing.assert_close(abar.detach(), expected)
    assert (abar.abs() < 1).all() and (layer.log_dt.exp() >= 1e-3 - 1e-9).all()
    real = S4DLayer(4, 3, real=True)
    assert not real.system()[0].is_complex()
    torch.testing.assert_close(real.system()[0].detach(), torch.exp(-torch.exp(real.log_dt.detach())[:, None]
                                                                       * torch.arange(1.0, 4.0)))


def test_s4d_layer_trains_through_the_kernel():
    torch.manual_seed(1)
    layer = S4DLayer(3, 4)
    x = torch.randn(2, 10, 3)
    layer(x)[0].square().mean().backward()
    for name in ("log_dt", "log_A_real", "A_imag", "B", "C", "D"):
        grad = getattr(layer, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0, name


@pytest.mark.parametrize("kwargs, message", [
    (dict(width=0), "width"), (dict(width=4, state=0), "state"),
    (dict(width=4, discretization="euler"), "discretization"),
    (dict(width=4, dt_min=0.1, dt_max=0.01), "dt_min"),
])
def test_s4d_layer_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        S4DLayer(**kwargs)
    with pytest.raises(ValueError, match=r"width=4"):
        S4DLayer(4)(torch.zeros(1, 3, 5))
