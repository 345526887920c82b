"""The registry of models: ``model=dict(name=..., ...)`` in a config."""

from __future__ import annotations

from typing import NamedTuple

from jmeta.core._registry import ConfigError, Registry


class ModelSpec(NamedTuple):
    """What the other components of a config ask of the model built for them.

    Attributes:
      input_shape: one example's shape: ``(28, 28, 1)`` images, ``(1,)`` sinusoid inputs,
        ``(32,)`` token ids.
      inputs: ``"images"`` (float, ``[..., H, W, C]``), ``"vectors"`` or ``"tokens"`` (int ids).
      outputs: the size of the linear head (the episode's classes, or the regression target's
        size), or ``None`` for an embedding network (the learner builds its classifier from
        the support set).
      shared_weights: the learner's tasks all use the network's meta-parameters (metric learners,
        transfer baselines), rather than adapting weights of their own.
      next_tokens: the learner reads a language model's next-token logits: the model's
        ``apply(params, ids, positions=None)`` returns ``[..., L, vocab]``, or the rows at
        ``positions [..., n]`` only (MetaICL); only models registered with
        ``language_model=True`` give them.

    Example:
      >>> ModelSpec((28, 28, 1), "images", 5).outputs
      5
    """

    input_shape: tuple
    inputs: str
    outputs: int | None
    shared_weights: bool = False
    next_tokens: bool = False


MODELS = Registry("model", reserved=("spec",))
"""``name -> builder(spec: ModelSpec, **options) -> Model`` (or a ``ContextModel``)."""

register = MODELS.register


def square_images(spec: ModelSpec, name: str) -> tuple[int, int]:
    """``(size, channels)`` of square images ``[S, S, C]``; a :class:`ConfigError` otherwise.

    Example:
      >>> square_images(ModelSpec((28, 28, 1), "images", 5), "conv4")
      (28, 1)
    """
    shape = tuple(spec.input_shape)
    if spec.inputs != "images" or len(shape) != 3 or shape[0] != shape[1]:
        raise ConfigError(f"model {name!r} needs square images [S, S, C]; the dataset gives "
                          f"{spec.inputs} of shape {shape}.")
    return shape[0], shape[2]


def real_inputs(spec: ModelSpec, name: str) -> None:
    """A :class:`ConfigError` for token ids, which a network on real-valued inputs cannot read.

    Example:
      >>> real_inputs(ModelSpec((4,), "vectors", 1), "mlp")
    """
    if spec.inputs == "tokens":
        raise ConfigError(f"model {name!r} reads real-valued inputs; the dataset gives token "
                          "ids: use a text encoder (model name 'bert').")
