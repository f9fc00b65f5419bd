"""The parts that models are assembled from: sequence mixers (attention variants, state space layers),
feed-forwards (dense and mixture of experts), norms, positions."""

from companion.nn.attention import Attention
from companion.nn.cache import KVCache
from companion.nn.expert_parallel import ExchangeBytes, ExpertParallelMoE
from companion.nn.feedforward import GeluMLP, SwiGLU
from companion.nn.latent_attention import (LatentAttention, LatentShape, latent_attention_from_hf,
                                            latent_softmax_scale)
from companion.nn.linear_attention import (LinearAttention, linear_attention_chunked,
                                           linear_attention_parallel, linear_attention_recurrent)
from companion.nn.mamba import MambaMixer, MambaShape, causal_conv1d
from companion.nn.mamba2 import GatedRMSNorm, Mamba2Mixer, segment_sum, ssd_chunked
from companion.nn.moe import (MoE, MoELoad, MoEShape, Routing, moe_aux_loss, moe_dispatch, moe_from_hf, moe_layers,
                              moe_loop_reference, update_moe_biases)
from companion.nn.norms import LayerNorm, RMSNorm
from companion.nn.positions import (LearnedPositions, RotaryEmbedding, SinusoidalPositions, alibi_slopes,
                                    apply_rotary)
from companion.nn.recurrent import Recurrent
from companion.nn.rope_scaling import RopeScaling, rope_frequencies
from companion.nn.ssm import (S4DLayer, causal_convolution_fft, discretize_bilinear, discretize_zoh, ssm_convolutional,
                              ssm_kernel, ssm_recurrent)
from companion.nn.router import (capacity_mask, expert_capacity, expert_choice, group_limited_mask,
                                 load_balancing_loss, router_probabilities, router_scores, router_z_loss,
                                 token_choice)

__all__ = [
    "Attention", "ExchangeBytes", "ExpertParallelMoE", "GeluMLP", "KVCache", "LatentAttention", "LatentShape", "LayerNorm", "LearnedPositions",
    "RMSNorm", "Recurrent",
    "RopeScaling", "RotaryEmbedding", "SinusoidalPositions", "SwiGLU", "alibi_slopes", "apply_rotary",
    "latent_attention_from_hf", "latent_softmax_scale", "LinearAttention", "linear_attention_chunked",
    "linear_attention_parallel", "linear_attention_recurrent", "rope_frequencies",
    "MoE", "MoELoad", "MoEShape", "Routing", "moe_aux_loss", "moe_dispatch", "moe_from_hf", "moe_layers",
    "moe_loop_reference", "update_moe_biases", "capacity_mask", "expert_capacity", "expert_choice",
    "group_limited_mask", "load_balancing_loss", "router_probabilities", "router_scores", "router_z_loss",
    "token_choice", "S4DLayer", "causal_convolution_fft", "discretize_bilinear", "discretize_zoh",
    "ssm_convolutional", "ssm_kernel", "ssm_recurrent", "GatedRMSNorm", "Mamba2Mixer", "MambaMixer", "MambaShape",
    "causal_conv1d", "segment_sum", "ssd_chunked",
]
