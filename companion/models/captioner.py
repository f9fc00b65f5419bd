"""An image captioner (chapter 8): image patches, projected to the decoder's width, as prefix tokens.

LLaVA (Liu et al. 2023, "Visual Instruction Tuning"; LLaVA-1.5: Liu et al. 2024, "Improved Baselines
with Visual Instruction Tuning") joins a vision encoder and a language model with a small projector
and nothing else: the encoder's patch features become the first tokens of the language model's
input, and the language model is trained to write the text that follows::

    H_v = PatchEncoder(image)                      (batch, N, vision_width)   N patches, no [CLS]
    Z_v = projector(H_v)                           (batch, N, width)          Linear, or Linear-GELU-Linear
    x   = [Z_v ; embed(<bos> w_1 ... w_T)]         (batch, N + 1 + T, width)
    p(w_{t+1} | image, w_{<=t}) = softmax(Decoder(x))   at the caption's positions

The vision tower is the book's :class:`~companion.models.vit.PatchEncoder` (the decoder's own blocks
with the causal mask off, so every patch feature already sees the whole image), the language model
is the book's :class:`~companion.models.decoder.Decoder` over the caption vocabulary of
:mod:`companion.data.scenes`, run with ``prefix=`` (the projected patches) before the caption's ids.
Attention in the decoder is causal over the whole sequence, patches included, as in LLaVA, so
caption word ``t`` attends to every patch and to the caption words up to itself.

LLaVA starts from a pretrained CLIP encoder and a pretrained Vicuna and reads the penultimate
layer's features; here all three parts are small and trained together from scratch on generated
scenes, and the prefix is the encoder's final (normalised) patch features.

Training (:func:`caption_loss`) is next-token cross-entropy on the caption only: the prefix has no
targets, the first target is the word after ``<bos>``, and ``<pad>`` targets are ignored.
:meth:`Captioner.generate` feeds the image and ``<bos>`` into a key-value cache once, then decodes one
word per step until ``<eos>``; :meth:`Captioner.caption_attention` shows where each caption word
looked in the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from companion.data.scenes import BOS_ID, CAPTION_WORDS, EOS_ID, PAD_ID
from companion.models.decoder import Decoder, DecoderConfig
from companion.models.sampling import sample_next
from companion.models.vit import PatchEncoder, PatchEncoderConfig

PROJECTORS = ("linear", "mlp")


@dataclass(frozen=True)
class CaptionerConfig:
    """Everything that defines a captioner's shape. Defaults: a small model for 32x32 shape scenes.

    With the defaults (16 patches of 8x8, widths 64, two encoder and two decoder layers: 225,280
    parameters) a captioner learns the captions of :func:`~companion.data.scenes.shape_scenes` on a
    laptop CPU in about a minute.

    Args:
        image_size: side of the (square) images in pixels, or ``(height, width)``.
        patch_size: side of the patches, or ``(height, width)``; must divide the image size.
        channels: colour channels of the images (3 for the shape scenes).
        vision_width: the vision tower's width.
        vision_layers: the vision tower's blocks.
        vision_heads: the vision tower's attention heads.
        width: the language model's width (the projector maps ``vision_width`` to it).
        n_layers: the language model's blocks.
        n_heads: the language model's attention heads.
        projector: ``"linear"`` (LLaVA: one matrix) or ``"mlp"`` (LLaVA-1.5: Linear, GELU, Linear).
        max_caption_tokens: the longest caption in tokens, ``<bos>`` and ``<eos>`` included (a
            four-object scene's caption has 37); it sizes the decoder's position table.
        vocab_size: the caption vocabulary (by default ``len(CAPTION_WORDS)``; ids ``PAD_ID``,
            ``BOS_ID`` and ``EOS_ID`` keep their meaning).
    """

    image_size: int | tuple[int, int] = 32
    patch_size: int | tuple[int, int] = 8
    channels: int = 3
    vision_width: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    width: int = 64
    n_layers: int = 2
    n_heads: int = 4
    projector: str = "mlp"
    max_caption_tokens: int = 40
    vocab_size: int = len(CAPTION_WORDS)

    def __post_init__(self) -> None:
        if self.projector not in PROJECTORS:
            raise ValueError(f"projector must be one of {PROJECTORS}, got {self.projector!r}")
        for name in ("max_caption_tokens", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 3:
                raise ValueError(f"{name} must be an int >= 3 (room for <pad>, <bos> and <eos>), got {value!r}")
        self.vision_config  # noqa: B018 -- building the parts' configurations validates the rest
        self.decoder_config  # noqa: B018

    @property
    def vision_config(self) -> PatchEncoderConfig:
        """The vision tower's configuration: a patch encoder without [CLS] or classifier head."""
        return PatchEncoderConfig(image_size=self.image_size, patch_size=self.patch_size, channels=self.channels,
                                  width=self.vision_width, n_layers=self.vision_layers, n_heads=self.vision_heads,
                                  class_token=False, pooling="mean", n_classes=None)

    @property
    def n_patches(self) -> int:
        """Prefix tokens per image: one per patch."""
        return self.vision_config.n_patches

    @property
    def decoder_config(self) -> DecoderConfig:
        """The language model's configuration: a small Llama (RMSNorm, SwiGLU, RoPE) over the captions."""
        return DecoderConfig(vocab_size=self.vocab_size, width=self.width, n_layers=self.n_layers,
                             n_heads=self.n_heads, max_positions=self.n_patches + self.max_caption_tokens)


class Captioner(nn.Module):
    """A vision tower, a projector and a language model: ``model(images, caption_ids)`` -> logits.

    See the module docstring for the computation. ``vision`` is a
    :class:`~companion.models.vit.PatchEncoder`, ``projector`` maps its features to the decoder's
    width, ``decoder`` is a :class:`~companion.models.decoder.Decoder` over the caption vocabulary.

    Args:
        config: the captioner's shape, a :class:`CaptionerConfig`.
    """

    def __init__(self, config: CaptionerConfig | None = None) -> None:
        super().__init__()
        config = CaptionerConfig() if config is None else config
        if not isinstance(config, CaptionerConfig):
            raise TypeError(f"expected a CaptionerConfig, got {type(config).__name__}")
        self.config = config
        self.vision = PatchEncoder(config.vision_config)
        if config.projector == "linear":
            self.projector = nn.Linear(config.vision_width, config.width)
        else:  # LLaVA-1.5's "mlp2x_gelu"
            self.projector = nn.Sequential(nn.Linear(config.vision_width, config.width), nn.GELU(),
                                           nn.Linear(config.width, config.width))
        self.decoder = Decoder(config.decoder_config)

    def image_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """The projected patch features ``(batch, n_patches, width)``: the decoder's prefix tokens.

        Args:
            images: ``(batch, channels, H, W)`` floating-point images of the configured size.

        Returns:
            ``projector(vision(images))``, one vector per patch in row-major order.
        """
        return self.projector(self.vision(images))

    def _check_captions(self, images: torch.Tensor, caption_ids: torch.Tensor) -> None:
        if isinstance(caption_ids, torch.Tensor) and caption_ids.ndim == 2 and caption_ids.shape[0] != images.shape[0]:
            raise ValueError(f"expected caption ids for the {images.shape[0]} images, (batch={images.shape[0]}, seq), "
                             f"got {tuple(caption_ids.shape)}")

    def forward(self, images: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits at every caption position.

        Args:
            images: ``(batch, channels, H, W)`` floating-point images of the configured size.
            caption_ids: ``(batch, seq)`` ``torch.long`` ids, normally ``<bos>`` and the caption's
                words (:func:`~companion.data.scenes.encode_captions` without its last column).

        Returns:
            Logits ``(batch, seq, vocab_size)``: position ``t`` predicts ``caption_ids[:, t + 1]``
            (the last one, the word after the input).

        Raises:
            ValueError: images or ids of the wrong shape, or batches that differ.
            TypeError: images that are not floating-point tensors of the model's dtype.
        """
        self.vision.check_images(images)
        self._check_captions(images, caption_ids)
        return self.decoder(caption_ids, prefix=self.image_prefix(images))

    def generate(self, images: torch.Tensor, max_len: int, greedy: bool = True, *, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Captions for ``images``, written one word at a time with a key-value cache.

        The image prefix and ``<bos>`` go through the decoder once; each further step runs only the
        newest word. A row stops at its first ``<eos>`` (later positions are ``<pad>``); generation
        ends when every row has stopped or ``max_len`` tokens are written.

        Args:
            images: ``(batch, channels, H, W)`` floating-point images of the configured size.
            max_len: the most tokens per row, ``<bos>`` and ``<eos>`` included (``>= 2``).
            greedy: take the most likely word at every step; False: sample (see
                :func:`~companion.models.sampling.sample_next`) with ``temperature`` and ``top_k``.
            temperature: the sampling temperature (not used when ``greedy``).
            top_k: keep the ``top_k`` most likely words when sampling; None: all.
            generator: the random generator for sampling.

        Returns:
            ``torch.long`` ids ``(batch, length)``, ``length <= max_len``, laid out as
            :func:`~companion.data.scenes.encode_captions` does: ``<bos>``, words, ``<eos>``, ``<pad>``
            (a row cut off by ``max_len`` has no ``<eos>``). :func:`~companion.data.scenes.decode_captions`
            turns them into strings.

        Raises:
            ValueError: images of the wrong shape, or ``max_len`` not an int ``>= 2``.
            TypeError: images that are not floating-point tensors of the model's dtype.
        """
        self.vision.check_images(images)
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
            raise ValueError(f"max_len must be an int >= 2 (room for <bos> and one more token), got {max_len!r}")
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                out = self._generate(images, max_len, 0.0 if greedy else temperature, top_k, generator)
            return out.clone()
        finally:
            self.train(was_training)

    def _generate(self, images: torch.Tensor, max_len: int, temperature: float, top_k: int | None,
                  generator: torch.Generator | None) -> torch.Tensor:
        batch = images.shape[0]
        prefix = self.image_prefix(images)
        cache = self.decoder.new_cache(batch, prefix.shape[1] + max_len)
        out = torch.full((batch, max_len), PAD_ID, dtype=torch.long, device=images.device)
        out[:, 0] = BOS_ID
        done = torch.zeros(batch, dtype=torch.bool, device=images.device)
        logits = self.decoder(out[:, :1], prefix=prefix, cache=cache, last_only=True)[:, -1]
        length = max_len
        for step in range(1, max_len):
            word = sample_next(logits, temperature=temperature, top_k=top_k, generator=generator)
            out[:, step] = torch.where(done, torch.full_like(word, PAD_ID), word)
            done |= word == EOS_ID
            if bool(done.all()):
                length = step + 1
                break
            if step + 1 < max_len:
                logits = self.decoder(out[:, step:step + 1], cache=cache, last_only=True)[:, -1]
        return out[:, :length]

    def caption_attention(self, images: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
        """Where each caption position looks in the image: attention to the patches, per layer and head.

        Args:
            images: ``(batch, channels, H, W)`` floating-point images of the configured size.
            caption_ids: ``(batch, seq)`` ``torch.long`` caption ids (``<bos>`` first).

        Returns:
            ``(n_layers, batch, n_heads, seq, n_patches)`` float32: the attention probability from
            caption position ``t`` (query) to patch ``j`` (key), patches in row-major order (reshape
            the last axis to the patch grid to draw it over the image). A row sums to at most 1: the
            rest of the attention goes to caption positions ``<= t``.

        Raises:
            ValueError: images or ids of the wrong shape, or batches that differ.
        """
        self.vision.check_images(images)
        self._check_captions(images, caption_ids)
        n_patches = self.config.n_patches
        with torch.no_grad():
            out = self.decoder(caption_ids, prefix=self.image_prefix(images), return_attention=True)
        return torch.stack([weights[:, :, n_patches:, :n_patches] for weights in out.attention])

    def num_parameters(self) -> int:
        """The number of parameters (vision tower, projector and language model)."""
        return sum(p.numel() for p in self.parameters())


def caption_loss(model: Captioner, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy on the captions: the loss for :func:`companion.train.train` (``loss_fn=``).

    Args:
        model: a :class:`Captioner`.
        batch: ``(images, caption_ids)``: images ``(batch, channels, H, W)`` and ids
            ``(batch, length)`` as :func:`~companion.data.scenes.encode_captions` makes them
            (``<bos>``, words, ``<eos>``, ``<pad>``).

    Returns:
        The mean over non-``<pad>`` targets of ``-log p(caption_ids[:, t + 1] | image, caption_ids[:, :t + 1])``:
        every word after ``<bos>`` and the ``<eos>`` are predicted, ``<pad>`` targets are ignored.
    """
    images, caption_ids = batch
    logits = model(images, caption_ids[:, :-1])
    targets = caption_ids[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=PAD_ID)


def caption_batches(images: torch.Tensor, caption_ids: torch.Tensor,
                    batch_size: int) -> Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]:
    """Random batches of image-caption pairs, in the form :func:`companion.train.train` takes.

    Args:
        images: ``(n, channels, H, W)``.
        caption_ids: ``(n, length)`` ids, row ``i`` the caption of image ``i``.
        batch_size: pairs per batch, drawn with replacement.

    Returns:
        ``batches(generator) -> (images, caption_ids)`` of ``batch_size`` rows, each batch's
        trailing all-``<pad>`` columns dropped.

    Raises:
        ValueError: tensors with a different number of rows, or a ``batch_size`` that is not a positive int.
    """
    if images.shape[0] != caption_ids.shape[0]:
        raise ValueError(f"expected one caption row per image, got {images.shape[0]} images and "
                         f"{caption_ids.shape[0]} caption rows")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")

    def batches(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        ids = caption_ids[rows]
        used = int((ids != PAD_ID).sum(dim=1).max())
        return images[rows], ids[:, :used]

    return batches


def caption_exact_match(model: Captioner, images: torch.Tensor, caption_ids: torch.Tensor) -> float:
    """The fraction of images whose greedy caption equals the reference word for word (``<eos>`` included).

    Args:
        model: a :class:`Captioner`.
        images: ``(n, channels, H, W)``.
        caption_ids: ``(n, length)`` reference ids as :func:`~companion.data.scenes.encode_captions`
            makes them.

    Returns:
        A number in ``[0, 1]``.
    """
    generated = model.generate(images, caption_ids.shape[1])
    reference = caption_ids[:, :generated.shape[1]]
    # equal up to the reference's length, and the reference ends (EOS or PAD) where generation stopped
    same = (generated == reference).all(dim=1)
    if generated.shape[1] < caption_ids.shape[1]:
        same &= (caption_ids[:, generated.shape[1]:] == PAD_ID).all(dim=1)
    return same.float().mean().item()
