"""companion.models.published: cache bytes per token of published models, against hand-worked values."""

from __future__ import annotations

import pytest
import torch

from companion.models import Decoder, DecoderConfig
from companion.models.published import (KINDS, PUBLISHED, PublishedAttention, attention_kind, cache_bytes_per_token,
                                        cache_elements_per_layer, equivalent_kv_heads, published)
from companion.nn import LatentShape

KIB = 1024


def test_llama_2_7b_caches_half_a_mebibyte_per_token_in_bf16():
    # 32 layers x (a key and a value) x 32 heads x 128 numbers x 2 bytes
    entry = published("Llama-2-7B")
    assert cache_elements_per_layer(entry) == 2 * 32 * 128 == 8192
    assert cache_bytes_per_token(entry) == 32 * 2 * 32 * 128 * 2 == 512 * KIB
    assert cache_bytes_per_token(entry, bytes_per_element=4) == 1024 * KIB


def test_deepseek_v3_caches_the_latent_and_the_rope_key():
    # 61 layers x (512 latent + 64 rotated key) x 2 bytes, against 128 heads of 128 for a key and a value
    entry = published("DeepSeek-V3")
    assert cache_elements_per_layer(entry) == 512 + 64
    assert cache_bytes_per_token(entry) == (512 + 64) * 61 * 2 == 70_272
    assert equivalent_kv_heads(entry) == 2.25  # DeepSeek-V2 section 2.1.4: "GQA with only 2.25 groups"
    mha = 61 * 2 * 128 * 128 * 2
    assert mha / cache_bytes_per_token(entry) == pytest.approx(56.9, abs=0.05)


def test_hand_worked_values_for_the_other_entries():
    expected_kib = {"Llama-2-70B": 320, "Llama-3-8B": 128, "Mistral-7B": 128, "Qwen2.5-7B": 56, "Falcon-7B": 8,
                    "DeepSeek-V2": 67.5, "DeepSeek-V2-Lite": 30.375}
    for name, kib in expected_kib.items():
        assert cache_bytes_per_token(published(name)) == kib * KIB, name


def test_every_entry_kind_agrees_with_its_head_counts():
    names = [e.name for e in PUBLISHED]
    assert len(set(names)) == len(names)
    assert {e.kind for e in PUBLISHED} == set(KINDS)
    for e in PUBLISHED:
        assert e.source.startswith("https://huggingface.co/") and e.source.count("config.json") == 1, e.name
        if e.kind == "MLA":
            assert e.latent is not None and e.kv_heads == e.heads
        else:
            assert e.latent is None and e.heads % e.kv_heads == 0
            assert {"MHA": e.kv_heads == e.heads, "MQA": e.kv_heads == 1,
                    "GQA": 1 < e.kv_heads < e.heads}[e.kind], e.name
            assert equivalent_kv_heads(e) == e.kv_heads
        assert attention_kind(e.heads, e.kv_heads, e.latent) == e.kind
    for name in ("DeepSeek-V2", "DeepSeek-V3"):
        assert published(name).latent == LatentShape(512, 1536, 128, 64, 128)
    assert published("DeepSeek-V2").layers == 60 and published("DeepSeek-V3").layers == 61


def test_agrees_with_the_kv_cache_widget_for_the_models_both_list():
    kv_cache = pytest.importorskip("companion.widgets.kv_cache")
    mine = {e.name: e for e in PUBLISHED}
    shared = [m for m in kv_cache.MODELS if m["name"] in mine]
    assert len(shared) >= 3
    for m in shared:
        e = mine[m["name"]]
        assert (e.layers, e.heads, e.kv_heads, e.head_dim) == (m["layers"], m["heads"], m["kv_heads"], m["head_dim"])
        for size in (1, 2, 4):
            assert cache_bytes_per_token(e, size) == kv_cache.kv_bytes_per_token(e.layers, e.kv_heads, e.head_dim, size)


@pytest.mark.parametrize("kind", ["attention", "latent_attention"])
def test_the_formula_is_what_a_decoder_cache_allocates(kind):
    """A scaled-down entry of each kind: the decoder's KVCache holds exactly the formula's bytes."""
    latent = LatentShape(12, None, 8, 4, 8) if kind == "latent_attention" else None
    entry = PublishedAttention("small", "MLA" if latent else "GQA", layers=3, heads=4, kv_heads=2, head_dim=8,
                               width=32, source="https://huggingface.co/none/config.json", latent=latent)
    model = Decoder(DecoderConfig(vocab_size=20, width=32, n_layers=3, n_heads=4, n_kv_heads=2,
                                  mixers=(kind,) * 3, latent=latent))
    cache = model.new_cache(1, 7)
    with torch.no_grad():
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache)
    assert cache.nbytes() == 7 * cache_bytes_per_token(entry, bytes_per_element=4)


@pytest.mark.parametrize("make, message", [
    (lambda: PublishedAttention("x", "GQA", 2, 4, 4, 8, 32, "s"), "make it 'MHA'"),
    (lambda: PublishedAttention("x", "MQA", 2, 4, 2, 8, 32, "s"), "make it 'GQA'"),
    (lambda: PublishedAttention("x", "MHA", 2, 4, 4, 8, 32, "s", latent=LatentShape(8, None, 4, 4, 4)), "'MLA'"),
    (lambda: PublishedAttention("x", "MHA", 0, 4, 4, 8, 32, "s"), "layers"),
    (lambda: PublishedAttention("x", "GQA", 2, 4, 3, 8, 32, "s"), "kv_heads dividing heads"),
    (lambda: PublishedAttention("x", "SWA", 2, 4, 4, 8, 32, "s"), "kind"),
    (lambda: cache_bytes_per_token(PUBLISHED[0], 0), "bytes_per_element"),
    (lambda: cache_elements_per_layer("Llama-2-7B"), "PublishedAttention"),
    (lambda: published("GPT-5"), "Llama-2-7B"),
])
def test_bad_entries_and_arguments_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()
