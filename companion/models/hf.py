"""Converters from Hugging Face transformers models to the companion's :class:`Decoder` (and patch encoder).

``from_hf(model)`` is the one entry point; it dispatches on the model's class name to a converter
registered in :data:`CONVERTERS`: ``LlamaForCausalLM``; ``MixtralForCausalLM`` (every feed-forward a
mixture of experts, :mod:`companion.nn.moe`; optional sliding window); ``DeepseekV3ForCausalLM``
(multi-head latent attention, :mod:`companion.nn.latent_attention`, in every layer; dense SwiGLU
feed-forwards in the first ``first_k_dense_replace`` layers, then DeepSeek-V3's mixture of experts
with sigmoid routing, selection bias, group-limited routing and shared experts);
``MambaForCausalLM`` and ``Mamba2ForCausalLM`` (state space models, :mod:`companion.nn.mamba`,
:mod:`companion.nn.mamba2`: every block a mixer with no feed-forward, no positions); and, for
images, ``ViTModel`` and ``ViTForImageClassification`` (to a
:class:`~companion.models.vit.PatchEncoder`, chapter 8). Each converter maps the configuration
field by field, refuses what the companion cannot reproduce exactly (with a ``ValueError`` naming
it), and copies every weight. RoPE's scalings
(``config.rope_parameters``) map to :class:`~companion.nn.rope_scaling.RopeScaling` through
:func:`rope_from_config`. The tests check the logits of the converted model against transformers'
(the ViT's last hidden states) with every parameter randomised.

``transformers`` is imported lazily: the companion works without it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from companion.models.decoder import Decoder, DecoderConfig
from companion.models.vit import PatchEncoder, PatchEncoderConfig
from companion.nn.latent_attention import LatentShape, latent_attention_from_hf
from companion.nn.mamba import MambaShape
from companion.nn.moe import moe_from_hf
from companion.nn.rope_scaling import RopeScaling

CONVERTERS: dict[str, Callable[[nn.Module], nn.Module]] = {}


def register(*class_names: str):
    """Register a converter for Hugging Face model classes with these names."""

    def wrap(fn: Callable[[nn.Module], nn.Module]) -> Callable[[nn.Module], nn.Module]:
        for name in class_names:
            CONVERTERS[name] = fn
        return fn

    return wrap


def from_hf(model: nn.Module) -> Decoder | PatchEncoder:
    """A companion model with the same configuration and weights as ``model``.

    Supported: ``LlamaForCausalLM``, ``MixtralForCausalLM``, ``DeepseekV3ForCausalLM``,
    ``MambaForCausalLM``, ``Mamba2ForCausalLM`` (to a :class:`Decoder`), ``ViTModel`` and
    ``ViTForImageClassification`` (to a :class:`~companion.models.vit.PatchEncoder`), and any class
    registered in :data:`CONVERTERS`. The result is in eval mode, on the same device and in the same
    dtype as ``model`` (DeepSeek-V3's ``e_score_correction_bias`` stays float32).
    """
    name = type(model).__name__
    if name not in CONVERTERS:
        raise ValueError(f"from_hf does not know {name}; supported: {sorted(CONVERTERS)}")
    converted = CONVERTERS[name](model)
    param = next(model.parameters())
    converted = converted.to(device=param.device, dtype=param.dtype).eval()
    for module in converted.modules():  # DeepSeek-V3's selection bias stays float32, as in transformers
        if getattr(module, "e_score_correction_bias", None) is not None:
            module.e_score_correction_bias = module.e_score_correction_bias.float()
    return converted


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


def _refuse_training_only(config, *names: str) -> None:
    """Refuse options that act only in training mode (noise, dropout), which the companion lacks."""
    for name in names:
        value = getattr(config, name, 0) or 0
        if value != 0:
            raise ValueError(f"{name}={value!r} is not supported (only 0): the companion's decoder has no "
                             f"{name.replace('_', ' ')}")


def _copy_attention(mixer: nn.Module, attn: nn.Module, bias: bool) -> None:
    """Llama-style ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` into :class:`Attention`'s ``qkv`` and ``out``."""
    mixer.qkv.weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
    if bias:
        mixer.qkv.bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        mixer.out.bias.copy_(attn.o_proj.bias)
    mixer.out.weight.copy_(attn.o_proj.weight)


def _copy_embeddings_and_norms(decoder: Decoder, model: nn.Module) -> None:
    """Token embeddings, each layer's two RMSNorms, the final norm and (untied) the output projection."""
    hf = model.model
    decoder.embed.weight.copy_(hf.embed_tokens.weight)
    for block, layer in zip(decoder.blocks, hf.layers):
        block.norm_1.weight.copy_(layer.input_layernorm.weight)
        block.norm_2.weight.copy_(layer.post_attention_layernorm.weight)
    decoder.norm.weight.copy_(hf.norm.weight)
    if not decoder.config.tie_embeddings:
        decoder.lm_head.weight.copy_(model.lm_head.weight)


def _load_module(mine: nn.Module, converted: nn.Module) -> None:
    """Load a converted part into the decoder's own (same structure, checked by a strict load), eps included."""
    if getattr(mine, "shape", None) != getattr(converted, "shape", None):  # MoEShape / LatentShape: same policy
        raise ValueError(f"layers differ in shape: {getattr(converted, 'shape', None)} against the decoder's "
                         f"{getattr(mine, 'shape', None)}")
    mine.load_state_dict(converted.state_dict(), strict=True)
    theirs = dict(converted.named_modules())
    for name, module in mine.named_modules():
        if hasattr(module, "eps"):
            module.eps = theirs[name].eps


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
    for block, layer in zip(decoder.blocks, model.model.layers):
        _copy_attention(block.mixer, layer.self_attn, config.attention_bias)
        block.ffn.load_separate(layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
    _copy_embeddings_and_norms(decoder, model)
    return decoder


@register("MixtralForCausalLM")
@torch.no_grad()
def _from_mixtral(model: nn.Module) -> Decoder:
    """Mixtral (Jiang et al. 2024): a Llama/Mistral decoder whose every feed-forward is a mixture of experts.

    Grouped-query attention with RoPE (any scaling :func:`rope_from_config` reads) and Mistral's
    ``sliding_window`` (the decoder's ``window``: the ``W`` keys ``i - W < j <= i``, as transformers'
    mask); softmax top-k routing renormalised over the chosen experts (:func:`~companion.nn.moe.moe_from_hf`).
    Refused: ``hidden_act`` other than silu, a nonzero ``router_jitter_noise`` or ``attention_dropout``.
    """
    c = model.config
    if c.hidden_act != "silu":
        raise ValueError(f"only hidden_act='silu' (SwiGLU experts) is supported, got {c.hidden_act!r}")
    _refuse_training_only(c, "router_jitter_noise", "attention_dropout")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rope_base, rope_scaling = rope_from_config(c)
    experts = [moe_from_hf(layer.mlp, c) for layer in model.model.layers]
    config = DecoderConfig(
        vocab_size=c.vocab_size, width=c.hidden_size, n_layers=c.num_hidden_layers,
        n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads, head_dim=head_dim,
        norm="rmsnorm", norm_eps=c.rms_norm_eps, norm_position="pre", positions="rope", rope_base=rope_base,
        rope_scaling=rope_scaling, max_positions=c.max_position_embeddings, window=getattr(c, "sliding_window", None),
        tie_embeddings=bool(c.tie_word_embeddings), feedforwards=("moe",) * c.num_hidden_layers,
        moe=experts[0].shape,
    )
    decoder = Decoder(config)
    for block, layer, moe in zip(decoder.blocks, model.model.layers, experts):
        _copy_attention(block.mixer, layer.self_attn, bias=False)
        _load_module(block.ffn, moe)
    _copy_embeddings_and_norms(decoder, model)
    return decoder


@register("DeepseekV3ForCausalLM")
@torch.no_grad()
def _from_deepseek_v3(model: nn.Module) -> Decoder:
    """DeepSeek-V3 (2024): multi-head latent attention in every layer; dense SwiGLU feed-forwards (hidden
    ``intermediate_size``) in the first ``first_k_dense_replace`` layers, then mixtures of experts.

    The experts (hidden ``moe_intermediate_size``) are routed by sigmoid scores plus the selection-only
    ``e_score_correction_bias``, limited to the ``topk_group`` best of ``n_group`` groups, with the
    gates renormalised (``norm_topk_prob``) and multiplied by ``routed_scaling_factor``; the
    ``n_shared_experts`` shared experts see every token (:func:`~companion.nn.moe.moe_from_hf`).
    Latent attention takes the interleaved rotary layout (``rope_interleave``) and YaRN's
    ``mscale_all_dim`` factor on the softmax scale (:func:`~companion.nn.latent_attention.latent_attention_from_hf`).
    The multi-token-prediction modules (``num_mtp_layers``) are not part of transformers' forward
    and are not converted. Refused (``ValueError`` naming them): ``hidden_act`` other than silu,
    ``num_key_value_heads != num_attention_heads``, a nonzero ``attention_dropout``, an invalid
    ``first_k_dense_replace``, routing sizes :class:`~companion.nn.moe.MoEShape` rejects.
    """
    c = model.config
    if c.hidden_act != "silu":
        raise ValueError(f"only hidden_act='silu' (SwiGLU) is supported, got {c.hidden_act!r}")
    _refuse_training_only(c, "attention_dropout")
    first_dense = c.first_k_dense_replace
    if isinstance(first_dense, bool) or not isinstance(first_dense, int) or first_dense < 0:
        raise ValueError(f"first_k_dense_replace must be an int >= 0, got {first_dense!r}")
    n_layers = c.num_hidden_layers
    first_dense = min(first_dense, n_layers)
    if c.num_key_value_heads != c.num_attention_heads:
        raise ValueError(f"MLA gives every head its own key and value: expected num_key_value_heads == "
                         f"num_attention_heads ({c.num_attention_heads}), got {c.num_key_value_heads}")
    rope_base, rope_scaling = rope_from_config(c)
    latent = LatentShape(c.kv_lora_rank, c.q_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim)
    layers = model.model.layers
    experts = [moe_from_hf(layer.mlp, c) for layer in layers[first_dense:]]
    config = DecoderConfig(
        vocab_size=c.vocab_size, width=c.hidden_size, n_layers=n_layers, n_heads=c.num_attention_heads,
        ffn="swiglu", ffn_hidden=c.intermediate_size, norm="rmsnorm", norm_eps=c.rms_norm_eps, norm_position="pre",
        positions="rope", rope_base=rope_base, rope_scaling=rope_scaling, max_positions=c.max_position_embeddings,
        tie_embeddings=bool(c.tie_word_embeddings), attention_bias=bool(c.attention_bias),
        mixers=("latent_attention",) * n_layers, latent=latent,
        feedforwards=("swiglu",) * first_dense + ("moe",) * (n_layers - first_dense),
        moe=experts[0].shape if experts else None,
    )
    decoder = Decoder(config)
    for index, (block, layer) in enumerate(zip(decoder.blocks, layers)):
        _load_module(block.mixer, latent_attention_from_hf(layer.self_attn, c, rope=decoder.rope, layer_index=index))
        if index < first_dense:
            block.ffn.load_separate(layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
        else:
            _load_module(block.ffn, experts[index - first_dense])
    _copy_embeddings_and_norms(decoder, model)
    return decoder


# ------------------------------------------------------------------------------------------------
# State space models: Mamba and Mamba-2 (chapter 7)
# ------------------------------------------------------------------------------------------------

def _refuse_ssm_options(model: nn.Module) -> None:
    """What a Mamba or Mamba-2 checkpoint may ask that the decoder does not do (``ValueError`` naming it)."""
    c = model.config
    if c.hidden_act != "silu":
        raise ValueError(f"only hidden_act='silu' (the activation after the convolution) is supported, "
                         f"got {c.hidden_act!r}")
    dtype = next(model.parameters()).dtype
    if getattr(c, "residual_in_fp32", False) and dtype != torch.float32:
        raise ValueError(f"residual_in_fp32=True in a {dtype} model is not supported: the decoder keeps its "
                         "residual stream in the model's dtype (convert the model to float32, where the "
                         "option changes nothing, or set residual_in_fp32=False)")


def _copy_ssm_model(decoder: Decoder, model: nn.Module) -> None:
    """Embeddings, each block's norm and mixer (same parameter names: a strict load), final norm, output."""
    hf = model.backbone
    decoder.embed.weight.copy_(hf.embeddings.weight)
    for block, layer in zip(decoder.blocks, hf.layers):
        block.norm_1.weight.copy_(layer.norm.weight)
        block.norm_1.eps = layer.norm.variance_epsilon
        block.mixer.load_state_dict(layer.mixer.state_dict(), strict=True)
    decoder.norm.weight.copy_(hf.norm_f.weight)
    decoder.norm.eps = hf.norm_f.variance_epsilon
    if not decoder.config.tie_embeddings:
        decoder.lm_head.weight.copy_(model.lm_head.weight)


def _ssm_decoder(c, kind: str, shape: MambaShape) -> Decoder:
    """A decoder of ``num_hidden_layers`` blocks ``x + mixer(RMSNorm(x))`` of ``kind``, no positions, no MLP."""
    n = c.num_hidden_layers
    return Decoder(DecoderConfig(
        vocab_size=c.vocab_size, width=c.hidden_size, n_layers=n, n_heads=1, norm="rmsnorm",
        norm_eps=c.layer_norm_epsilon, norm_position="pre", positions="none",
        tie_embeddings=bool(c.tie_word_embeddings), mixers=(kind,) * n, feedforwards=("none",) * n, ssm=shape))


@register("MambaForCausalLM")
@torch.no_grad()
def _from_mamba(model: nn.Module) -> Decoder:
    """Mamba (Gu and Dao 2023): every block ``x + MambaMixer(RMSNorm(x))``, no positions, no feed-forward.

    ``state_size``, ``conv_kernel``, ``expand``, ``time_step_rank``, ``use_conv_bias`` and ``use_bias``
    map to a :class:`~companion.nn.mamba.MambaShape`; the mixer's parameters are transformers' own
    names (a strict ``load_state_dict``). Accepted and without effect here: ``use_mambapy`` and
    ``use_associative_scan`` (other algorithms for the same scan), ``rescale_prenorm_residual`` and
    the ``time_step_{min,max,floor,scale,init_scheme}`` fields (initialisation only),
    ``residual_in_fp32`` in a float32 model. Refused (``ValueError`` naming them): ``hidden_act``
    other than silu; ``residual_in_fp32=True`` in a model of another dtype.
    """
    c = model.config
    _refuse_ssm_options(model)
    shape = MambaShape(d_state=c.state_size, d_conv=c.conv_kernel, expand=c.expand, dt_rank=int(c.time_step_rank),
                       conv_bias=bool(c.use_conv_bias), bias=bool(c.use_bias))
    if shape.d_inner(c.hidden_size) != c.intermediate_size:
        raise ValueError(f"intermediate_size ({c.intermediate_size}) must be expand * hidden_size "
                         f"({c.expand} * {c.hidden_size})")
    decoder = _ssm_decoder(c, "mamba", shape)
    _copy_ssm_model(decoder, model)
    return decoder


@register("Mamba2ForCausalLM")
@torch.no_grad()
def _from_mamba2(model: nn.Module) -> Decoder:
    """Mamba-2 (Dao and Gu 2024): every block ``x + Mamba2Mixer(RMSNorm(x))``, no positions, no feed-forward.

    ``state_size``, ``conv_kernel``, ``expand``, ``head_dim`` (``num_heads = expand * hidden_size /
    head_dim``), ``n_groups``, ``chunk_size``, ``use_conv_bias`` and ``use_bias`` map to a
    :class:`~companion.nn.mamba.MambaShape`; ``layer_norm_epsilon`` is the eps of every RMSNorm,
    the gated one included. Accepted and without effect: ``time_step_rank`` (unused by Mamba-2),
    ``rescale_prenorm_residual`` and ``time_step_{min,max,floor}`` (initialisation only),
    ``residual_in_fp32`` in a float32 model. Refused (``ValueError`` naming them): ``hidden_act``
    other than silu; ``residual_in_fp32=True`` in a model of another dtype; a ``time_step_limit``
    other than ``(0, inf)`` (transformers clamps ``dt`` in its chunked path but not in its
    one-token step, so a model with a limit does not decode as it prefills); ``n_groups`` that does
    not divide ``num_heads``.
    """
    c = model.config
    _refuse_ssm_options(model)
    limit = tuple(float(v) for v in c.time_step_limit)
    if limit != (0.0, float("inf")):
        raise ValueError(f"time_step_limit={tuple(c.time_step_limit)!r} is not supported (only (0.0, inf)): "
                         "transformers clamps dt when it prefills but not when it decodes one token")
    shape = MambaShape(d_state=c.state_size, d_conv=c.conv_kernel, expand=c.expand, head_dim=c.head_dim,
                       n_groups=c.n_groups, chunk_size=c.chunk_size, conv_bias=bool(c.use_conv_bias),
                       bias=bool(c.use_bias))
    shape.check_mamba2(c.hidden_size)
    if shape.n_heads(c.hidden_size) != c.num_heads:
        raise ValueError(f"num_heads ({c.num_heads}) must be expand * hidden_size / head_dim "
                         f"({c.expand} * {c.hidden_size} / {c.head_dim})")
    decoder = _ssm_decoder(c, "mamba2", shape)
    _copy_ssm_model(decoder, model)
    return decoder


# ------------------------------------------------------------------------------------------------
# Vision transformers: ViT (chapter 8)
# ------------------------------------------------------------------------------------------------

@register("ViTModel", "ViTForImageClassification")
@torch.no_grad()
def _from_vit(model: nn.Module) -> PatchEncoder:
    """ViT (Dosovitskiy et al. 2021): a :class:`~companion.models.vit.PatchEncoder` with the same weights.

    ``image_size``, ``patch_size`` (ints or pairs), ``num_channels``, ``hidden_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``, ``layer_norm_eps`` and
    ``qkv_bias`` map to a :class:`~companion.models.vit.PatchEncoderConfig` (with a class token);
    the separate query, key and value projections become the attention's one ``qkv`` matrix.
    ``ViTForImageClassification`` adds its ``classifier`` as the head (``pooling="cls"``, the final
    [CLS] vector, as transformers reads it; ``num_labels=0``, transformers' identity head, gives
    no head). Not converted, since ``last_hidden_state`` does not depend on them: ``ViTModel``'s
    pooler (``pooler_output``, a dense layer and tanh on [CLS]) and the mask token of masked image
    modelling. Refused (``ValueError`` naming them): ``hidden_act`` other than ``"gelu"`` (the exact
    erf GELU), nonzero ``hidden_dropout_prob`` or ``attention_probs_dropout_prob``.
    """
    c = model.config
    if c.hidden_act != "gelu":
        raise ValueError(f"only hidden_act='gelu' (the exact GELU of the companion's GeluMLP) is supported, "
                         f"got {c.hidden_act!r}")
    _refuse_training_only(c, "hidden_dropout_prob", "attention_probs_dropout_prob")
    classifier = type(model).__name__ == "ViTForImageClassification"
    vit = model.vit if classifier else model
    head = model.classifier if classifier and isinstance(model.classifier, nn.Linear) else None

    def size(value) -> int | tuple[int, int]:
        return value if isinstance(value, int) else tuple(value)

    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    config = PatchEncoderConfig(
        image_size=size(c.image_size), patch_size=size(c.patch_size), channels=c.num_channels,
        width=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads, head_dim=head_dim,
        mlp_hidden=c.intermediate_size, norm_eps=float(c.layer_norm_eps), class_token=True, pooling="cls",
        n_classes=None if head is None else head.out_features, qkv_bias=bool(c.qkv_bias))
    encoder = PatchEncoder(config)
    embeddings = vit.embeddings
    encoder.patch_embed.load_state_dict(embeddings.patch_embeddings.projection.state_dict(), strict=True)
    encoder.cls_token.copy_(embeddings.cls_token)
    encoder.positions.table.weight.copy_(embeddings.position_embeddings[0])
    for block, layer in zip(encoder.blocks, vit.layers, strict=True):
        attn, mixer = layer.attention, block.mixer
        mixer.qkv.weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        if config.qkv_bias:
            mixer.qkv.bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        mixer.out.load_state_dict(attn.o_proj.state_dict(), strict=True)
        block.norm_1.load_state_dict(layer.layernorm_before.state_dict(), strict=True)
        block.norm_2.load_state_dict(layer.layernorm_after.state_dict(), strict=True)
        block.ffn.up.load_state_dict(layer.mlp.fc1.state_dict(), strict=True)
        block.ffn.down.load_state_dict(layer.mlp.fc2.state_dict(), strict=True)
    encoder.norm.load_state_dict(vit.layernorm.state_dict(), strict=True)
    if head is not None:
        encoder.head.load_state_dict(head.state_dict(), strict=True)
    return encoder
