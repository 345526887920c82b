"""Recurrent, learned inner update rules: the LSTM meta-learner of Ravi & Larochelle (2017) and
the coordinate-wise LSTM optimizer of Andrychowicz et al. (2016).

Both are coordinate-wise: one small LSTM, its weights shared by every coordinate of every
parameter tensor, reads that coordinate's (preprocessed) gradient and keeps a hidden state per
coordinate in the rule's state. Their meta-parameters therefore have a fixed size, independent
of the model (a few thousand numbers), and any model can be adapted by them. The coordinates of
all adapted tensors are processed as one vector (in the order of ``jax.tree.leaves``), so the
rule's state is a few arrays with one row per coordinate, and one LSTM is compiled, not one per
tensor (several times faster to compile).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jmeta.core._checks import check_int, check_number, check_range
from jmeta.core._inner import InnerRule
from jmeta.core._types import PRNGKey
from jmeta.inner._registry import register


def preprocess_gradients(x: jax.Array, p: float = 10.0) -> jax.Array:
    """The gradient preprocessing of Andrychowicz et al. (2016), appendix A: each value ``x``
    becomes two, ``(log|x| / p, sign x)`` if ``|x| >= exp(-p)`` and ``(-1, exp(p) x)``
    otherwise, stacked on a new last axis. Both halves stay of order one for gradients that span
    many orders of magnitude, and the map is differentiable (the logarithm never sees 0).

    Example:
      >>> import jax.numpy as jnp
      >>> preprocess_gradients(jnp.array([-1.0, 0.0, 1e-6]), p=10.0).round(3)
      Array([[ 0.   , -1.   ],
             [-1.   ,  0.   ],
             [-1.   ,  0.022]], dtype=float32)
    """
    if not p > 0:
        raise ValueError(f"preprocess_gradients: p must be positive; got {p!r}.")
    x = jnp.asarray(x)
    threshold = math.exp(-p)
    big = jnp.abs(x) >= threshold
    log = jnp.log(jnp.maximum(jnp.abs(x), threshold)) / p
    first = jnp.where(big, log, -1.0)
    second = jnp.where(big, jnp.sign(x), math.exp(p) * x)
    return jnp.stack([first, second], axis=-1).astype(x.dtype)


def lstm_init(key: PRNGKey, in_features: int, hidden: int) -> dict:
    """Parameters of one LSTM cell (:func:`lstm_cell`): ``{"kernel": [in + hidden, 4 * hidden],
    "bias": [4 * hidden]}``, gates ordered (input, forget, candidate, output), uniform in
    ``+-1/sqrt(hidden)`` (PyTorch's default).

    Example:
      >>> import jax
      >>> p = lstm_init(jax.random.key(0), 3, 4)
      >>> p["kernel"].shape, p["bias"].shape
      ((7, 16), (16,))
    """
    bound = 1.0 / math.sqrt(hidden)
    k_kernel, k_bias = jax.random.split(key)
    kernel = jax.random.uniform(k_kernel, (in_features + hidden, 4 * hidden), jnp.float32,
                                -bound, bound)
    bias = jax.random.uniform(k_bias, (4 * hidden,), jnp.float32, -bound, bound)
    return {"kernel": kernel, "bias": bias}


def lstm_cell(p: dict, x: jax.Array, h: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One LSTM step on rows ``x [..., in]`` with recurrent input ``h [..., recurrent]`` and cell
    ``c [..., hidden]``: ``c' = f * c + i * tanh(g)``, ``h' = o * tanh(c')``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> p = lstm_init(jax.random.key(0), 3, 4)
      >>> h, c = lstm_cell(p, jnp.ones((2, 3)), jnp.zeros((2, 4)), jnp.zeros((2, 4)))
      >>> h.shape, c.shape
      ((2, 4), (2, 4))
    """
    z = jnp.concatenate([x, h], axis=-1) @ p["kernel"] + p["bias"]
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


# Rematerialised in the learned rules: the backward pass keeps the cell's inputs and recomputes
# its 4 x hidden gate activations per coordinate (30 times the size of the parameters at hidden
# 20) instead of storing them; on CPU this made the meta-gradient of a 5-step Meta-LSTM loop
# over Conv-4's 112k coordinates 28% faster, and it holds less memory. Values are the same.
_remat_cell = jax.checkpoint(lstm_cell)


def _num_coordinates(params) -> int:
    return sum(int(math.prod(p.shape)) for p in jax.tree.leaves(params))


def _flatten(tree):
    """All coordinates of ``tree`` as one float32 vector, and the map back to ``tree``'s shapes
    and dtypes. One LSTM over every coordinate compiles several times faster than one per
    parameter tensor."""
    leaves, treedef = jax.tree.flatten(tree)
    flat = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves] or [jnp.zeros(0)])

    def unflatten(vector):
        out, offset = [], 0
        for x in leaves:
            out.append(vector[offset:offset + x.size].reshape(x.shape).astype(x.dtype))
            offset += x.size
        return jax.tree.unflatten(treedef, out)

    return flat, unflatten


def meta_lstm(
    hidden: int = 20,
    *,
    second_order: bool = False,
    forget_bias: float | tuple[float, float] = (4.0, 6.0),
    input_bias: float | tuple[float, float] = (-5.0, -4.0),
    gate_init: float = 0.01,
    preprocess: float = 10.0,
) -> InnerRule:
    """The LSTM meta-learner of Ravi & Larochelle (2017, "Optimization as a model for few-shot
    learning"): an LSTM whose cell state is the learner's parameters.

    Every coordinate ``theta`` of the adapted parameters follows the cell-state update
    ``theta_t = f_t * theta_{t-1} + i_t * (-grad_t)``, so the inner update is
    ``(f_t - 1) * theta_{t-1} - i_t * grad_t``. The learned input gate ``i_t`` is a per-coordinate,
    per-step learning rate and the forget gate ``f_t`` a learned shrinkage:

        i_t = sigmoid(W_I . [h_t, theta_{t-1}, i_{t-1}] + b_I)
        f_t = sigmoid(W_F . [h_t, theta_{t-1}, f_{t-1}] + b_F)

    where ``h_t`` is the output of the paper's first layer, a standard LSTM (``hidden`` units)
    on the preprocessed gradient and support loss (:func:`preprocess_gradients`, 4 inputs per
    coordinate). Both layers are coordinate-wise: their weights are shared by all coordinates and
    each coordinate has its own LSTM state and previous gate values, kept in the rule's state:
    ``{"h", "c"}`` of shape ``[n, hidden]`` and ``{"f", "i"}`` of shape ``[n]`` for the ``n``
    adapted coordinates (the previous gates start at 0). The rule reads the support loss, so it sets
    ``needs_loss=True`` (see :class:`jmeta.core.InnerRule`).

    The initial cell state (the learner's initial parameters) is meta-learned too: in
    :func:`jmeta.algorithms.gradient_learner` (MAML, first-order MAML, ANIL...) it is
    ``meta["model"]`` and the LSTM's weights are ``meta["rule"]``. The paper's BatchNorm uses
    the batch statistics of each set at training and test time, which is the library's
    ``bn_mode="transductive"``, the default.

    Args:
      hidden: units of the first LSTM layer (20 in the paper).
      second_order: ``False`` (the paper's choice) treats the gradient and the loss as inputs:
        the meta-gradient does not flow back through them (no second derivatives; it still flows
        through ``theta_{t-1}`` into the gates and the cell state). ``True`` backpropagates
        through them as well (then the learner's ``first_order`` decides about the gradients).
      forget_bias, input_bias: the gate biases at initialisation, a number or a ``(low, high)``
        range drawn uniformly. The paper's defaults make ``f ~ 1`` and ``i ~ 0.01``: the rule
        starts close to SGD with a small step.
      gate_init: the gate weights start uniform in ``(-gate_init, gate_init)``.
      preprocess: ``p`` of :func:`preprocess_gradients`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> rule = meta_lstm()
      >>> params = {"w": jnp.ones((3, 2))}
      >>> rule_meta = rule.init_meta(jax.random.key(0), params)
      >>> sorted(rule_meta), rule_meta["lstm"]["kernel"].shape
      (['forget_gate', 'input_gate', 'lstm'], (24, 80))
      >>> state = rule.init(params)
      >>> state["h"].shape, state["f"].shape
      ((6, 20), (6,))
      >>> updates, state = rule.update({"w": jnp.ones((3, 2))}, state, params, rule_meta,
      ...                              loss=jnp.float32(0.5))
      >>> bool(jnp.all((updates["w"] < 0) & (updates["w"] > -0.05)))  # near SGD, small step
      True
    """
    name = "meta_lstm"
    check_int(f"{name}: hidden", hidden)
    f_lo, f_hi = check_range(f"{name}: forget_bias", forget_bias)
    i_lo, i_hi = check_range(f"{name}: input_bias", input_bias)
    check_number(f"{name}: gate_init", gate_init, strict=False)
    check_number(f"{name}: preprocess", preprocess)

    def init_meta(key, params):
        del params  # shared by every coordinate: the size does not depend on the model
        k_lstm, k_i, k_f, k_bi, k_bf = jax.random.split(key, 5)

        def gate(k_w, k_b, lo, hi):
            return {
                "kernel": jax.random.uniform(k_w, (hidden + 2,), jnp.float32,
                                             -gate_init, gate_init),
                "bias": jax.random.uniform(k_b, (), jnp.float32, lo, hi),
            }

        return {
            "lstm": lstm_init(k_lstm, 4, hidden),
            "input_gate": gate(k_i, k_bi, i_lo, i_hi),
            "forget_gate": gate(k_f, k_bf, f_lo, f_hi),
        }

    def init(params):
        n = _num_coordinates(params)
        return {
            "h": jnp.zeros((n, hidden), jnp.float32),
            "c": jnp.zeros((n, hidden), jnp.float32),
            "f": jnp.zeros((n,), jnp.float32),
            "i": jnp.zeros((n,), jnp.float32),
        }

    def gate(p, h, theta, prev):
        w = p["kernel"]
        return jax.nn.sigmoid(h @ w[:hidden] + theta * w[hidden] + prev * w[hidden + 1] + p["bias"])

    def update(grads, state, params, rule_meta, *, loss):
        if not second_order:
            grads, loss = jax.lax.stop_gradient((grads, loss))
        g, unflatten = _flatten(grads)
        theta, _ = _flatten(params)
        n = g.shape[0]
        loss_in = preprocess_gradients(jnp.asarray(loss, jnp.float32), preprocess)
        x = jnp.concatenate(
            [preprocess_gradients(g, preprocess), jnp.broadcast_to(loss_in, (n, 2))], axis=-1
        )
        h, c = _remat_cell(rule_meta["lstm"], x, state["h"], state["c"])
        i = gate(rule_meta["input_gate"], h, theta, state["i"])
        f = gate(rule_meta["forget_gate"], h, theta, state["f"])
        # theta_t - theta_{t-1}, written so that f == 1 leaves no rounding residue.
        updates = (f - 1.0) * theta - i * g
        return unflatten(updates), {"h": h, "c": c, "f": f, "i": i}

    return InnerRule(init_meta=init_meta, init=init, update=update, needs_loss=True)


def lstm_optimizer(
    hidden: int = 20,
    num_layers: int = 2,
    *,
    output_scale: float = 0.1,
    second_order: bool = False,
    preprocess: float = 10.0,
) -> InnerRule:
    """A learned coordinate-wise LSTM optimizer (Andrychowicz et al. 2016, "Learning to learn by
    gradient descent by gradient descent").

    A stack of ``num_layers`` LSTM layers (``hidden`` units each; 2 x 20 in the paper) reads the
    preprocessed gradient of each coordinate (:func:`preprocess_gradients`) and a linear layer
    maps its output to that coordinate's update, multiplied by ``output_scale``. The weights are
    shared by all coordinates (the meta-parameters, a few thousand numbers); each coordinate's
    LSTM state is carried in the rule's state, ``{"h", "c"}`` of shape
    ``[n, num_layers, hidden]`` for the ``n`` adapted coordinates.

    Use it in place of SGD in MAML or first-order MAML (``maml(model, rule=lstm_optimizer())``):
    the outer optimizer trains the LSTM together with the initialisation. Reptile's meta-gradient
    has no term for the rule's weights, so there it can only run a rule trained elsewhere, fixed
    with :func:`frozen_rule`.

    Args:
      hidden: units per LSTM layer.
      num_layers: stacked LSTM layers.
      output_scale: the update is ``output_scale`` times the linear output (0.1 in the paper).
      second_order: ``False`` (the paper's choice) treats the gradient as an input: the
        meta-gradient does not flow back through it, so no second derivatives are taken.
      preprocess: ``p`` of :func:`preprocess_gradients`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> rule = lstm_optimizer(hidden=8)
      >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
      >>> rule_meta = rule.init_meta(jax.random.key(0), params)
      >>> [layer["kernel"].shape for layer in rule_meta["layers"]], rule_meta["out"]["kernel"].shape
      ([(10, 32), (16, 32)], (8,))
      >>> state = rule.init(params)
      >>> state["h"].shape
      (8, 2, 8)
      >>> updates, state = rule.update(params, state, params, rule_meta)
      >>> jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)
      True
    """
    name = "lstm_optimizer"
    check_int(f"{name}: hidden", hidden)
    check_int(f"{name}: num_layers", num_layers)
    check_number(f"{name}: output_scale", output_scale)
    check_number(f"{name}: preprocess", preprocess)

    def init_meta(key, params):
        del params  # shared by every coordinate
        keys = jax.random.split(key, num_layers + 1)
        layers = [lstm_init(k, 2 if j == 0 else hidden, hidden)
                  for j, k in enumerate(keys[:num_layers])]
        bound = 1.0 / math.sqrt(hidden)
        out = {
            "kernel": jax.random.uniform(keys[-1], (hidden,), jnp.float32, -bound, bound),
            "bias": jnp.zeros((), jnp.float32),
        }
        return {"layers": layers, "out": out}

    def init(params):
        shape = (_num_coordinates(params), num_layers, hidden)
        return {"h": jnp.zeros(shape, jnp.float32), "c": jnp.zeros(shape, jnp.float32)}

    def update(grads, state, params, rule_meta):
        del params
        if not second_order:
            grads = jax.lax.stop_gradient(grads)
        g, unflatten = _flatten(grads)
        x = preprocess_gradients(g, preprocess)
        hs, cs = [], []
        for j, layer in enumerate(rule_meta["layers"]):
            x, c = _remat_cell(layer, x, state["h"][:, j], state["c"][:, j])
            hs.append(x)
            cs.append(c)
        updates = output_scale * (x @ rule_meta["out"]["kernel"] + rule_meta["out"]["bias"])
        return unflatten(updates), {"h": jnp.stack(hs, axis=1), "c": jnp.stack(cs, axis=1)}

    return InnerRule(init_meta=init_meta, init=init, update=update)


def frozen_rule(rule: InnerRule, rule_meta) -> InnerRule:
    """``rule`` with its learnable pieces fixed to ``rule_meta``: a rule with nothing to learn.

    For running a learned rule trained elsewhere (say an :func:`lstm_optimizer` meta-trained by
    MAML, ``state.params["rule"]``) in an algorithm that cannot train it, such as Reptile, or
    for evaluating it with a fresh initialisation. ``rule_meta`` is a constant of the compiled
    step: no gradient reaches it.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jmeta.inner import meta_sgd
      >>> rule = frozen_rule(meta_sgd(0.1), {"w": jnp.full(2, 0.5)})
      >>> rule.init_meta(jax.random.key(0), {"w": jnp.zeros(2)})
      ()
      >>> updates, _ = rule.update({"w": jnp.ones(2)}, rule.init(None), None, ())
      >>> updates["w"]
      Array([-0.5, -0.5], dtype=float32)
    """
    if not isinstance(rule, InnerRule):
        raise ValueError(  # noqa: TRY004
            f"frozen_rule: rule must be a jmeta.inner InnerRule; got {rule!r}."
        )
    fixed = jax.tree.map(jnp.asarray, rule_meta)

    def update(grads, state, params, meta, **loss):
        del meta
        return rule.update(grads, state, params, jax.lax.stop_gradient(fixed), **loss)

    return InnerRule(init_meta=lambda key, params: (), init=rule.init, update=update,
                     needs_loss=rule.needs_loss)


@register("meta_lstm")
def _meta_lstm(lr, inner_steps, *, hidden: int = 20) -> InnerRule:
    """The LSTM meta-learner with its input gate (the step size) starting near the learner's
    ``inner_lr``, so that it starts as the SGD it is compared with: bias ~ U(logit(lr) - 0.5,
    logit(lr) + 0.5); at 0.01 that is U(-5.1, -4.1), the paper's U(-5, -4)."""
    del inner_steps
    if not 0 < lr < 1:
        raise ValueError(f"meta_lstm starts its input gate (a sigmoid, the step size) at the "
                         f"learner's inner_lr, which must be in (0, 1); got {lr}.")
    centre = math.log(lr / (1.0 - lr))
    return meta_lstm(hidden, input_bias=(centre - 0.5, centre + 0.5))


@register("lstm_optimizer")
def _lstm_optimizer(lr, inner_steps, *, hidden: int = 20,
                    output_scale: float = 0.1) -> InnerRule:
    """The learned LSTM optimizer; the learner's ``inner_lr`` is not used."""
    del lr, inner_steps
    return lstm_optimizer(hidden, output_scale=output_scale)

