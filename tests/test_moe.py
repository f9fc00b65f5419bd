"""The mixture-of-experts layer (companion.nn.moe) and its routing (companion.nn.router).

Dispatch (sort by expert, grouped matmuls, scatter) equals the per-token loop in float64 for any
shapes and policies; the layer equals transformers' MixtralSparseMoeBlock (softmax top-k,
renormalised), Qwen3MoeSparseMoeBlock (softmax top-k, not renormalised) and DeepseekV3MoE (sigmoid,
selection bias, group-limited, shared experts) with every weight randomised; the losses equal hand
computations; capacity drops what it says and dropped assignments add nothing; expert choice fills
every expert exactly; gradients reach router and experts; a Decoder with MoE layers trains with the
auxiliary loss and generates the same tokens with and without the cache.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion.models import Decoder, DecoderConfig
from companion.nn import (MoE, MoEShape, capacity_mask, expert_capacity, expert_choice, group_limited_mask,
                          load_balancing_loss, moe_aux_loss, moe_dispatch, moe_from_hf, moe_layers,
                          moe_loop_reference, router_z_loss, token_choice, update_moe_biases)
from companion.train import next_token_loss

F64 = torch.float64


def randomise(module: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    """Every parameter drawn afresh (vectors around 0.5, matrices around 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=F64).to(param.dtype)
            param.copy_(noise * scale + (0.5 if param.ndim == 1 else 0.0))


def make_layer(shape: MoEShape, width=10, seed=0, dtype=F64) -> MoE:
    layer = MoE(width, shape).to(dtype)
    randomise(layer, seed)
    if layer.e_score_correction_bias is not None:
        layer.e_score_correction_bias = torch.randn(shape.n_routed_experts, generator=torch.Generator()
                                                    .manual_seed(seed + 1)) * 0.2
    return layer


def randn(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


# ------------------------------------------------------------------------------------------------
# Dispatch equals the loop
# ------------------------------------------------------------------------------------------------

@st.composite
def shapes(draw):
    experts = draw(st.integers(1, 6))
    routing = draw(st.sampled_from(["token_choice", "token_choice", "expert_choice"]))
    n_group = topk_group = 1
    if routing == "token_choice" and draw(st.booleans()):
        n_group = draw(st.sampled_from([g for g in (1, 2, 3) if experts % g == 0]))
        topk_group = draw(st.integers(1, n_group))
    limit = topk_group * (experts // n_group) if n_group > 1 else experts
    return MoEShape(
        experts, draw(st.integers(1, limit)), draw(st.integers(1, 6)),
        n_shared_experts=draw(st.integers(0, 2)), routing=routing,
        scoring_func=draw(st.sampled_from(["softmax", "sigmoid"])), norm_topk_prob=draw(st.booleans()),
        n_group=n_group, topk_group=topk_group, routed_scaling_factor=draw(st.sampled_from([1.0, 2.5])),
        score_correction_bias=routing == "token_choice" and draw(st.booleans()),
        capacity_factor=draw(st.none() | st.sampled_from([0.3, 1.0, 1.5])))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shapes(), st.integers(1, 3), st.integers(1, 7), st.integers(0, 99))
def test_dispatch_equals_the_per_token_loop(shape, batch, seq, seed):
    layer = make_layer(shape, width=7, seed=seed)
    x = randn(batch, seq, 7, seed=seed)
    got = layer(x)
    assert got.shape == x.shape
    torch.testing.assert_close(got, moe_loop_reference(layer, x), atol=1e-12, rtol=1e-12)
    load = layer.last_load  # the books balance: computed + dropped = chosen
    assert int(load.counts.sum()) == layer.last_routing.token.numel()
    assert torch.equal(load.counts + load.dropped, layer.last_routing.chosen)
    if load.capacity is not None:
        assert int(load.counts.max()) <= load.capacity


def test_experts_that_receive_no_token_and_gradients_equal_the_loop():
    """Every token on expert 0 or 1 of 5: the idle experts' weights get exactly zero gradient."""
    layer = make_layer(MoEShape(5, 2, 4, n_shared_experts=1), width=6, seed=3)
    x = randn(2, 5, 6, seed=4).abs()
    with torch.no_grad():  # positive inputs, experts 0-1 with positive router rows, 2-4 with negative ones
        layer.router.weight[:2] = layer.router.weight[:2].abs()
        layer.router.weight[2:] = -layer.router.weight[2:].abs() - 1.0
    grads = []
    for run in (layer, lambda x: moe_loop_reference(layer, x)):
        layer.zero_grad()
        xx = x.clone().requires_grad_()
        run(xx).square().sum().backward()
        grads.append([xx.grad] + [p.grad.clone() for p in layer.parameters()])
    assert set(layer.last_routing.expert.tolist()) <= {0, 1}
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    assert torch.all(layer.gate_proj.grad[2:] == 0) and torch.all(layer.down_proj.grad[2:] == 0)
    assert layer.gate_proj.grad[:2].abs().sum() > 0 and layer.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("routing", ["token_choice", "expert_choice"])
def test_gradients_reach_router_experts_and_shared_experts(routing):
    layer = make_layer(MoEShape(4, 2, 5, n_shared_experts=1, routing=routing, capacity_factor=1.0), seed=1,
                       dtype=torch.float32)
    x = randn(2, 6, 10, seed=2, dtype=torch.float32)
    (layer(x).square().sum() + moe_aux_loss(layer)).backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------------------
# Against transformers
# ------------------------------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")
from transformers import DeepseekV3Config, MixtralConfig, Qwen3MoeConfig  # noqa: E402
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE  # noqa: E402
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock, load_balancing_loss_func  # noqa: E402
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock  # noqa: E402


def compare_with_hf(block: torch.nn.Module, config, seed: int, width: int) -> None:
    randomise(block, seed)
    ours = moe_from_hf(block, config)
    x = randn(3, 11, width, seed=seed + 100, dtype=torch.float32)
    with torch.no_grad():
        expected, got = block(x), ours(x)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("experts, top_k", [(4, 1), (5, 2), (8, 3), (3, 3)])
def test_softmax_top_k_renormalised_matches_mixtral(experts, top_k):
    config = MixtralConfig(hidden_size=16, intermediate_size=12, num_local_experts=experts,
                           num_experts_per_tok=top_k, experts_implementation="eager")
    block = MixtralSparseMoeBlock(config).eval()
    compare_with_hf(block, config, seed=experts * 10 + top_k, width=16)
    assert moe_from_hf(block, config).shape.norm_topk_prob


@pytest.mark.parametrize("norm_topk_prob", [False, True])
def test_softmax_top_k_matches_qwen3_moe_with_and_without_renormalising(norm_topk_prob):
    config = Qwen3MoeConfig(hidden_size=16, moe_intermediate_size=6, num_experts=6, num_experts_per_tok=2,
                            norm_topk_prob=norm_topk_prob, experts_implementation="eager")
    compare_with_hf(Qwen3MoeSparseMoeBlock(config).eval(), config, seed=7, width=16)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # no shared experts: an empty MLP
@pytest.mark.parametrize("experts, top_k, n_group, topk_group, n_shared, norm", [
    (8, 3, 4, 2, 2, True), (8, 2, 2, 1, 1, False), (12, 4, 3, 2, 1, True), (6, 2, 1, 1, 0, True),
])
def test_sigmoid_bias_group_limited_shared_matches_deepseek_v3(experts, top_k, n_group, topk_group, n_shared, norm):
    config = DeepseekV3Config(hidden_size=16, moe_intermediate_size=6, n_routed_experts=experts,
                              num_experts_per_tok=top_k, n_group=n_group, topk_group=topk_group,
                              n_shared_experts=n_shared, routed_scaling_factor=2.5, norm_topk_prob=norm,
                              experts_implementation="eager")
    block = DeepseekV3MoE(config).eval()
    with torch.no_grad():  # a random selection bias, as large as the spread of the scores
        block.gate.e_score_correction_bias.copy_(randn(experts, seed=experts) * 0.3)
    compare_with_hf(block, config, seed=experts + top_k, width=16)


def test_load_balancing_loss_is_mixtrals_divided_by_top_k():
    logits = randn(30, 6, seed=5)
    index = torch.softmax(logits, -1).topk(2, dim=-1).indices
    ours = load_balancing_loss(torch.softmax(logits, -1), index)
    theirs = load_balancing_loss_func((logits.float(),), num_experts=6, top_k=2)
    torch.testing.assert_close(ours.float() * 2, theirs, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Routing by hand
# ------------------------------------------------------------------------------------------------

def test_token_choice_gates_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]], dtype=F64)
    p = torch.softmax(logits, -1)[0]
    index, gate, _ = token_choice(logits, 2, norm_topk_prob=False)
    assert index.tolist() == [[1, 2]]
    torch.testing.assert_close(gate[0], p[[1, 2]])                         # a share of the whole softmax
    _, gate, _ = token_choice(logits, 2, norm_topk_prob=True)
    torch.testing.assert_close(gate[0], torch.softmax(logits[0, [1, 2]], -1))  # softmax of the top-k logits
    # sigmoid with a bias: the bias moves the choice, never the gate
    bias = torch.tensor([5.0, 0.0, 0.0, 0.0], dtype=F64)
    index, gate, _ = token_choice(logits, 1, scoring_func="sigmoid", norm_topk_prob=False, bias=bias,
                                  routed_scaling_factor=2.5)
    assert index.tolist() == [[0]]
    torch.testing.assert_close(gate, 2.5 * torch.sigmoid(logits[:, [0]]))


def test_group_limited_selection_by_hand():
    # groups {0,1}, {2,3}, {4,5}: the single best expert (4) sits in a group whose top-2 sum is worst
    scores = torch.tensor([[0.6, 0.6, 0.5, 0.55, 0.9, 0.0]], dtype=F64)
    mask = group_limited_mask(scores, n_group=3, topk_group=2)
    assert mask.tolist() == [[True, True, True, True, False, False]]
    logits = torch.logit(scores.clamp(1e-6, 1 - 1e-6))
    index, _, _ = token_choice(logits, 2, scoring_func="sigmoid", n_group=3, topk_group=2)
    assert sorted(index[0].tolist()) == [0, 1]                              # not 4, despite its 0.9
    index, _, _ = token_choice(logits, 2, scoring_func="sigmoid")
    assert sorted(index[0].tolist()) == [0, 4]                              # without groups it would be


def test_capacity_mask_first_choices_first_in_token_order():
    index = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0]])
    kept = capacity_mask(index, experts=3, capacity=2)
    # first choices: expert 0 takes tokens 0 and 1, drops 2; expert 1 takes 3. Second choices:
    # token 0 -> 1 (its 2nd), token 1 -> 2, token 2 -> 1 (full), token 3 -> 0 (full)
    assert kept.tolist() == [[True, True], [True, True], [False, False], [True, False]]
    assert expert_capacity(4, 2, 3, 1.0) == 3 and expert_capacity(4, 2, 3, 0.7) == 2
    assert expert_capacity(4, 2, 1, 1.0) == 4  # never more than the tokens


def test_dropped_assignments_contribute_nothing():
    """Every token wants expert 0; capacity 2 of 8 tokens: tokens 2..7 leave the layer with zeros."""
    shape = MoEShape(4, 1, 5, capacity_factor=1.0)
    layer = make_layer(shape, width=6, seed=2)
    x = randn(1, 8, 6, seed=3)
    x[..., 0] = 1.0
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0, 0] = 20.0
    y = layer(x)
    load = layer.last_load
    assert load.capacity == 2 and load.counts.tolist() == [2, 0, 0, 0] and load.dropped.tolist() == [6, 0, 0, 0]
    assert torch.all(y[0, 2:] == 0) and torch.all(y[0, :2].abs().sum(-1) > 0)
    torch.testing.assert_close(y, moe_loop_reference(layer, x))
    # without the capacity, the same layer computes all eight
    free = MoE(6, MoEShape(4, 1, 5)).to(F64)
    free.load_state_dict(layer.state_dict())
    torch.testing.assert_close(free(x)[0, :2], y[0, :2])
    assert torch.all(free(x)[0, 2:].abs().sum(-1) > 0) and free.last_load.dropped.sum() == 0


@pytest.mark.parametrize("capacity_factor, top_k", [(None, 1), (None, 2), (1.5, 2), (0.5, 1)])
def test_expert_choice_fills_every_expert_exactly(capacity_factor, top_k):
    layer = make_layer(MoEShape(4, top_k, 5, routing="expert_choice", capacity_factor=capacity_factor), seed=4)
    x = randn(2, 7, 10, seed=5)
    layer(x)
    capacity = math.ceil((capacity_factor or 1.0) * 14 * top_k / 4)
    assert layer.last_load.capacity == capacity
    assert layer.last_load.counts.tolist() == [capacity] * 4 and layer.last_load.dropped.sum() == 0
    routing = layer.last_routing
    for e in range(4):  # each expert took its top-C tokens by score
        mine = routing.token[routing.expert == e]
        assert len(set(mine.tolist())) == capacity
        best = torch.softmax(routing.logits, -1)[:, e].topk(capacity).indices
        assert set(mine.tolist()) == set(best.tolist())
    token, gate, _ = expert_choice(routing.logits, 3)
    assert token.shape == gate.shape == (4, 3)


# ------------------------------------------------------------------------------------------------
# Losses by hand
# ------------------------------------------------------------------------------------------------

def test_load_balancing_loss_by_hand_and_one_when_uniform():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]], dtype=F64)
    index = torch.tensor([0, 1, 0, 2])
    f = torch.tensor([2, 1, 1], dtype=F64) / 4
    P = probs.mean(0)
    torch.testing.assert_close(load_balancing_loss(probs, index), 3 * (f * P).sum())
    uniform = torch.full((6, 3), 1 / 3, dtype=F64)
    torch.testing.assert_close(load_balancing_loss(uniform, torch.tensor([[0, 1], [2, 0], [1, 2]] * 2)),
                               torch.tensor(1.0, dtype=F64))
    # everything on one expert that also gets all the probability: the worst case, E
    collapsed = torch.tensor([[1.0, 0.0, 0.0]] * 4, dtype=F64)
    assert load_balancing_loss(collapsed, torch.zeros(4, dtype=torch.long)).item() == pytest.approx(3.0)


def test_router_z_loss_by_hand_and_layer_aux_loss():
    logits = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 3.0]], dtype=F64)
    by_hand = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist()) / 3
    assert router_z_loss(logits).item() == pytest.approx(by_hand, rel=1e-12)
    shape = MoEShape(3, 2, 4, router_aux_loss_coef=0.1, router_z_loss_coef=0.01)
    layer = make_layer(shape, seed=6)
    layer(randn(2, 5, 10, seed=7))
    routing = layer.last_routing
    index = torch.softmax(routing.logits, -1).topk(2, -1).indices
    torch.testing.assert_close(layer.balance_loss, load_balancing_loss(torch.softmax(routing.logits, -1), index))
    torch.testing.assert_close(layer.z_loss, router_z_loss(routing.logits))
    torch.testing.assert_close(layer.aux_loss, 0.1 * layer.balance_loss + 0.01 * layer.z_loss)


# ------------------------------------------------------------------------------------------------
# DeepSeek-V3's bias update
# ------------------------------------------------------------------------------------------------

def test_bias_update_moves_against_the_load():
    layer = make_layer(MoEShape(4, 1, 3, scoring_func="sigmoid", score_correction_bias=True), seed=8)
    layer.e_score_correction_bias.zero_()
    layer.update_bias(0.01, counts=torch.tensor([5, 1, 3, 3]))
    torch.testing.assert_close(layer.e_score_correction_bias, torch.tensor([-0.01, 0.01, 0.0, 0.0]))
    x = randn(4, 8, 10, seed=9)
    layer.eval()
    layer(x)
    assert layer.pending_load.sum() == 0                       # eval calls do not count
    layer.train()
    layer(x)
    layer(x)
    assert torch.equal(layer.pending_load, 2 * layer.last_load.counts)
    before = layer.e_score_correction_bias.clone()
    update_moe_biases(layer, 0.05)
    assert layer.pending_load.sum() == 0 and not torch.equal(before, layer.e_score_correction_bias)
    # repeated updates balance a skewed router (auxiliary-loss-free balancing)
    with torch.no_grad():
        layer.router.weight[0] += 0.5
    layer(x)
    start = layer.last_load.counts.max().item()
    for _ in range(100):
        layer(x)
        layer.update_bias(0.02)
    assert layer.last_load.counts.max().item() < start
    assert layer.e_score_correction_bias.grad is None
    with pytest.raises(ValueError, match="score_correction_bias=True"):
        make_layer(MoEShape(4, 1, 3)).update_bias()


# ------------------------------------------------------------------------------------------------
# In a decoder
# ------------------------------------------------------------------------------------------------

def moe_decoder(**shape_changes) -> Decoder:
    torch.manual_seed(0)
    shape = MoEShape(4, 2, 24, n_shared_experts=1, **shape_changes)
    return Decoder(DecoderConfig(vocab_size=40, width=32, n_layers=2, n_heads=4, feedforwards=("moe", "swiglu"),
                                 moe=shape))


def test_decoder_with_moe_trains_with_the_aux_loss_and_generates_with_and_without_cache():
    model = moe_decoder(scoring_func="sigmoid", score_correction_bias=True, n_group=2, topk_group=1)
    assert len(moe_layers(model)) == 1 and isinstance(model.blocks[0].ffn, MoE)
    data = torch.randint(0, 40, (8, 17), generator=torch.Generator().manual_seed(0))
    batch = (data[:, :-1], data[:, 1:])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = next_token_loss(model, batch)
        aux = moe_aux_loss(model)
        assert aux.item() > 0 and aux.requires_grad
        assert aux is model.blocks[0].ffn.aux_loss  # one MoE layer: its own loss
        optimizer.zero_grad()
        (loss + aux).backward()
        optimizer.step()
        update_moe_biases(model)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
    assert model.blocks[0].ffn.e_score_correction_bias.abs().sum() > 0
    prompt = data[:2, :5]
    with_cache = model.generate(prompt, 12, temperature=0)
    assert torch.equal(with_cache, model.generate(prompt, 12, temperature=0, use_cache=False))
    sampled = [model.generate(prompt, 12, generator=torch.Generator().manual_seed(1), use_cache=cache)
               for cache in (True, False)]
    assert torch.equal(*sampled)


def test_decoder_config_validates_moe():
    base = dict(vocab_size=40, width=32, n_layers=2, n_heads=4)
    with pytest.raises(ValueError, match="need moe, a MoEShape"):
        DecoderConfig(**base, feedforwards=("moe", "swiglu"))
    with pytest.raises(ValueError, match="no layer's feed-forward is 'moe'"):
        DecoderConfig(**base, moe=MoEShape(4, 2, 8))
    with pytest.raises(ValueError, match="must be a MoEShape"):
        DecoderConfig(**base, ffn="moe", moe=dict(n_routed_experts=4))
    model = Decoder(DecoderConfig(**base, ffn="moe", moe=MoEShape(4, 2, 8)))
    assert len(moe_layers(model)) == 2
    assert moe_aux_loss(Decoder(DecoderConfig(**base))).item() == 0.0  # no MoE layer: zero


@pytest.mark.parametrize("changes, match", [
    (dict(n_routed_experts=0), "n_routed_experts to be a positive int"),
    (dict(num_experts_per_tok=5), "num_experts_per_tok <= n_routed_experts"),
    (dict(routing="hash"), "routing to be one of"),
    (dict(scoring_func="relu"), "scoring_func to be one of"),
    (dict(n_group=3), "n_group to divide"),
    (dict(n_group=2, topk_group=3), "topk_group <= n_group"),
    (dict(n_group=4, topk_group=1, num_experts_per_tok=2), "num_experts_per_tok <= topk_group"),
    (dict(routing="expert_choice", score_correction_bias=True), "expert choice balances"),
    (dict(capacity_factor=0), "capacity_factor to be None or a positive number"),
    (dict(router_aux_loss_coef=-1.0), "router_aux_loss_coef to be a non-negative"),
    (dict(norm_topk_prob=1), "norm_topk_prob to be a bool"),
])
def test_shape_rejects_bad_arguments(changes, match):
    with pytest.raises(ValueError, match=match):
        MoEShape(**{**dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=8), **changes})


def test_functions_reject_bad_arguments():
    logits = randn(5, 4)
    with pytest.raises(ValueError, match="top_k to be an int in"):
        token_choice(logits, 5)
    with pytest.raises(ValueError, match="bias of shape"):
        token_choice(logits, 2, bias=torch.zeros(3))
    with pytest.raises(ValueError, match="capacity to be an int in"):
        expert_choice(logits, 6)
    with pytest.raises(ValueError, match="tokens, experts"):
        load_balancing_loss(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="capacity_factor to be a positive number"):
        expert_capacity(4, 1, 2, -1.0)
    with pytest.raises(ValueError, match="x of shape"):
        MoE(10, MoEShape(4, 2, 8))(randn(3, 9, dtype=torch.float32))
    with pytest.raises(ValueError, match="shape to be a MoEShape"):
        MoE(10, None)
    with pytest.raises(ValueError, match="expected one of"):
        moe_from_hf(torch.nn.Linear(2, 2), None)
    with pytest.raises(ValueError, match="one dtype"):  # the grouped matmul's own check
        moe_dispatch(randn(4, 3), torch.tensor([0, 1]), torch.tensor([0, 0]), torch.ones(2), torch.zeros(2, 3, 2),
                     torch.zeros(2, 3, 2), torch.zeros(2, 2, 3))
