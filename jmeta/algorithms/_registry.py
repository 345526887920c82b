"""The registry of algorithms: ``learner=dict(name=..., ...)`` in a config.

An algorithm is registered with its factory, ``register("maml", maml)``: its config options are
the factory's keyword arguments, and the build supplies what comes from the other components
(``reserved`` below) when the factory takes it. An algorithm that needs more registers a builder
``(env, **options) -> MetaLearner`` instead. ``env`` is what the build knows of the other
components:

* ``env.build(factory, options, network=...)``: the generic path, the factory called on the
  configured model with the options and the supplied arguments;
* ``env.model(network)``: the configured model, ``"classifier"`` (a head over the episode's
  classes, or the regression target), ``"embedding"`` (no head: the learner builds its
  classifier from the support set, and its tasks share the network's weights) or ``"lm"`` (a
  language model's next-token logits, shared weights: in-context learners such as MetaICL);
* ``env.ways``, ``env.loss_fn``, ``env.metric_fn``, ``env.input_shape``, ``env.support_size``
  (support examples of a training episode), ``env.meta_steps``, ``env.base_classes()``;
* ``env.rule(lr, inner_steps)``: the configured inner rule, or ``None`` for the learner's own.
"""

from __future__ import annotations

from collections.abc import Callable

from jmeta.core._registry import Registry

RESERVED = ("model", "ways", "loss_fn", "metric_fn", "rule", "adapt_filter", "num_classes",
            "input_shape", "embed_dim", "name", "env")
"""Factory arguments the build supplies from the other components; never config options."""

ALGORITHMS = Registry("algorithm", reserved=RESERVED)
"""``name -> builder(env, **options) -> MetaLearner``."""

NETWORKS = ("classifier", "embedding", "lm")


def register(name: str, factory: Callable | None = None, *, network: str = "classifier",
             fixed: dict | None = None, options: Callable | None = None):
    """Registers an algorithm for configs (``learner=dict(name=name, ...)``).

    ``register(name, factory)``: the factory is called as ``factory(model, **options)`` with the
    config's options, ``fixed`` (options the name implies, e.g. ``fce=True``) and whatever of
    :data:`RESERVED` it accepts; ``network`` chooses the model (see the module docstring).
    Without ``factory``, a decorator for a builder ``(env, **options)``, whose options are the
    keyword arguments of ``options`` (default: the builder's own).

    Example (what ``jmeta/algorithms/_gradient.py`` registers for MAML):
      >>> from jmeta.algorithms import ALGORITHMS
      >>> sorted(ALGORITHMS["maml"].options)
      ['first_order', 'inner_lr', 'inner_steps', 'remat', 'truncate', 'unroll']
    """
    if network not in NETWORKS:
        raise ValueError(f"register: network must be one of {NETWORKS}; got {network!r}.")
    if factory is None:
        return ALGORITHMS.register(name, options=options, network=network)
    fixed = dict(fixed or {})

    def build(env, **opts):
        return env.build(factory, {**opts, **fixed}, network=network)

    build.__module__ = factory.__module__
    build.__qualname__ = f"{factory.__qualname__}@{name}"
    ALGORITHMS.register(name, build, options=factory, exclude=tuple(fixed), network=network)
    return factory
