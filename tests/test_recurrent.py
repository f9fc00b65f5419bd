"""companion.nn.recurrent: the fused and unrolled Elman RNN and GRU against torch and the equations."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from companion.nn import Recurrent

shapes = st.fixed_dictionaries({
    "cell": st.sampled_from(["rnn", "gru"]),
    "batch": st.integers(1, 4),
    "seq": st.integers(1, 6),
    "input_size": st.integers(1, 7),
    "hidden_size": st.integers(1, 7),
    "with_h0": st.booleans(),
    "seed": st.integers(0, 2**31),
})


def make(cell, batch, seq, input_size, hidden_size, with_h0, seed, dtype=torch.float64):
    torch.manual_seed(seed)
    module = Recurrent(input_size, hidden_size, cell=cell).to(dtype)
    with torch.no_grad():  # larger weights than the default init, so that the gates saturate a bit
        for parameter in module.parameters():
            parameter.mul_(2.0)
    x = torch.randn(batch, seq, input_size, dtype=dtype)
    h0 = torch.randn(batch, hidden_size, dtype=dtype) if with_h0 else None
    return module, x, h0


def torch_reference(module: Recurrent) -> nn.Module:
    """A fresh nn.RNN / nn.GRU holding a copy of ``module``'s weights."""
    kind = nn.RNN if module.cell == "rnn" else nn.GRU
    kwargs = {"nonlinearity": "tanh"} if module.cell == "rnn" else {}
    reference = kind(module.fused.input_size, module.hidden_size, batch_first=True, **kwargs)
    reference = reference.to(module.fused.weight_ih_l0.dtype)
    reference.load_state_dict({k: v.clone() for k, v in module.fused.state_dict().items()})
    return reference


@settings(max_examples=30, deadline=None)
@given(shapes)
def test_forward_equals_torch_rnn_and_gru_with_the_same_weights(shape):
    module, x, h0 = make(**shape, dtype=torch.float32)
    reference = torch_reference(module)
    assert reference is not module.fused
    outputs, last = module(x, h0)
    expected_outputs, expected_last = reference(x, None if h0 is None else h0[None])
    assert outputs.shape == (shape["batch"], shape["seq"], shape["hidden_size"])
    assert last.shape == (shape["batch"], shape["hidden_size"])
    torch.testing.assert_close(outputs, expected_outputs)
    torch.testing.assert_close(last, expected_last[0])
    torch.testing.assert_close(last, outputs[:, -1])


@settings(max_examples=30, deadline=None)
@given(shapes)
def test_unrolled_equals_forward_in_values_and_gradients(shape):
    module, x, h0 = make(**shape)
    weights = torch.randn(shape["batch"], shape["seq"], shape["hidden_size"], dtype=torch.float64)

    def gradients(run):
        module.zero_grad()
        xg = x.clone().requires_grad_(True)
        hg = None if h0 is None else h0.clone().requires_grad_(True)
        states = run(xg, hg)
        (states * weights).sum().backward()
        grads = [xg.grad] + ([] if hg is None else [hg.grad])
        return states.detach(), grads + [p.grad.clone() for p in module.parameters()]

    fused_states, fused_grads = gradients(lambda xg, hg: module(xg, hg)[0])
    unrolled_states, unrolled_grads = gradients(lambda xg, hg: torch.stack(module.unrolled(xg, hg), dim=1))
    torch.testing.assert_close(unrolled_states, fused_states)
    assert len(fused_grads) == len(unrolled_grads)
    for fused, unrolled in zip(fused_grads, unrolled_grads):
        torch.testing.assert_close(unrolled, fused)


def test_unrolled_returns_one_graph_node_per_step():
    module, x, _ = make("gru", 2, 5, 3, 4, False, 0)
    states = module.unrolled(x.requires_grad_(True))
    assert len(states) == 5 and all(s.shape == (2, 4) for s in states)
    # the gradient reaching step 2 from step 2 only: it touches x[:, :3] and nothing later
    grad, = torch.autograd.grad(states[2].sum(), x)
    assert grad[:, 3:].abs().max() == 0 and grad[:, :3].abs().max() > 0


# ------------------------------------------------------------------------------- the equations
def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def docstring_equations(module: Recurrent, x: torch.Tensor, h0: torch.Tensor | None) -> np.ndarray:
    """The module docstring's equations, step by step, in float64 NumPy.

    The stacked PyTorch weights hold the gates in the order (r, z, n): ``weight_ih_l0`` is
    ``[W_ir; W_iz; W_in]`` and ``weight_hh_l0`` is ``[W_hr; W_hz; W_hn]`` (the same for biases).
    """
    p = {k: v.detach().double().numpy() for k, v in module.fused.state_dict().items()}
    x = x.detach().double().numpy()
    batch, seq, _ = x.shape
    hidden = module.hidden_size
    h = np.zeros((batch, hidden)) if h0 is None else h0.detach().double().numpy()
    out = []
    if module.cell == "rnn":
        for t in range(seq):
            h = np.tanh(x[:, t] @ p["weight_ih_l0"].T + p["bias_ih_l0"] + h @ p["weight_hh_l0"].T + p["bias_hh_l0"])
            out.append(h)
        return np.stack(out, axis=1)
    W_ir, W_iz, W_in = np.split(p["weight_ih_l0"], 3)
    W_hr, W_hz, W_hn = np.split(p["weight_hh_l0"], 3)
    b_ir, b_iz, b_in = np.split(p["bias_ih_l0"], 3)
    b_hr, b_hz, b_hn = np.split(p["bias_hh_l0"], 3)
    for t in range(seq):
        x_t = x[:, t]
        r = sigmoid(x_t @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
        z = sigmoid(x_t @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
        n = np.tanh(x_t @ W_in.T + b_in + r * (h @ W_hn.T + b_hn))
        h = (1 - z) * n + z * h
        out.append(h)
    return np.stack(out, axis=1)


@settings(max_examples=30, deadline=None)
@given(shapes)
def test_the_docstring_equations_give_forward_and_unrolled(shape):
    module, x, h0 = make(**shape)
    expected = torch.from_numpy(docstring_equations(module, x, h0))
    with torch.no_grad():
        torch.testing.assert_close(module(x, h0)[0], expected)
        torch.testing.assert_close(torch.stack(module.unrolled(x, h0), dim=1), expected)


def test_gru_is_not_the_variant_with_the_reset_gate_before_the_matmul():
    # Cho et al.'s original candidate is tanh(W x + U (r * h)); PyTorch's (and the docstring's)
    # is tanh(W x + r * (U h + b)). They differ, and the module must follow the docstring.
    module, x, h0 = make("gru", 3, 4, 5, 6, True, 1)
    p = {k: v.detach().numpy() for k, v in module.fused.state_dict().items()}
    W_ir, W_iz, W_in = np.split(p["weight_ih_l0"], 3)
    W_hr, W_hz, W_hn = np.split(p["weight_hh_l0"], 3)
    b_ir, b_iz, b_in = np.split(p["bias_ih_l0"], 3)
    b_hr, b_hz, b_hn = np.split(p["bias_hh_l0"], 3)
    h = h0.numpy()
    x_t = x[:, 0].numpy()
    r = sigmoid(x_t @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
    z = sigmoid(x_t @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
    n_other = np.tanh(x_t @ W_in.T + b_in + (r * h) @ W_hn.T + b_hn)
    other = (1 - z) * n_other + z * h
    with torch.no_grad():
        ours = module.step(x[:, 0], h0).numpy()
    assert np.abs(ours - other).max() > 1e-3


# ----------------------------------------------------------------------------------------- errors
def test_bad_cell_name_raises():
    with pytest.raises(ValueError, match="'rnn' or 'gru'.*'lstm'"):
        Recurrent(3, 4, cell="lstm")


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4, 5), (2, 3, 4), (2, 0, 5)])
@pytest.mark.parametrize("method", ["forward", "unrolled"])
def test_bad_input_shapes_raise(shape, method):
    module = Recurrent(5, 4, cell="gru")
    with pytest.raises(ValueError, match=r"expected input \(batch, seq"):
        getattr(module, method)(torch.randn(*shape))


@pytest.mark.parametrize("h0_shape", [(4,), (1, 4), (3, 5), (1, 3, 4)])
@pytest.mark.parametrize("method", ["forward", "unrolled"])
@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_bad_initial_state_shapes_raise(h0_shape, method, cell):
    # (1, 4) with a batch of 3 would broadcast silently in the unrolled form: both forms refuse it
    module = Recurrent(5, 4, cell=cell)
    with pytest.raises(ValueError, match=r"expected h0 \(batch, hidden\) = \(3, 4\)"):
        getattr(module, method)(torch.randn(3, 2, 5), torch.zeros(*h0_shape))
