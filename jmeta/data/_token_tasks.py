"""A synthetic family of few-shot token tasks that a tiny decoder can learn in context.

Every class is an ordered *pair of key tokens* ``(a, b)``; its examples are ``length - 2``
random *filler* tokens followed by ``a b`` (``length=2``, the default: just the pair). An N-way
episode draws N classes and numbers them ``0..N-1`` in a random order
(:func:`jmeta.data.token_sampler`), so which label goes with which pair is known only from the
support set: a model classifies a query by finding the support example that ends like it and
reading its label. The *pairs* are split into disjoint train / val / test classes; the key
tokens themselves are shared, so every token of a test episode was seen in meta-training and
what has to transfer is the skill (match the example, copy its label), not a pair-to-label
table.

(Classes of single key tokens, split by token, are the harder variant: a test key is then a
token meta-training never saw, and on a random decoder whose embeddings train with the rest
(MetaICL with ``train_backbone=True``) the meta-trained model matched the training keys only:
test accuracy stayed near chance in 3,000 steps. See docs/text.md, "Decoders".)

Token ids::

    0                               padding (never in an example)
    1 .. label_tokens               label tokens: the verbalisers ("label c" is token 1 + c)
    next fillers ids                fillers (before the pair when length > 2)
    the rest, up to vocab_size - 1  key tokens; a class is an ordered pair of two of them

Registered as ``data=dict(name="token_mappings", ...)``.
"""

from __future__ import annotations

import functools

import numpy as np

from jmeta.data._dataset import ClassDataset
from jmeta.data._registry import ClassSplits, register
from jmeta.data._text import random_class_split, select_classes, token_sampler

PAD = 0
TINY_LLAMA = dict(model_type="llama", vocab_size=64, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                  max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  initializer_range=0.2)
"""The tiny random Llama of the synthetic decoder experiments (``model.arch``: 2 layers, hidden
32, 4 heads of 8, 2 key-value heads, MLP 64, vocab 64: 22,688 parameters). Its weights are drawn
with standard deviation 0.2, not Llama's 0.02: at 0.02 every attention head of the random
network attends almost uniformly and meta-training sat on a plateau at chance."""


def label_ids(ways: int) -> tuple[int, ...]:
    """The verbaliser token of each label ``0..ways-1`` (``model.labels`` of a config).

    Example:
      >>> label_ids(5)
      (1, 2, 3, 4, 5)
    """
    return tuple(range(1, ways + 1))


def token_layout(vocab_size: int, label_tokens: int, fillers: int) -> dict[str, range]:
    """The id ranges of the labels, fillers and keys.

    Example:
      >>> {k: (v.start, v.stop) for k, v in token_layout(64, 8, 16).items()}
      {'labels': (1, 9), 'fillers': (9, 25), 'keys': (25, 64)}
    """
    for name, value, low in (("vocab_size", vocab_size, 8), ("label_tokens", label_tokens, 2),
                             ("fillers", fillers, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"token_mappings: {name} must be an int >= {low}; got {value!r}.")
    first_key = 1 + label_tokens + fillers
    if vocab_size - first_key < 3:
        raise ValueError(f"token_mappings: vocab_size={vocab_size} leaves "
                         f"{max(vocab_size - first_key, 0)} key tokens after padding, "
                         f"{label_tokens} labels and {fillers} fillers; at least 3 are needed "
                         "(one class per split).")
    return {"labels": range(1, 1 + label_tokens), "fillers": range(1 + label_tokens, first_key),
            "keys": range(first_key, vocab_size)}


def make_token_mappings(*, vocab_size: int = 64, length: int = 2, label_tokens: int = 8,
                        fillers: int = 16, examples: int = 20,
                        seed: int = 0) -> dict[str, ClassDataset]:
    """The three splits of the family: ``{"train", "val", "test"}`` datasets of token ids
    ``int32 [n, length]``, one class per ordered pair of distinct key tokens, the pairs split
    like BANKING77's intents (:func:`jmeta.data.random_class_split` with ``seed``: 65 / 13 /
    22%).

    Each class has ``examples`` sequences: ``length - 2`` fillers drawn uniformly (with
    replacement), then the pair, all from ``numpy.random.default_rng(seed)``.

    Example:
      >>> splits = make_token_mappings()
      >>> {k: v.num_classes for k, v in splits.items()}
      {'train': 963, 'val': 192, 'test': 327}
      >>> splits["test"].class_names[0], splits["test"].data[0].tolist()
      ('25-27', [25, 27])
      >>> make_token_mappings(length=4)["train"].data[0].tolist()
      [22, 21, 25, 28]
    """
    layout = token_layout(vocab_size, label_tokens, fillers)
    for name, value, low in (("length", length, 2), ("examples", examples, 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"token_mappings: {name} must be an int >= {low}; got {value!r}.")
    keys = np.asarray(layout["keys"])
    pairs = np.array([(a, b) for a in keys for b in keys if a != b])
    rng = np.random.default_rng(seed)
    data = rng.integers(layout["fillers"].start, layout["fillers"].stop,
                        size=(len(pairs), examples, length))
    data[:, :, -2:] = pairs[:, None, :]
    names = [f"{a}-{b}" for a, b in pairs]
    pooled = ClassDataset.from_labels(data.reshape(-1, length).astype(np.int32),
                                      np.repeat(np.arange(len(pairs)), examples), names,
                                      name="token_mappings", split="all")
    split = random_class_split(names, seed=seed)
    # Classes in pair order within each split (random_class_split sorts names as strings).
    order = {n: i for i, n in enumerate(names)}
    return {s: select_classes(pooled, sorted(c, key=order.get), s) for s, c in split.items()}


def encode_tokens(examples, length: int, vocab_size: int) -> np.ndarray:
    """A user's examples as ``int32 [N, length]``: token ids already so shaped, sequences of
    ints, or strings of ``length`` whitespace-separated ids (a CSV's text column, for
    ``jmeta predict``).

    Example:
      >>> encode_tokens(["25 9 9 9", [26, 9, 10, 11]], 4, 64).tolist()
      [[25, 9, 9, 9], [26, 9, 10, 11]]
      >>> encode_tokens(["25 9"], 4, 64)
      Traceback (most recent call last):
        ...
      ValueError: Example 0 has 2 token ids; this dataset's examples have 4.
    """
    if isinstance(examples, (str, bytes)):
        raise ValueError("Pass a list of examples (strings of token ids, or id sequences); got "
                         "one string.")
    rows = []
    for i, ex in enumerate(list(examples)):
        if isinstance(ex, str):
            try:
                ex = [int(t) for t in ex.split()]
            except ValueError:
                raise ValueError(f"Example {i} ({ex!r}) is not a list of integer token ids "
                                 "separated by spaces.") from None
        ids = np.asarray(ex)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise ValueError(f"Example {i} must be a sequence of integer token ids; got "
                             f"{ids.dtype} of shape {ids.shape}.")
        if ids.shape[0] != length:
            raise ValueError(f"Example {i} has {ids.shape[0]} token ids; this dataset's examples "
                             f"have {length}.")
        if ids.min(initial=0) < 0 or ids.max(initial=0) >= vocab_size:
            raise ValueError(f"Example {i} has a token id outside [0, {vocab_size}).")
        rows.append(ids)
    return np.stack(rows).astype(np.int32) if rows else np.zeros((0, length), np.int32)


def _same(ids):
    return ids


@register("token_mappings")
def _token_mappings(*, data_dir: str = "", cache_dir: str = "", vocab_size: int = 64,
                    length: int = 2, label_tokens: int = 8, fillers: int = 16,
                    examples: int = 20, seed: int = 0) -> ClassSplits:
    """``data=dict(name="token_mappings", ...)``: the synthetic key-pair family (generated,
    nothing read or cached; ``data_dir`` and ``cache_dir`` are unused). Verbalisers: label ``c``
    is token ``1 + c`` (``jmeta.data.label_ids``)."""
    del data_dir, cache_dir
    token_layout(vocab_size, label_tokens, fillers)  # errors before anything is generated
    load_all = functools.lru_cache(1)(functools.partial(
        make_token_mappings, vocab_size=vocab_size, length=length, label_tokens=label_tokens,
        fillers=fillers, examples=examples, seed=seed))
    return ClassSplits(lambda split: load_all()[split], (length,), inputs="tokens",
                       encode=functools.partial(encode_tokens, length=length,
                                                vocab_size=vocab_size),
                       eval_chunk=10, sparse_eval=True, sampler=token_sampler,
                       host_transform=_same)


