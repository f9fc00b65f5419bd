"""Data for every experiment: the corpus, the tokenizer, synthetic tasks, batching, and small image,
audio and captioned-scene sets for the multimodal chapter.

Everything here is on every machine already (Python's own standard library and ``pydoc_data``,
scikit-learn's bundled digits) or generated; nothing is downloaded.
"""

from companion.data.audio import AUDIO_CLASSES, AUDIO_FAMILIES, audio_task, spectrogram, spectrogram_frequencies
from companion.data.batches import as_token_tensor, lm_batch, lm_windows
from companion.data.bpe import BPETokenizer
from companion.data.corpus import Corpus, load_corpus
from companion.data.images import load_digits_images, train_validation_split
from companion.data.scenes import (CAPTION_WORDS, COLOURS, SHAPES, SceneObject, ShapeScenes, decode_captions,
                                   encode_captions, shape_scenes)
from companion.data.synthetic import (associative_recall_task, induction_task, order_task, pair_lookup_task, passkey_task,
                                      recall_task, selective_copy_task)
from companion.data.token_kinds import KINDS, character_kinds, token_kinds

__all__ = [
    "AUDIO_CLASSES", "AUDIO_FAMILIES", "BPETokenizer", "CAPTION_WORDS", "COLOURS", "Corpus", "KINDS", "SHAPES",
    "SceneObject", "ShapeScenes", "as_token_tensor", "associative_recall_task", "audio_task", "character_kinds",
    "decode_captions", "encode_captions", "induction_task", "lm_batch", "lm_windows", "load_corpus",
    "load_digits_images", "order_task", "pair_lookup_task", "passkey_task", "recall_task", "selective_copy_task",
    "shape_scenes", "spectrogram", "spectrogram_frequencies", "token_kinds", "train_validation_split",
]
