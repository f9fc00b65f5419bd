"""Attention shapes of published models, and the bytes their key-value caches take per token.

A decoder that generates keeps, for every past token and every layer, what later queries need:

==========  =========================================  ===========================================
kind        cached per token per layer                 the model's config
==========  =========================================  ===========================================
MHA         ``2 * n_h * d_h`` (a key and a value per   ``num_key_value_heads == num_attention_heads``
            head; Vaswani et al. 2017)
GQA         ``2 * n_g * d_h`` (one per group of        ``1 < num_key_value_heads < heads``
            heads; Ainslie et al. 2023)
MQA         ``2 * d_h`` (one for all heads;            ``num_key_value_heads == 1``
            Shazeer 2019)
MLA         ``d_c + d_h^R`` (a latent and a shared     ``kv_lora_rank``, ``qk_rope_head_dim``
            rotated key; DeepSeek-AI 2024)
==========  =========================================  ===========================================

(:func:`cache_elements_per_layer`; DeepSeek-V2, arXiv 2405.04434, Table 1, which also writes MLA's
``d_c + d_h^R = 4 d_h + d_h / 2`` as GQA with 2.25 groups: :func:`equivalent_kv_heads`.) Times the
layers and the bytes per number, that is the cache of one token of one sequence
(:func:`cache_bytes_per_token`); a context of ``T`` tokens for a batch of ``B`` takes ``B * T``
times as much. companion.widgets.kv_cache computes the same for MHA/GQA/MQA in the browser.

The numbers in :data:`PUBLISHED` are written in from each model's ``config.json`` on the Hugging
Face Hub (named in ``source``; nothing is downloaded): ``num_hidden_layers``,
``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` (``hidden_size /
num_attention_heads`` where the config has none) and, for MLA, ``kv_lora_rank``, ``q_lora_rank``,
``qk_nope_head_dim``, ``qk_rope_head_dim``, ``v_head_dim``. For an MLA entry, ``kv_heads`` and
``head_dim`` are those of the multi-head attention it replaces (every head has its own key and
value, of the paper's ``d_h = qk_nope_head_dim``), used by :func:`equivalent_kv_heads` only.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from companion.nn.latent_attention import LatentShape

__all__ = ["KINDS", "PUBLISHED", "PublishedAttention", "attention_kind", "cache_bytes_per_token",
           "cache_elements_per_layer", "equivalent_kv_heads", "published"]

KINDS = ("MHA", "GQA", "MQA", "MLA")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def attention_kind(heads: int, kv_heads: int, latent: LatentShape | None = None) -> str:
    """``"MLA"`` with a latent; else ``"MHA"`` (``kv_heads == heads``), ``"MQA"`` (``kv_heads == 1 < heads``)
    or ``"GQA"`` (``kv_heads`` between, dividing ``heads``)."""
    if not (_is_int(heads) and _is_int(kv_heads) and 1 <= kv_heads <= heads and heads % kv_heads == 0):
        raise ValueError(f"expected heads and kv_heads to be positive ints with kv_heads dividing heads, "
                         f"got {heads!r} and {kv_heads!r}")
    if latent is not None:
        return "MLA"
    if kv_heads == heads:
        return "MHA"
    return "MQA" if kv_heads == 1 else "GQA"


@dataclass(frozen=True)
class PublishedAttention:
    """One published model's attention shape (see the module docstring for what each field is)."""

    name: str
    kind: str                          # as the model's paper or card describes it: MHA, GQA, MQA or MLA
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    width: int
    source: str
    latent: LatentShape | None = None  # MLA only

    def __post_init__(self) -> None:
        for name in ("layers", "heads", "kv_heads", "head_dim", "width"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{self.name}: expected {name} to be a positive int, got {value!r}")
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: expected kind to be one of {KINDS}, got {self.kind!r}")
        if self.latent is not None and not isinstance(self.latent, LatentShape):
            raise ValueError(f"{self.name}: expected latent to be a LatentShape or None, "
                             f"got {type(self.latent).__name__}")
        implied = attention_kind(self.heads, self.kv_heads, self.latent)
        if implied != self.kind:
            raise ValueError(f"{self.name}: kind {self.kind!r} disagrees with heads={self.heads}, "
                             f"kv_heads={self.kv_heads}, latent={self.latent}, which make it {implied!r}")


def cache_elements_per_layer(entry: PublishedAttention) -> int:
    """Numbers cached per token per layer: ``2 * kv_heads * head_dim``, or ``kv_lora_rank + qk_rope_head_dim`` (MLA)."""
    if not isinstance(entry, PublishedAttention):
        raise ValueError(f"expected a PublishedAttention, got {type(entry).__name__}")
    if entry.latent is not None:
        return entry.latent.kv_lora_rank + entry.latent.qk_rope_head_dim
    return 2 * entry.kv_heads * entry.head_dim


def cache_bytes_per_token(entry: PublishedAttention, bytes_per_element: int = 2) -> int:
    """Bytes of cache for one token of one sequence, all layers: ``layers * elements per layer * bytes_per_element``.

    ``bytes_per_element``: 2 for bfloat16/float16 (the default), 4 for float32, 1 for 8-bit formats.
    """
    if not _is_int(bytes_per_element) or bytes_per_element < 1:
        raise ValueError(f"expected bytes_per_element to be a positive int, got {bytes_per_element!r}")
    return entry.layers * cache_elements_per_layer(entry) * bytes_per_element


def equivalent_kv_heads(entry: PublishedAttention) -> float:
    """The cache per layer in key-value heads of ``head_dim``: ``elements / (2 * head_dim)``.

    ``kv_heads`` for MHA/GQA/MQA; for DeepSeek-V2/V3, ``(512 + 64) / (2 * 128) = 2.25`` (the
    paper's GQA with 2.25 groups) against 128 heads of multi-head attention.
    """
    return cache_elements_per_layer(entry) / (2 * entry.head_dim)


def _hub(repo: str) -> str:
    return f"https://huggingface.co/{repo}/blob/main/config.json"


_DEEPSEEK = dict(kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)

PUBLISHED: tuple[PublishedAttention, ...] = (
    PublishedAttention("Llama-2-7B", "MHA", layers=32, heads=32, kv_heads=32, head_dim=128, width=4096,
                       source=_hub("meta-llama/Llama-2-7b-hf") + " (Touvron et al. 2023, Llama 2)"),
    PublishedAttention("Llama-2-70B", "GQA", layers=80, heads=64, kv_heads=8, head_dim=128, width=8192,
                       source=_hub("meta-llama/Llama-2-70b-hf") + " (Touvron et al. 2023, Llama 2)"),
    PublishedAttention("Llama-3-8B", "GQA", layers=32, heads=32, kv_heads=8, head_dim=128, width=4096,
                       source=_hub("meta-llama/Meta-Llama-3-8B") + " (Llama team 2024, The Llama 3 herd of models)"),
    PublishedAttention("Mistral-7B", "GQA", layers=32, heads=32, kv_heads=8, head_dim=128, width=4096,
                       source=_hub("mistralai/Mistral-7B-v0.1") + " (Jiang et al. 2023, Mistral 7B; its 4,096-token "
                              "sliding window caps the cache's length, not its size per token)"),
    PublishedAttention("Qwen2.5-7B", "GQA", layers=28, heads=28, kv_heads=4, head_dim=128, width=3584,
                       source=_hub("Qwen/Qwen2.5-7B") + " (Qwen team 2024, Qwen2.5 technical report)"),
    PublishedAttention("Falcon-7B", "MQA", layers=32, heads=71, kv_heads=1, head_dim=64, width=4544,
                       source=_hub("tiiuae/falcon-7b") + " (multi_query: true; Almazrouei et al. 2023, "
                              "The Falcon series of open language models)"),
    PublishedAttention("DeepSeek-V2-Lite", "MLA", layers=27, heads=16, kv_heads=16, head_dim=128, width=2048,
                       latent=LatentShape(q_lora_rank=None, **_DEEPSEEK),
                       source=_hub("deepseek-ai/DeepSeek-V2-Lite") + " (DeepSeek-AI 2024, arXiv 2405.04434)"),
    PublishedAttention("DeepSeek-V2", "MLA", layers=60, heads=128, kv_heads=128, head_dim=128, width=5120,
                       latent=LatentShape(q_lora_rank=1536, **_DEEPSEEK),
                       source=_hub("deepseek-ai/DeepSeek-V2") + " (DeepSeek-AI 2024, arXiv 2405.04434)"),
    PublishedAttention("DeepSeek-V3", "MLA", layers=61, heads=128, kv_heads=128, head_dim=128, width=7168,
                       latent=LatentShape(q_lora_rank=1536, **_DEEPSEEK),
                       source=_hub("deepseek-ai/DeepSeek-V3") + " (DeepSeek-AI 2024, arXiv 2412.19437)"),
)


def published(name: str) -> PublishedAttention:
    """The entry of :data:`PUBLISHED` called ``name``."""
    for entry in PUBLISHED:
        if entry.name == name:
            return entry
    raise ValueError(f"expected one of {[e.name for e in PUBLISHED]}, got {name!r}")
