"""Losses and metrics for classification episodes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels.

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(cross_entropy_loss(jnp.zeros((2, 4)), jnp.array([0, 3]))), 4)
      1.3863
    """
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def accuracy(logits: jax.Array, labels: jax.Array) -> dict:
    """``{"accuracy": fraction of argmax predictions equal to the labels}``.

    Example:
      >>> import jax.numpy as jnp
      >>> float(accuracy(jnp.array([[2.0, 1.0], [0.0, 1.0]]), jnp.array([0, 0]))["accuracy"])
      0.5
    """
    return {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
