"""From a :class:`Config` to the pure pieces of a run: model, learner, optimizer, task sampler."""

from __future__ import annotations

import optax

from jmeta import algorithms
from jmeta.core._meta import MetaLearner
from jmeta.data._sinusoid import sinusoid_sampler, sinusoid_tasks
from jmeta.inner._rules import from_optax, lslr, sgd
from jmeta.models._functional import Model
from jmeta.models._mlp import mlp
from jmeta.train._config import Config


def build_model(cfg: Config) -> Model:
    return mlp(1, 1, hidden=cfg.hidden)


def _rule(cfg: Config):
    if cfg.inner_rule == "lslr":
        return lslr(cfg.inner_lr, cfg.inner_steps)
    if cfg.inner_rule == "adam":
        return from_optax(optax.adam(cfg.inner_lr))
    return sgd(cfg.inner_lr)


def build_learner(cfg: Config) -> MetaLearner:
    model = build_model(cfg)
    common = dict(remat=cfg.remat)
    if cfg.algorithm == "metasgd":
        lr = cfg.metasgd_init_lr[0] if len(cfg.metasgd_init_lr) == 1 else tuple(cfg.metasgd_init_lr)
        return algorithms.metasgd(
            model, lr, cfg.inner_steps, first_order=cfg.first_order, **common
        )
    if cfg.algorithm == "reptile":
        return algorithms.reptile(model, cfg.inner_lr, cfg.inner_steps, rule=_rule(cfg))
    factory = {"maml": algorithms.maml, "fomaml": algorithms.fomaml, "anil": algorithms.anil}[
        cfg.algorithm
    ]
    kwargs = dict(rule=_rule(cfg), **common)
    if cfg.algorithm != "fomaml":
        kwargs["first_order"] = cfg.first_order
    return factory(model, cfg.inner_lr, cfg.inner_steps, **kwargs)


def build_optimizer(cfg: Config) -> optax.GradientTransformation:
    if cfg.meta_optimizer == "sgd":
        return optax.sgd(cfg.meta_lr)
    return optax.adam(cfg.meta_lr)


def build_sampler(cfg: Config):
    return sinusoid_sampler(cfg.meta_batch_size, cfg.k_shot, cfg.k_query or cfg.k_shot)


def build_test_tasks(cfg: Config, key, num_tasks: int):
    return sinusoid_tasks(key, num_tasks, cfg.k_shot, cfg.eval_k_query)
