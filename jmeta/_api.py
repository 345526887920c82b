"""A trained run as an object: ``jmeta.load(RUN_DIR)`` adapts to new support sets and predicts."""

from __future__ import annotations

import os
from pathlib import Path
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
        """``[N, ways]`` class probabilities of the query images (raw or preprocessed)."""
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
        return self.config.ways

    @property
    def test_steps(self) -> int:
        """Inner steps used at test time by default: the largest of the config's ``eval_steps``."""
        return max(self.config.eval_steps) if self.config.eval_steps else self.learner.num_steps

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

    def adapt(self, support_x, support_y: Sequence, *, num_steps: int | None = None) -> AdaptedLearner:
        """Adapts to a labelled support set (N-way K-shot) and returns the adapted learner.

        ``support_y`` holds any hashable labels (strings or ints); they are mapped to
        ``0..N-1`` in sorted order. ``num_steps`` defaults to :attr:`test_steps`.

        Raises ``ValueError`` when the number of classes differs from what the learner can
        handle (a gradient-based learner's head has exactly ``ways`` outputs).
        """
        from jmeta.train._config import WAYS_FREE

        x = self.preprocess(support_x)
        labels = sorted(set(support_y), key=_sort_key)
        if len(support_y) != len(x):
            raise ValueError(f"{len(x)} support images but {len(support_y)} labels.")
        if len(labels) < 2:
            raise ValueError("The support set needs at least 2 distinct labels.")
        fixed = self.config.algorithm not in WAYS_FREE
        if fixed and len(labels) != self.ways:
            raise ValueError(
                f"This {self.config.algorithm} learner was trained {self.ways}-way (its head has "
                f"{self.ways} outputs); the support set has {len(labels)} classes: {labels[:10]}."
            )
        index = {label: i for i, label in enumerate(labels)}
        y = jnp.asarray([index[label] for label in support_y], jnp.int32)
        steps = self.test_steps if num_steps is None else num_steps
        adapt, predict = self._compiled(len(labels))
        params = adapt(self.meta_params, Batch(jnp.asarray(x), y), steps)
        return AdaptedLearner(self.preprocess, predict, params, labels)

    def _compiled(self, ways: int):
        """Jitted ``(adapt, predict)`` for ``ways`` classes (metric-based learners take any)."""
        if ways not in self._by_ways:
            from jmeta.train._build import build_learner, model_task

            cfg = self.config.replace(ways=ways)
            learner = build_learner(cfg, model_task(cfg))
            self._by_ways[ways] = (
                jax.jit(lambda m, s, n: learner.adapt(m, s, num_steps=n)[0], static_argnums=2),
                jax.jit(learner.predict),
            )
        return self._by_ways[ways]


def _sort_key(label):
    return (0, label) if isinstance(label, (int, np.integer)) else (1, str(label))


def _convert(image, fmt: dict) -> np.ndarray:
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            im = im.convert(fmt["mode"])
            im.load()
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
    ``"final"`` the final meta-parameters, an int that step. No dataset is needed.

    Example::

        learner = jmeta.load("runs/omniglot_protonets")
        adapted = learner.adapt(support_images, ["a", "b", "c", "d", "e"])
        adapted.predict(query_images)          # labels
        adapted.predict_proba(query_images)    # [N, 5] probabilities
    """
    from jmeta.train._build import build_learner, image_format, model_task
    from jmeta.train._checkpoint import restore_tree
    from jmeta.train._loop import _checkpoint_params, _pick_checkpoint, load_run_config

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if cfg.task == "sinusoid":
        raise ValueError(f"{run_dir} is a sinusoid regression run; jmeta.load serves classification runs.")
    learner = build_learner(cfg, model_task(cfg))
    step, _ = _pick_checkpoint(run_dir, cfg, checkpoint)
    if step is not None:
        meta = _checkpoint_params(run_dir, cfg, learner, step)
    else:
        final = run_dir / "checkpoints" / "meta"
        if not final.exists():
            raise FileNotFoundError(f"{run_dir} has no checkpoint yet (no {final}).")
        meta = restore_tree(final, jax.eval_shape(learner.init, jax.random.key(0)))
        from jmeta.train._loop import _final_step

        step = _final_step(run_dir)
    return TrainedLearner(cfg, learner, meta, step, image_format(cfg))
