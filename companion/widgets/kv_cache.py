"""KV-cache calculator: the memory that the keys and values of a long context take, against a GPU's.

A decoder that generates keeps, in every layer, the key and the value of every past token (the KV
cache of chapter 3), each ``kv_heads x head_dim`` numbers. So the cache holds

    ``kv_cache_bytes = 2 (K and V) x layers x kv_heads x head_dim x bytes_per_element x context x batch``

(:func:`kv_cache_bytes`; :func:`kv_bytes_per_token` is the same for one token of one sequence). It
grows linearly with the context, and at long contexts it outgrows the model's weights. The number of
query heads does not appear: multi-head attention (Vaswani et al. 2017) has ``kv_heads = heads``;
grouped-query attention (GQA; Ainslie et al. 2023, "GQA: Training generalized multi-query transformer
models from multi-head checkpoints") shares each key/value head among ``heads / kv_heads`` query
heads, and multi-query attention (MQA; Shazeer 2019, "Fast transformer decoding: one write-head is
all you need") keeps one (:func:`attention_kind`). Each divides the cache by ``heads / kv_heads``.

On a GPU of ``memory_gib`` GiB (``2**30`` bytes), at most

    ``floor((memory_gib * 2**30 - weights) / (kv_bytes_per_token x batch))``

tokens of context fit per sequence (:func:`tokens_that_fit`), where ``weights`` is the model's
parameters at ``WEIGHT_BYTES = 2`` bytes each (the bfloat16 checkpoints) when they are counted,
else 0. This is an upper bound: activations, the framework and the allocator need room too.

``MODELS`` are published configurations, read from each model's ``config.json`` on the Hugging Face
Hub (``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``, and ``head_dim =
hidden_size / num_attention_heads``), with the context each was trained for and its parameter
count (which tests/test_widgets.py recomputes from the rest of the config):

========================  ======  =====  ========  ========  ===========  ===============
model                     layers  heads  kv_heads  head_dim  context      parameters
========================  ======  =====  ========  ========  ===========  ===============
Llama-2-7B                32      32     32        128       4,096        6,738,415,616
Llama-3-8B                32      32     8         128       8,192        8,030,261,248
Llama-3-70B               80      64     8         128       8,192        70,553,706,496
Mistral-7B-v0.3           32      32     8         128       32,768       7,248,023,552
Qwen2.5-7B                28      28     4         128       32,768       7,615,616,512
========================  ======  =====  ========  ========  ===========  ===============

Sources: ``meta-llama/Llama-2-7b-hf`` (Touvron et al. 2023, "Llama 2"; hidden 4096),
``meta-llama/Meta-Llama-3-8B`` and ``meta-llama/Meta-Llama-3-70B`` (Llama team 2024, "The Llama 3
herd of models"; hidden 4096 and 8192), ``mistralai/Mistral-7B-v0.3`` (Jiang et al. 2023,
"Mistral 7B"; hidden 4096; v0.1's 4,096-token sliding window, whose rolling cache stops growing at
4,096 tokens, is gone in v0.3), ``Qwen/Qwen2.5-7B`` (Qwen team 2024, "Qwen2.5 technical report";
hidden 3584; 32,768 tokens natively, 131,072 with YaRN, factor 4).

The JavaScript in ``kv_cache.js`` computes the same numbers in the browser; :func:`kv_cache_bytes`,
:func:`kv_bytes_per_token`, :func:`tokens_that_fit`, :func:`weight_bytes` and
:func:`attention_kind` are its Python twins.
"""

from __future__ import annotations

import pathlib
from typing import Any

import anywidget
import traitlets

from companion.widgets._traits import checked, checked_int

GIB = 2**30
WEIGHT_BYTES = 2  # bytes per parameter of the weights, when they are counted (bfloat16)
# bytes per element of the cache -> how the widget's menu names it (the same text is in kv_cache.js)
DTYPES = {4: "float32", 2: "bfloat16 / float16", 1: "float8 / int8"}
MAX_CONTEXT = 2**24
MAX_BATCH = 1024
MAX_SIZE = 4096  # layers, heads, kv_heads and head_dim in the widget

MODELS: tuple[dict[str, Any], ...] = (
    {"name": "Llama-2-7B", "layers": 32, "heads": 32, "kv_heads": 32, "head_dim": 128, "context": 4096,
     "parameters": 6_738_415_616},
    {"name": "Llama-3-8B", "layers": 32, "heads": 32, "kv_heads": 8, "head_dim": 128, "context": 8192,
     "parameters": 8_030_261_248},
    {"name": "Llama-3-70B", "layers": 80, "heads": 64, "kv_heads": 8, "head_dim": 128, "context": 8192,
     "parameters": 70_553_706_496},
    {"name": "Mistral-7B-v0.3", "layers": 32, "heads": 32, "kv_heads": 8, "head_dim": 128, "context": 32768,
     "parameters": 7_248_023_552},
    {"name": "Qwen2.5-7B", "layers": 28, "heads": 28, "kv_heads": 4, "head_dim": 128, "context": 32768,
     "parameters": 7_615_616_512},
)
CONFIG_FIELDS = ("layers", "heads", "kv_heads", "head_dim")
CUSTOM = "custom"
# GPU memory sizes, in GiB, with cards that have them
GPUS: tuple[dict[str, Any], ...] = (
    {"gib": 16, "label": "T4 (Colab), V100 16 GB"},
    {"gib": 24, "label": "RTX 4090, L4"},
    {"gib": 40, "label": "A100 40 GB"},
    {"gib": 80, "label": "A100 / H100 80 GB"},
)


# ------------------------------------------------------------------------------ validation
_int = checked_int  # shared with the other widgets (companion/widgets/_traits.py)


def _bytes_per_element(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"bytes_per_element must be an int (one of {sorted(DTYPES)}), got {value!r}")
    if value not in DTYPES:
        raise ValueError(f"bytes_per_element must be one of {sorted(DTYPES)} ({DTYPES}), got {value}")
    return value


def _check_heads(heads: int, kv_heads: int) -> None:
    if kv_heads > heads or heads % kv_heads:
        raise ValueError(f"kv_heads must divide heads (each key/value head serves heads / kv_heads query heads), "
                         f"got heads={heads}, kv_heads={kv_heads}")


def _check_gpus(gpus: Any) -> list[dict[str, Any]]:
    if isinstance(gpus, (str, bytes, dict)) or not isinstance(gpus, (list, tuple)):
        raise TypeError(f"gpus must be a list of {{'gib': int, 'label': str}}, got {type(gpus).__name__}")
    if not 1 <= len(gpus) <= 8:
        raise ValueError(f"gpus must hold 1 to 8 GPUs, got {len(gpus)}")
    for gpu in gpus:
        if not isinstance(gpu, dict) or set(gpu) != {"gib", "label"} or not isinstance(gpu["label"], str):
            raise TypeError(f"each GPU must be {{'gib': int, 'label': str}}, got {gpu!r}")
        _int("gib", gpu["gib"])
    return [dict(gpu) for gpu in gpus]


# ------------------------------------------------------------------------------ the twins
def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, bytes_per_element: int = 2) -> int:
    """``2 x layers x kv_heads x head_dim x bytes_per_element``: the cache of one token of one sequence."""
    return 2 * _int("layers", layers) * _int("kv_heads", kv_heads) * _int("head_dim", head_dim) * \
        _bytes_per_element(bytes_per_element)


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, context: int, bytes_per_element: int = 2,
                   batch: int = 1) -> int:
    """The KV cache in bytes: ``2 x layers x kv_heads x head_dim x bytes_per_element x context x batch``
    (the keys and values, each ``(batch, kv_heads, context, head_dim)`` in every layer)."""
    return kv_bytes_per_token(layers, kv_heads, head_dim, bytes_per_element) * _int("context", context) * \
        _int("batch", batch)


def weight_bytes(parameters: int) -> int:
    """``parameters x WEIGHT_BYTES``: the weights in bfloat16 (0 for 0, an unknown model)."""
    return _int("parameters", parameters, 0) * WEIGHT_BYTES


def tokens_that_fit(memory_gib: int, layers: int, kv_heads: int, head_dim: int, bytes_per_element: int = 2,
                    batch: int = 1, parameters: int = 0) -> int:
    """The longest context (per sequence, ``batch`` sequences) whose cache fits in ``memory_gib`` GiB
    beside the weights of ``parameters`` parameters: ``floor((memory_gib * 2**30 - weights) /
    (kv_bytes_per_token x batch))``, or 0 when the weights alone do not fit."""
    free = _int("memory_gib", memory_gib) * GIB - weight_bytes(parameters)
    per_token = kv_bytes_per_token(layers, kv_heads, head_dim, bytes_per_element) * _int("batch", batch)
    return max(0, free // per_token)


def attention_kind(heads: int, kv_heads: int) -> str:
    """``"multi-head"`` (``kv_heads == heads``), ``"multi-query"`` (``kv_heads == 1``) or
    ``"grouped-query"``; ``kv_heads`` must divide ``heads``."""
    _check_heads(_int("heads", heads), _int("kv_heads", kv_heads))
    if kv_heads == heads:
        return "multi-head"
    return "multi-query" if kv_heads == 1 else "grouped-query"


def model_config(name: str) -> dict[str, Any]:
    """The entry of ``MODELS`` called ``name``."""
    for model in MODELS:
        if model["name"] == name:
            return dict(model)
    raise ValueError(f"model must be one of {[m['name'] for m in MODELS]} or {CUSTOM!r}, got {name!r}")


# ---------------------------------------------------------------------------------- widget
class KVCacheCalculator(anywidget.AnyWidget):
    """The KV cache of a configuration at a context length, beside real models and GPU memory sizes.

    ``KVCacheCalculator(model="Llama-3-8B", context=32768)`` takes a model of ``MODELS`` (its
    layers, heads, kv_heads, head_dim and parameters); ``KVCacheCalculator(layers=12, heads=12,
    kv_heads=12, head_dim=64, context=1024)`` (``model="custom"``, the default) any configuration,
    with ``parameters`` to count its weights. The reader chooses a model, edits the numbers (the
    model becomes "custom"), the cache's data type, the context (a logarithmic slider, or a number)
    and the batch, and whether the weights are counted. The widget shows the bytes per token and of
    the whole cache, what multi-head attention would need, a table of GPU memory sizes (how full
    each is, and how many tokens of context fit) and a table of the real models at the same
    context, data type and batch.
    """

    _esm = pathlib.Path(__file__).with_name("kv_cache.js")
    _css = pathlib.Path(__file__).with_name("kv_cache.css")

    model = traitlets.Unicode(CUSTOM).tag(sync=True)
    layers = traitlets.Int(32).tag(sync=True)
    heads = traitlets.Int(32).tag(sync=True)
    kv_heads = traitlets.Int(8).tag(sync=True)
    head_dim = traitlets.Int(128).tag(sync=True)
    parameters = traitlets.Int(0).tag(sync=True)
    bytes_per_element = traitlets.Int(2).tag(sync=True)
    context = traitlets.Int(8192).tag(sync=True)
    batch = traitlets.Int(1).tag(sync=True)
    count_weights = traitlets.Bool(True).tag(sync=True)
    models = traitlets.List(traitlets.Dict(), [dict(m) for m in MODELS], read_only=True).tag(sync=True)
    gpus = traitlets.List(traitlets.Dict(), [dict(g) for g in GPUS]).tag(sync=True)

    def __init__(self, model: str = CUSTOM, *, layers: int | None = None, heads: int | None = None,
                 kv_heads: int | None = None, head_dim: int | None = None, parameters: int | None = None,
                 bytes_per_element: int = 2, context: int = 8192, batch: int = 1, count_weights: bool = True,
                 gpus: Any = GPUS, **kwargs):
        given = {"layers": layers, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
                 "parameters": parameters}
        if model == CUSTOM:
            config = {"layers": 32, "heads": 32, "kv_heads": 8, "head_dim": 128, "parameters": 0}
            config.update({k: v for k, v in given.items() if v is not None})
        else:
            config = {k: v for k, v in model_config(model).items() if k in given}
            clash = {k: v for k, v in given.items() if v is not None and v != config[k]}
            if clash:
                raise ValueError(f"model {model!r} has {', '.join(f'{k}={config[k]}' for k in clash)}; "
                                 f"got {clash}: leave them out, or use model={CUSTOM!r}")
        for name in CONFIG_FIELDS:
            _int(name, config[name], 1, MAX_SIZE)
        _int("parameters", config["parameters"], 0)
        _check_heads(config["heads"], config["kv_heads"])
        if not isinstance(count_weights, bool):
            raise TypeError(f"count_weights must be a bool, got {count_weights!r}")
        super().__init__(model=model, **config, bytes_per_element=_bytes_per_element(bytes_per_element),
                         context=_int("context", context, 1, MAX_CONTEXT), batch=_int("batch", batch, 1, MAX_BATCH),
                         count_weights=count_weights, gpus=_check_gpus(gpus), **kwargs)

    # ---------------------------------------------------------------------------- validation
    @traitlets.validate("model")
    def _valid_model(self, proposal):
        return checked(proposal, lambda v: v if v == CUSTOM else model_config(v)["name"])

    @traitlets.validate("layers", "head_dim")
    def _valid_size(self, proposal):
        return checked(proposal, lambda v: _int(proposal["trait"].name, v, 1, MAX_SIZE))

    @traitlets.validate("heads")
    def _valid_heads(self, proposal):
        def check(v):
            _check_heads(_int("heads", v, 1, MAX_SIZE), self.kv_heads)
            return v
        return checked(proposal, check)

    @traitlets.validate("kv_heads")
    def _valid_kv_heads(self, proposal):
        def check(v):
            _check_heads(self.heads, _int("kv_heads", v, 1, MAX_SIZE))
            return v
        return checked(proposal, check)

    @traitlets.validate("gpus")
    def _valid_gpus(self, proposal):
        return checked(proposal, _check_gpus)

    @traitlets.validate("parameters")
    def _valid_parameters(self, proposal):
        return checked(proposal, lambda v: _int("parameters", v, 0))

    @traitlets.validate("bytes_per_element")
    def _valid_bytes(self, proposal):
        return checked(proposal, _bytes_per_element)

    @traitlets.validate("context")
    def _valid_context(self, proposal):
        return checked(proposal, lambda v: _int("context", v, 1, MAX_CONTEXT))

    @traitlets.validate("batch")
    def _valid_batch(self, proposal):
        return checked(proposal, lambda v: _int("batch", v, 1, MAX_BATCH))

    # ------------------------------------------------------- keeping model and numbers in step
    @traitlets.observe("model")
    def _load_model(self, change):
        if change["new"] != CUSTOM:
            config = model_config(change["new"])
            with self.hold_trait_notifications():
                for name in (*CONFIG_FIELDS, "parameters"):
                    setattr(self, name, config[name])

    @traitlets.observe(*CONFIG_FIELDS)
    def _leave_model(self, change):
        if self.model != CUSTOM:
            config = model_config(self.model)
            if any(getattr(self, name) != config[name] for name in CONFIG_FIELDS):
                with self.hold_trait_notifications():
                    self.model, self.parameters = CUSTOM, 0

    # ------------------------------------------------------------------------------- reading
    def per_token(self) -> int:
        """:func:`kv_bytes_per_token` at the current state."""
        return kv_bytes_per_token(self.layers, self.kv_heads, self.head_dim, self.bytes_per_element)

    def cache_bytes(self) -> int:
        """:func:`kv_cache_bytes` at the current state."""
        return kv_cache_bytes(self.layers, self.kv_heads, self.head_dim, self.context, self.bytes_per_element,
                              self.batch)

    def fits(self) -> dict[int, int]:
        """``{memory_gib: tokens_that_fit(...)}`` for each GPU of the widget, as its table shows."""
        parameters = self.parameters if self.count_weights else 0
        return {gpu["gib"]: tokens_that_fit(gpu["gib"], self.layers, self.kv_heads, self.head_dim,
                                            self.bytes_per_element, self.batch, parameters) for gpu in self.gpus}

    def __repr__(self) -> str:  # stable: stored notebook outputs must not hold an address
        config = "" if self.model != CUSTOM else (
            f", layers={self.layers}, heads={self.heads}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, "
            f"parameters={self.parameters}")
        return (f"KVCacheCalculator(model={self.model!r}{config}, bytes_per_element={self.bytes_per_element}, "
                f"context={self.context}, batch={self.batch}, count_weights={self.count_weights})")

