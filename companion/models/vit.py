"""A vision transformer's patch encoder (chapter 8): an image read as a sequence of patch tokens.

Dosovitskiy et al. 2021 ("An Image is Worth 16x16 Words") cut an image ``(channels, H, W)`` into
non-overlapping ``P x P`` patches, flatten each patch, project it linearly to the model width,
put a learned [CLS] token in front, add a learned vector per position, and run a transformer
encoder over the ``1 + N`` tokens (``N = (H / P) (W / P)``)::

    x_0 = [cls; p_1 E + b; ...; p_N E + b] + E_pos
    x   = x + MSA(LN_1(x));   x = x + MLP(LN_2(x))        (each of the L blocks: pre-norm)
    y   = LN(x_L)                                           (batch, 1 + N, width)

Two things make it an encoder rather than a decoder: no causal mask (every token attends to
every other, so attention maps are full ``(1 + N) x (1 + N)`` matrices), and no next-token head.
The blocks are the decoder's own :class:`~companion.models.decoder.Block` with ``causal=False``,
LayerNorm, a GELU MLP and biases (:attr:`PatchEncoderConfig.block_config`): the book's "one
backbone" in code. A classifier reads the final [CLS] vector (``pooling="cls"``, as ViT) or the
mean of the patch vectors (``pooling="mean"``, global average pooling).

Projecting flattened patches with a matrix ``E`` is a convolution whose kernel and stride are both
``P``; the encoder holds it as that ``nn.Conv2d`` (``patch_embed``, as transformers' ``ViTModel``
does, so weights convert exactly), and :func:`patchify` flattens patches in the order of the
convolution's weight, so ``patchify(x) @ W.flatten(1).T + b`` equals the convolution's output.
:func:`companion.models.from_hf` converts ``ViTModel`` and ``ViTForImageClassification``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from companion.models.decoder import Block, DecoderConfig
from companion.nn.norms import LayerNorm
from companion.nn.positions import LearnedPositions

POOLINGS = ("cls", "mean")


def _pair(value, name: str) -> tuple[int, int]:
    """``8`` -> ``(8, 8)``; ``(8, 4)`` stays; anything but positive ints raises ``ValueError``."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair)):
        raise ValueError(f"{name} must be a positive int or a pair (height, width) of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_divisible(height: int, width: int, patch: tuple[int, int]) -> None:
    if height % patch[0] or width % patch[1]:
        raise ValueError(f"image size {height}x{width} is not divisible by the patch size {patch[0]}x{patch[1]}: "
                         f"expected height a multiple of {patch[0]} and width a multiple of {patch[1]}")


def patchify(images: torch.Tensor, patch_size: int | tuple[int, int]) -> torch.Tensor:
    """Cut images into non-overlapping patches and flatten each one.

    Args:
        images: ``(batch, channels, height, width)``, height and width multiples of the patch size.
        patch_size: ``P`` (square patches) or ``(P_h, P_w)``.

    Returns:
        ``(batch, n_patches, channels * P_h * P_w)``: patches in row-major order over the grid
        (left to right, then top to bottom); each patch flattened channel first, then row, then
        column, the order of ``nn.Conv2d``'s weight ``(out, channels, P_h, P_w)`` and of
        ``torch.nn.functional.unfold``. :func:`unpatchify` inverts it.

    Raises:
        ValueError: images that are not 4-d, or whose size is not divisible by the patch size.
    """
    patch = _pair(patch_size, "patch_size")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected images as a (batch, channels, height, width) tensor, got {got}")
    batch, channels, height, width = images.shape
    _check_divisible(height, width, patch)
    rows, cols = height // patch[0], width // patch[1]
    grid = images.reshape(batch, channels, rows, patch[0], cols, patch[1])
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(batch, rows * cols, channels * patch[0] * patch[1])


def unpatchify(patches: torch.Tensor, patch_size: int | tuple[int, int],
               image_size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Put flattened patches back together into images: the inverse of :func:`patchify`.

    Args:
        patches: ``(batch, n_patches, channels * P_h * P_w)``, flattened as :func:`patchify` does.
        patch_size: ``P`` or ``(P_h, P_w)``.
        image_size: ``(height, width)`` of the images (or one int for square images); None: a
            square grid of patches (``n_patches`` must then be a perfect square).

    Returns:
        Images ``(batch, channels, height, width)``.

    Raises:
        ValueError: a last dimension that is not a multiple of ``P_h * P_w``, an image size not
            divisible by the patch size, or a number of patches that does not fill the image.
    """
    patch = _pair(patch_size, "patch_size")
    if not isinstance(patches, torch.Tensor) or patches.ndim != 3:
        got = tuple(patches.shape) if isinstance(patches, torch.Tensor) else type(patches).__name__
        raise ValueError(f"expected patches as a (batch, n_patches, channels * patch area) tensor, got {got}")
    batch, n_patches, flat = patches.shape
    area = patch[0] * patch[1]
    if flat % area:
        raise ValueError(f"each patch must hold channels * {patch[0]} * {patch[1]} values (a multiple of {area}), "
                         f"got {flat}")
    channels = flat // area
    if image_size is None:
        side = math.isqrt(n_patches)
        if side * side != n_patches:
            raise ValueError(f"{n_patches} patches do not form a square grid: give image_size=(height, width)")
        rows = cols = side
    else:
        height, width = _pair(image_size, "image_size")
        _check_divisible(height, width, patch)
        rows, cols = height // patch[0], width // patch[1]
        if rows * cols != n_patches:
            raise ValueError(f"a {height}x{width} image holds {rows * cols} patches of {patch[0]}x{patch[1]}, "
                             f"got {n_patches}")
    grid = patches.reshape(batch, rows, cols, channels, patch[0], patch[1])
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, rows * patch[0], cols * patch[1])


@dataclass(frozen=True)
class PatchEncoderConfig:
    """Everything that defines a patch encoder's shape. Defaults: a small ViT for 28x28 grey images.

    Args:
        image_size: ``H`` (square images) or ``(H, W)``; the encoder takes exactly this size.
        patch_size: ``P`` or ``(P_h, P_w)``; must divide the image size.
        channels: colour channels of the images (1 grey, 3 RGB).
        width: the model width (ViT's ``D``).
        n_layers: transformer blocks.
        n_heads: attention heads.
        head_dim: dimension per head; None: ``width // n_heads`` (which must then divide exactly).
        mlp_hidden: hidden size of the GELU MLP; None: ``4 * width``.
        norm_eps: the epsilon of every LayerNorm (ViT: 1e-6; transformers' ``ViTConfig``: 1e-12).
        class_token: whether a learned [CLS] token is put before the patch tokens.
        pooling: what a classifier reads: ``"cls"`` (the final [CLS] vector; needs ``class_token``)
            or ``"mean"`` (the mean of the final patch vectors, [CLS] excluded).
        n_classes: classes of the linear classifier head on the pooled vector; None: no head.
        qkv_bias: whether the query, key and value projections have biases (the output projection,
            the MLP and the patch projection always do, as in ViT).
        init_std: standard deviation of the (truncated normal) initial weights.
    """

    image_size: int | tuple[int, int] = 28
    patch_size: int | tuple[int, int] = 7
    channels: int = 1
    width: int = 64
    n_layers: int = 4
    n_heads: int = 4
    head_dim: int | None = None
    mlp_hidden: int | None = None
    norm_eps: float = 1e-6
    class_token: bool = True
    pooling: str = "cls"
    n_classes: int | None = None
    qkv_bias: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        image = _pair(self.image_size, "image_size")
        patch = _pair(self.patch_size, "patch_size")
        _check_divisible(*image, patch)
        for name in ("channels", "width", "n_layers", "n_heads"):
            _check_positive_int(name, getattr(self, name))
        for name in ("head_dim", "mlp_hidden", "n_classes"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        if self.head_dim is None and self.width % self.n_heads:
            raise ValueError(f"width ({self.width}) must be divisible by n_heads ({self.n_heads}), or give head_dim")
        for name in ("norm_eps", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("class_token", "qkv_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.pooling == "cls" and not self.class_token:
            raise ValueError("pooling='cls' needs class_token=True; without a class token use pooling='mean'")

    @property
    def image_hw(self) -> tuple[int, int]:
        """``(height, width)`` of the images, in pixels."""
        return _pair(self.image_size, "image_size")

    @property
    def patch_hw(self) -> tuple[int, int]:
        """``(height, width)`` of a patch, in pixels."""
        return _pair(self.patch_size, "patch_size")

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per column and per row: ``(H / P_h, W / P_w)``."""
        (height, width), (ph, pw) = self.image_hw, self.patch_hw
        return height // ph, width // pw

    @property
    def n_patches(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def n_prefix(self) -> int:
        """Tokens before the patches: 1 with a class token, else 0."""
        return int(self.class_token)

    @property
    def n_tokens(self) -> int:
        """The sequence length the blocks see: ``n_prefix + n_patches``."""
        return self.n_prefix + self.n_patches

    @property
    def dim_per_head(self) -> int:
        return self.width // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def hidden(self) -> int:
        return 4 * self.width if self.mlp_hidden is None else self.mlp_hidden

    @property
    def block_config(self) -> DecoderConfig:
        """The configuration of the blocks, as the decoder's: non-causal, pre-norm, LayerNorm, GELU, biases.

        (``vocab_size`` is a placeholder: blocks have no embedding table.)
        """
        return DecoderConfig(vocab_size=1, width=self.width, n_layers=self.n_layers, n_heads=self.n_heads,
                             head_dim=self.dim_per_head, ffn="gelu", ffn_hidden=self.hidden, norm="layernorm",
                             norm_eps=self.norm_eps, norm_position="pre", positions="none",
                             max_positions=self.n_tokens, attention_bias=True, mlp_bias=True, causal=False,
                             init_std=self.init_std)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass
class PatchEncoderOutput:
    """What :meth:`PatchEncoder.forward` returns with ``return_attention=True``.

    Args:
        hidden: the final hidden states ``(batch, n_tokens, width)`` (after the final LayerNorm).
        attention: each layer's attention probabilities ``(batch, n_heads, n_tokens, n_tokens)``.
    """

    hidden: torch.Tensor
    attention: list[torch.Tensor] = field(default_factory=list)


class PatchEncoder(nn.Module):
    """A vision transformer encoder: ``model(images)`` -> hidden states ``(batch, n_tokens, width)``.

    ``n_tokens`` is ``1 + n_patches`` with a class token (the [CLS] vector first), else
    ``n_patches``. :meth:`pool` reduces hidden states to one vector per image, :meth:`classify`
    gives logits ``(batch, n_classes)`` from the classifier head, and
    ``model(images, return_attention=True)`` a :class:`PatchEncoderOutput` with every layer's
    attention maps. See the module docstring for the computation.

    Args:
        config: the encoder's shape, a :class:`PatchEncoderConfig`.
    """

    def __init__(self, config: PatchEncoderConfig) -> None:
        super().__init__()
        if not isinstance(config, PatchEncoderConfig):
            raise TypeError(f"expected a PatchEncoderConfig, got {type(config).__name__}")
        self.config = config
        self.patch_embed = nn.Conv2d(config.channels, config.width, kernel_size=config.patch_hw,
                                     stride=config.patch_hw)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width)) if config.class_token else None
        self.positions = LearnedPositions(config.n_tokens, config.width)
        blocks = config.block_config
        self.blocks = nn.ModuleList(Block(blocks, index, None) for index in range(config.n_layers))
        if not config.qkv_bias:  # ViT's output projection keeps its bias; the query/key/value one goes
            for block in self.blocks:
                block.mixer.qkv.register_parameter("bias", None)
        self.norm = LayerNorm(config.width, eps=config.norm_eps)
        self.head = nn.Linear(config.width, config.n_classes) if config.n_classes is not None else None
        self.register_buffer("token_positions", torch.arange(config.n_tokens), persistent=False)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """ViT's initialisation: truncated normal weights (``init_std``, cut at 2 sigma), zero biases,
        LayerNorms at weight 1 and bias 0, position vectors and [CLS] truncated normal too."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.positions.table.weight, std=std, a=-2 * std, b=2 * std)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=std, a=-2 * std, b=2 * std)

    def check_images(self, images: torch.Tensor) -> None:
        """Raise if ``images`` are not ``(batch, channels, H, W)`` of the configured size, dtype and device.

        Raises:
            TypeError: not a tensor, or a dtype other than the model's (integer pixels included).
            ValueError: a wrong number of dimensions, channels or pixels, or another device.
        """
        config = self.config
        height, width = config.image_hw
        expected = f"(batch, {config.channels}, {height}, {width})"
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"expected images as a torch.Tensor {expected}, got {type(images).__name__}")
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"expected images of shape {expected} with batch >= 1, got {tuple(images.shape)}")
        if images.shape[1] != config.channels:
            raise ValueError(f"expected {config.channels} channel(s), images {expected}, got {images.shape[1]} "
                             f"channel(s) in {tuple(images.shape)}")
        if tuple(images.shape[2:]) != (height, width):
            raise ValueError(f"expected images of {height}x{width} pixels {expected}, got "
                             f"{images.shape[2]}x{images.shape[3]} in {tuple(images.shape)}")
        param = self.patch_embed.weight
        if images.dtype != param.dtype:
            hint = " (convert integer pixels to floats first, e.g. images.float() / 255)" \
                if not images.is_floating_point() else ""
            raise TypeError(f"expected images of dtype {param.dtype} (the model's), got {images.dtype}{hint}")
        if images.device != param.device:
            raise ValueError(f"expected images on {param.device} (the model's device), got {images.device}")

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The blocks' input ``(batch, n_tokens, width)``: [CLS] and projected patches, plus positions."""
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)  # (batch, n_patches, width), row-major
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        # every position in order: the same as self.positions(self.token_positions), without its range check
        return tokens + self.positions.table.weight

    def forward(self, images: torch.Tensor, *,
                return_attention: bool = False) -> torch.Tensor | PatchEncoderOutput:
        """The final hidden states of ``images`` ``(batch, channels, H, W)``.

        Args:
            images: floating-point images of the configured size, dtype and device.
            return_attention: also return each layer's attention probabilities.

        Returns:
            ``(batch, n_tokens, width)`` (after the final LayerNorm), or with ``return_attention`` a
            :class:`PatchEncoderOutput` holding it and the maps ``(batch, n_heads, n_tokens, n_tokens)``.
        """
        self.check_images(images)
        x = self.embed(images)
        maps = []
        for block in self.blocks:
            x, weights = block(x, self.token_positions, None, return_attention)
            maps.append(weights)
        x = self.norm(x)
        return PatchEncoderOutput(x, maps) if return_attention else x

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """One vector per image ``(batch, width)`` from hidden states ``(batch, n_tokens, width)``.

        ``pooling="cls"``: the [CLS] vector; ``"mean"``: the mean of the patch vectors.
        """
        expected = (self.config.n_tokens, self.config.width)
        if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3 or tuple(hidden.shape[1:]) != expected:
            got = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
            raise ValueError(f"expected hidden states (batch, {expected[0]}, {expected[1]}), got {got}")
        if self.config.pooling == "cls":
            return hidden[:, 0]
        return hidden[:, self.config.n_prefix:].mean(dim=1)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``(batch, n_classes)``: the head applied to the pooled final hidden state.

        Raises:
            ValueError: the encoder was built without a head (``n_classes=None``).
        """
        if self.head is None:
            raise ValueError("this encoder has no classifier head: build it with n_classes set")
        return self.head(self.pool(self(images)))

    def num_parameters(self) -> int:
        """The number of parameters."""
        return sum(p.numel() for p in self.parameters())
