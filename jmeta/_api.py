"""A trained run as an object: ``jmeta.load(RUN_DIR)`` adapts to new support sets and predicts.

Image runs adapt to images (files, PIL images, arrays); runs on a dataset with its own encoding
(text: ``data.name="banking77"`` or ``"text"``) to its raw examples, lists of strings,
tokenized as in training.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.core._types import Batch


class AdaptedLearner:
    """A learner adapted to one support set; predicts labels and probabilities for queries.

    Made by :meth:`TrainedLearner.adapt`. ``labels`` are the support set's distinct labels in
    sorted order: column ``j`` of :meth:`predict_proba` is the probability of ``labels[j]``.
    """

    def __init__(self, preprocess, predict, task_params, labels: list):
        self._preprocess = preprocess
        self._predict = predict
        self.task_params = task_params
        self.labels = labels

    def predict_proba(self, queries) -> np.ndarray:
        """``[N, ways]`` class probabilities of the queries (images, raw or preprocessed; or
        texts for a text run)."""
        x = self._preprocess(queries)
        logits = self._predict(self.task_params, jnp.asarray(x))
        return np.asarray(jax.nn.softmax(logits.astype(jnp.float32), axis=-1))

    def predict(self, queries) -> list:
        """The predicted label (one of the support set's labels) of every query."""
        return [self.labels[i] for i in np.argmax(self.predict_proba(queries), axis=-1)]


class TrainedLearner:
    """A meta-trained learner loaded from a run directory (see :func:`load`).

    Attributes:
      config: the run's :class:`jmeta.train.Config`.
      learner: the :class:`jmeta.core.MetaLearner`.
      meta_params: the meta-parameters (the best checkpoint on the validation classes by
        default).
      checkpoint_step: the training step those parameters come from.
      image_format: how training images were made: size, channels, PIL mode, inversion.
    """

    def __init__(self, config, learner, meta_params, checkpoint_step, image_format: dict):
        self.config = config
        self.learner = learner
        self.meta_params = meta_params
        self.checkpoint_step = checkpoint_step
        self.image_format = image_format
        self._by_ways = {}

    @property
    def ways(self) -> int:
        return self.config.data.ways

    @property
    def test_steps(self) -> int:
        """Inner steps used at test time by default: the largest of the config's ``eval.steps``."""
        return max(self.config.eval.steps) if self.config.eval.steps else self.learner.inner_steps

    def preprocess(self, images) -> np.ndarray:
        """Images as the network saw them in training: ``float32 [N, S, S, C]`` in [0, 1].

        Accepts image file paths, PIL images, or arrays: ``uint8`` images of any size
        ``[N, H, W]`` / ``[N, H, W, C]`` (converted, resized and, for Omniglot, inverted exactly
        as the training data were), or ``float`` arrays already preprocessed (``[N, S, S, C]``
        in [0, 1], used as they are).
        """
        fmt = self.image_format
        shape = (fmt["size"], fmt["size"], fmt["channels"])
        if isinstance(images, np.ndarray) and images.dtype.kind == "f":
            if images.shape[1:] != shape:
                raise ValueError(
                    f"Preprocessed images must have shape [N, {shape[0]}, {shape[1]}, {shape[2]}]; "
                    f"got {images.shape}. Pass raw uint8 images or files to have them converted."
                )
            return images.astype(np.float32)
        if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim in (3, 4):
            images = list(images)
        if isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
            raise ValueError(
                "images must be a list of image files / PIL images / uint8 arrays, or an array "
                f"[N, H, W(, C)]; got {type(images).__name__}."
            )
        return np.stack([_convert(im, fmt) for im in images]).astype(np.float32) / 255.0

    def adapt(self, support_x, support_y: Sequence, *, inner_steps: int | None = None,
              classes: Sequence | None = None) -> AdaptedLearner:
        """Adapts to a labelled support set (N-way K-shot) and returns the adapted learner.

        ``support_y`` holds any hashable labels (strings or ints); they are mapped to
        ``0..N-1`` in sorted order, or in the order of ``classes`` when given (then every
        class needs at least one support example, and every label must be one of them).
        ``inner_steps`` defaults to :attr:`test_steps`.

        Raises ``ValueError`` for an empty support set, a class without support examples, or
        a number of classes the learner cannot handle (a gradient-based learner's head has
        exactly ``ways`` outputs).
        """
        if isinstance(support_y, str):
            raise ValueError("support_y must be a list of labels, one per support example; got "
                             "one string.")
        support_y = list(support_y)
        if not support_y:
            raise ValueError("The support set is empty: give at least one labelled example per "
                             "class.")
        x = self.preprocess(support_x)
        if len(support_y) != len(x):
            raise ValueError(f"{len(x)} support examples but {len(support_y)} labels.")
        labels = _class_order(support_y, classes)
        if len(labels) < 2:
            raise ValueError("The support set needs at least 2 distinct labels.")
        if not self.learner.any_ways and len(labels) != self.ways:
            raise ValueError(
                f"This {self.config.learner.name} learner was trained {self.ways}-way (its head has "
                f"{self.ways} outputs); the support set has {len(labels)} classes: {labels[:10]}."
            )
        index = {label: i for i, label in enumerate(labels)}
        y = jnp.asarray([index[label] for label in support_y], jnp.int32)
        steps = self.test_steps if inner_steps is None else inner_steps
        adapt, predict = self._compiled(len(labels))
        params = adapt(self.meta_params, Batch(jnp.asarray(x), y), steps)
        return AdaptedLearner(self.preprocess, predict, params, labels)

    def _compiled(self, ways: int):
        """Jitted ``(adapt, predict)`` for ``ways`` classes (metric-based learners take any)."""
        if ways not in self._by_ways:
            self._by_ways[ways] = _jitted(self.config, ways)
        return self._by_ways[ways]


@functools.lru_cache(maxsize=16)
def _jitted(config, ways: int):
    """``(adapt, predict)`` jitted once per config and ways in a process: runs loaded again (or
    by ``jmeta predict`` after ``jmeta.load``) reuse the compiled functions."""
    from jmeta.train import build_learner, model_task

    cfg = config.replace(data=dict(ways=ways), eval=dict(ways=0))
    learner = build_learner(cfg, model_task(cfg), test=True)
    return (jax.jit(lambda m, s, n: learner.adapt(m, s, inner_steps=n)[0], static_argnums=2),
            jax.jit(learner.predict))


class TextLearner(TrainedLearner):
    """A meta-trained learner on a dataset with its own encoding of raw examples (text:
    ``data.name="banking77"`` or ``"text"``), loaded by :func:`load`.

    Support sets and queries are the dataset's raw examples, lists of strings for text,
    encoded exactly as in training (the run's ``max_length`` and tokenizer); predictions are
    the support set's label names.

    Example::

        learner = jmeta.load("runs/banking77_maml-5w1s")
        adapted = learner.adapt(["card never came", "what is the fee", "reset my PIN",
                                 "top up failed", "I want a refund"],
                                ["arrival", "fee", "pin", "top_up", "refund"])
        adapted.predict(["Where is my new card?", "Refund please"])   # ['arrival', 'refund']
    """

    def __init__(self, config, learner, meta_params, checkpoint_step, encode):
        super().__init__(config, learner, meta_params, checkpoint_step, image_format={})
        self._encode = encode

    @property
    def max_length(self) -> int:
        return self.config.data.max_length

    def preprocess(self, texts) -> np.ndarray:
        """Model inputs of raw examples: token ids ``int32 [N, max_length]`` of a list of
        strings (or ids already made so, used as they are)."""
        return self._encode(texts)


def _class_order(support_y: list, classes) -> list:
    """The classes in label-index order: ``classes`` (checked against the labels) or the sorted
    distinct labels."""
    if classes is None:
        return sorted(set(support_y), key=_sort_key)
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes repeats a name: {classes}.")
    unknown = sorted({y for y in support_y if y not in set(classes)}, key=_sort_key)
    if unknown:
        raise ValueError(f"Support labels {unknown[:10]} are not among the classes {classes}.")
    present = set(support_y)
    missing = [c for c in classes if c not in present]
    if missing:
        raise ValueError(f"Class {missing[0]!r} has no support example (classes without any: "
                         f"{missing[:10]}); every class needs at least one labelled example.")
    return classes


def _sort_key(label):
    return (0, label) if isinstance(label, (int, np.integer)) else (1, str(label))


def _convert(image, fmt: dict) -> np.ndarray:
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as im:
                im = im.convert(fmt["mode"])
                im.load()
        except (OSError, SyntaxError) as err:  # PIL's UnidentifiedImageError is an OSError
            raise ValueError(f"Cannot read the image {image}: {err}") from None
    elif isinstance(image, Image.Image):
        im = image.convert(fmt["mode"])
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise ValueError(f"Raw images must be uint8; got {arr.dtype} (pass preprocessed "
                             "float images as one array [N, S, S, C]).")
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        im = Image.fromarray(arr).convert(fmt["mode"])
    size = fmt["size"]
    if im.size != (size, size):
        resample = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}
        im = im.resize((size, size), resample[fmt["resampling"]])
    arr = np.asarray(im, np.uint8)
    if fmt["invert"]:
        arr = 255 - arr
    return arr[..., None] if arr.ndim == 2 else arr


def load(run_dir: str | os.PathLike, *, checkpoint: str | int = "best") -> TrainedLearner:
    """Loads a trained classification run: a learner that adapts to any support set.

    ``checkpoint="best"`` (default) takes the checkpoint with the best validation score,
    ``"final"`` the final meta-parameters, an int that step. No dataset is needed. A run on a
    dataset with its own encoding gives a :class:`TextLearner` (support and queries are lists
    of strings).

    Example::

        learner = jmeta.load("runs/omniglot_protonets")
        adapted = learner.adapt(support_images, ["a", "b", "c", "d", "e"])
        adapted.predict(query_images)          # labels
        adapted.predict_proba(query_images)    # [N, 5] probabilities

        texts = jmeta.load("runs/banking77_protonets-5w1s")
        adapted = texts.adapt(["I lost my card", "How do I top up?"], ["lost", "top_up"])
        adapted.predict(["my card was stolen"])    # ['lost']
    """
    from jmeta.train import RunDir, model_task

    run = RunDir(run_dir)
    cfg = run.config
    task = model_task(cfg)
    if not task.classification:
        raise ValueError(f"{run_dir} is a {cfg.data.name} regression run; jmeta.load serves "
                         "classification runs.")
    meta, step = run.params(checkpoint, cfg=cfg, task=task)
    learner = run.setup(cfg, task).learner
    if task.data.encode is not None:
        return TextLearner(cfg, learner, meta, step, task.data.encode)
    return TrainedLearner(cfg, learner, meta, step, task.data.image_format)
