"""The MLP of the MAML paper's sinusoid experiments."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jmeta.models._functional import Model, flatten_inputs, from_nnx
from jmeta.models._registry import ModelSpec, real_inputs, register


def _uniform_fan_in(fan_in: int):
    # PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
    # He initialisation made the inner loop diverge at lr 0.01 on the sinusoid; this does not.
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class MLP(nnx.Module):
    """A fully connected network: ``hidden`` ReLU layers then a linear ``head``.

    Parameters are named ``hidden_0``, ``hidden_1``, ... and ``head`` (ANIL adapts ``head``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> net = MLP(1, 1, hidden=(40, 40), rngs=nnx.Rngs(0))
      >>> net(jnp.zeros((5, 1))).shape
      (5, 1)
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int], *, rngs: nnx.Rngs):
        self.num_hidden = len(hidden)
        sizes = [in_features, *hidden]
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            init = _uniform_fan_in(a)
            setattr(self, f"hidden_{i}", nnx.Linear(a, b, kernel_init=init, bias_init=init, rngs=rngs))
        init = _uniform_fan_in(sizes[-1])
        self.head = nnx.Linear(sizes[-1], out_features, kernel_init=init, bias_init=init, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """The inputs of the linear ``head``: the last hidden layer's activations."""
        for i in range(self.num_hidden):
            x = jax.nn.relu(getattr(self, f"hidden_{i}")(x))
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.features(x))


def mlp(in_features: int = 1, out_features: int = 1, hidden: Sequence[int] = (40, 40)) -> Model:
    """The MAML sinusoid network (1 -> 40 -> 40 -> 1, ReLU) as a functional :class:`Model`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = mlp()
      >>> params = model.init(jax.random.key(0))
      >>> sorted(params)
      ['head', 'hidden_0', 'hidden_1']
      >>> model.apply(params, jnp.zeros((10, 1))).shape
      (10, 1)
    """
    hidden = tuple(int(h) for h in hidden)
    if in_features < 1 or out_features < 1 or any(h < 1 for h in hidden):
        raise ValueError(
            f"mlp: every layer size must be a positive int; got in={in_features}, "
            f"out={out_features}, hidden={hidden}."
        )
    return from_nnx(lambda rngs: MLP(in_features, out_features, hidden, rngs=rngs), family="dense")


@register("mlp")
def _from_config(spec: ModelSpec, *, hidden: Sequence[int] = (40, 40)) -> Model:
    """``model=dict(name="mlp", hidden=...)``: inputs flattened; as an embedding network (no
    head requested) the last hidden width is the embedding's, without a ReLU."""
    real_inputs(spec, "mlp")
    hidden = tuple(hidden)
    in_dim = math.prod(spec.input_shape)
    if spec.outputs is None:
        model = mlp(in_dim, hidden[-1], hidden=hidden[:-1])
    else:
        model = mlp(in_dim, spec.outputs, hidden=hidden)
    return model if len(spec.input_shape) == 1 else flatten_inputs(model)

