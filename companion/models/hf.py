"""Converters from Hugging Face transformers models to the companion's :class:`Decoder`.

``from_hf(model)`` is the one entry point; it dispatches on the model's class name to a converter
registered in :data:`CONVERTERS` (later chapters register Mixtral, DeepSeek, Mamba...). Each
converter maps the configuration field by field, refuses what the companion cannot reproduce
exactly (with a ``ValueError`` naming it), and copies every weight. RoPE's scalings
(``config.rope_parameters``) map to :class:`~companion.nn.rope_scaling.RopeScaling` through
:func:`rope_from_config`. The tests check the logits of the converted model against transformers'
with every parameter randomised.

``transformers`` is imported lazily: the companion works without it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from companion.models.decoder import Decoder, DecoderConfig
from companion.nn.rope_scaling import RopeScaling

CONVERTERS: dict[str, Callable[[nn.Module], Decoder]] = {}


def register(*class_names: str):
    """Register a converter for Hugging Face model classes with these names."""

    def wrap(fn: Callable[[nn.Module], Decoder]) -> Callable[[nn.Module], Decoder]:
        for name in class_names:
            CONVERTERS[name] = fn
        return fn

    return wrap


def from_hf(model: nn.Module) -> Decoder:
    """A companion :class:`Decoder` with the same configuration and weights as ``model``.

    Supported: ``LlamaForCausalLM``, and any class registered in :data:`CONVERTERS`. The result is
    in eval mode, on the same device and in the same dtype as ``model``.
    """
    name = type(model).__name__
    if name not in CONVERTERS:
        raise ValueError(f"from_hf does not know {name}; supported: {sorted(CONVERTERS)}")
    decoder = CONVERTERS[name](model)
    param = next(model.parameters())
    return decoder.to(device=param.device, dtype=param.dtype).eval()


def rope_from_config(config) -> tuple[float, RopeScaling | None]:
    """RoPE's base and scaling from a transformers config (``config.rope_parameters``, transformers 5).

    ``rope_type`` "default" gives no scaling; "linear", "dynamic", "yarn", "longrope" and "llama3"
    give a :class:`~companion.nn.rope_scaling.RopeScaling` read the way transformers' functions
    read them: "dynamic" takes its original length from ``max_position_embeddings``; a missing YaRN
    or LongRoPE ``factor`` is ``max_position_embeddings / original_max_position_embeddings``; YaRN's
    ``beta_fast`` and ``beta_slow`` default to 32 and 1 when missing or zero; ``truncate`` to True.
    Anything else (another rope_type, a partial rotary factor) raises ``ValueError`` naming it.
    """
    params = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    base = params.get("rope_theta", getattr(config, "rope_theta", None))
    if base is None:
        raise ValueError("the config has no rope_theta")
    if params.get("partial_rotary_factor", 1.0) not in (None, 1, 1.0):
        raise ValueError(f"partial_rotary_factor={params['partial_rotary_factor']!r} is not supported (only 1.0)")
    if rope_type == "default":
        return float(base), None
    if rope_type not in ("linear", "dynamic", "yarn", "longrope", "llama3"):
        raise ValueError(f"rope_type {rope_type!r} is not supported; supported: "
                         "'default', 'linear', 'dynamic', 'yarn', 'longrope', 'llama3'")
    fields: dict = {"kind": rope_type, "factor": params.get("factor")}
    if rope_type == "dynamic":
        fields["original_max_positions"] = config.max_position_embeddings
    elif rope_type != "linear":
        fields["original_max_positions"] = params.get("original_max_position_embeddings")
    if rope_type in ("yarn", "longrope"):
        if fields["factor"] is None and fields["original_max_positions"]:
            fields["factor"] = config.max_position_embeddings / fields["original_max_positions"]
        fields["attention_factor"] = params.get("attention_factor")
    if rope_type == "yarn":
        fields.update(beta_fast=params.get("beta_fast") or 32, beta_slow=params.get("beta_slow") or 1,
                      mscale=params.get("mscale"), mscale_all_dim=params.get("mscale_all_dim"),
                      truncate=bool(params.get("truncate", True)))
    elif rope_type == "longrope":
        fields.update(short_factor=params.get("short_factor"), long_factor=params.get("long_factor"))
    elif rope_type == "llama3":
        fields.update(low_freq_factor=params.get("low_freq_factor"), high_freq_factor=params.get("high_freq_factor"))
    return float(base), RopeScaling(**fields)


@register("LlamaForCausalLM")
@torch.no_grad()
def _from_llama(model: nn.Module) -> Decoder:
    c = model.config
    if c.hidden_act != "silu":
        raise ValueError(f"only hidden_act='silu' (SwiGLU) is supported, got {c.hidden_act!r}")
    if getattr(c, "pretraining_tp", 1) not in (None, 1):
        raise ValueError("pretraining_tp != 1 is not supported")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rope_base, rope_scaling = rope_from_config(c)
    config = DecoderConfig(
        vocab_size=c.vocab_size, width=c.hidden_size, n_layers=c.num_hidden_layers,
        n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads, head_dim=head_dim,
        ffn="swiglu", ffn_hidden=c.intermediate_size, norm="rmsnorm", norm_eps=c.rms_norm_eps,
        norm_position="pre", positions="rope", rope_base=rope_base, rope_scaling=rope_scaling,
        max_positions=c.max_position_embeddings, tie_embeddings=bool(c.tie_word_embeddings),
        attention_bias=bool(c.attention_bias), mlp_bias=bool(c.mlp_bias),
    )
    decoder = Decoder(config)
    hf = model.model
    decoder.embed.weight.copy_(hf.embed_tokens.weight)
    for block, layer in zip(decoder.blocks, hf.layers):
        attn = layer.self_attn
        block.mixer.qkv.weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        if config.attention_bias:
            block.mixer.qkv.bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
            block.mixer.out.bias.copy_(attn.o_proj.bias)
        block.mixer.out.weight.copy_(attn.o_proj.weight)
        block.ffn.load_separate(layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
        block.norm_1.weight.copy_(layer.input_layernorm.weight)
        block.norm_2.weight.copy_(layer.post_attention_layernorm.weight)
    decoder.norm.weight.copy_(hf.norm.weight)
    if not config.tie_embeddings:
        decoder.lm_head.weight.copy_(model.lm_head.weight)
    return decoder
