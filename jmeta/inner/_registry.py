"""The registry of inner update rules: ``rule=dict(name=..., ...)`` in a config."""

from __future__ import annotations

from jmeta.core._registry import Registry

RULES = Registry("inner rule", reserved=("lr", "inner_steps"))
"""``name -> builder(lr, inner_steps, **options) -> InnerRule``: ``lr`` and ``inner_steps`` are
the learner's step size and number of inner steps; the options are the rule's own."""

register = RULES.register
