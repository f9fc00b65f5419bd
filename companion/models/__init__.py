"""Assembled models: the decoder every chapter builds on, the patch encoder and captioner of chapter 8, their
converters, and chapter 1's models."""

from companion.models.captioner import (Captioner, CaptionerConfig, caption_batches, caption_exact_match,
                                        caption_loss)
from companion.models.classifiers import BagOfWordsClassifier, RecurrentClassifier
from companion.models.decoder import FEEDFORWARDS, MIXERS, Decoder, DecoderConfig, DecoderOutput
from companion.models.hf import from_hf, rope_from_config
from companion.models.published import (PUBLISHED, PublishedAttention, cache_bytes_per_token,
                                       cache_elements_per_layer, published)
from companion.models.sampling import filter_logits, sample_next
from companion.models.vit import PatchEncoder, PatchEncoderConfig, PatchEncoderOutput, patchify, unpatchify
from companion.models.window_lm import WindowLM
from companion.nn.mamba import MambaShape
from companion.nn.rope_scaling import RopeScaling

__all__ = [
    "BagOfWordsClassifier", "Captioner", "CaptionerConfig", "Decoder", "DecoderConfig", "DecoderOutput",
    "FEEDFORWARDS", "MIXERS", "MambaShape", "PUBLISHED", "PatchEncoder", "PatchEncoderConfig", "PatchEncoderOutput",
    "PublishedAttention", "RecurrentClassifier", "RopeScaling", "WindowLM", "cache_bytes_per_token",
    "cache_elements_per_layer", "caption_batches", "caption_exact_match", "caption_loss", "filter_logits", "from_hf",
    "patchify", "published", "rope_from_config", "sample_next", "unpatchify",
]
