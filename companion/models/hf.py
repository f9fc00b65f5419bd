"""Converters from Hugging Face transformers models to the companion's :class:`Decoder`.

``from_hf(model)`` is the one entry point; it dispatches on the model's class name to a converter
registered in :data:`CONVERTERS` (later chapters register Mixtral, DeepSeek, Mamba...). Each
converter maps the configuration field by field, refuses what the companion cannot reproduce
exactly (with a ``ValueError`` naming it), and copies every weight. The tests check the logits of
the converted model against transformers' with every parameter randomised.

``transformers`` is imported lazily: the companion works without it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from companion.models.decoder import Decoder, DecoderConfig

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


def _rope_base(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"rope_type {rope_type!r} is not supported yet (only 'default'); "
                         "RoPE scalings arrive with the context-extension chapter")
    base = params.get("rope_theta", getattr(config, "rope_theta", None))
    if base is None:
        raise ValueError("the config has no rope_theta")
    return float(base)


@register("LlamaForCausalLM")
@torch.no_grad()
def _from_llama(model: nn.Module) -> Decoder:
    c = model.config
    if c.hidden_act != "silu":
        raise ValueError(f"only hidden_act='silu' (SwiGLU) is supported, got {c.hidden_act!r}")
    if getattr(c, "pretraining_tp", 1) not in (None, 1):
        raise ValueError("pretraining_tp != 1 is not supported")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    config = DecoderConfig(
        vocab_size=c.vocab_size, width=c.hidden_size, n_layers=c.num_hidden_layers,
        n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads, head_dim=head_dim,
        ffn="swiglu", ffn_hidden=c.intermediate_size, norm="rmsnorm", norm_eps=c.rms_norm_eps,
        norm_position="pre", positions="rope", rope_base=_rope_base(c),
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
