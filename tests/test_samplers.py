"""Episode samplers: one contract for the device-resident and the host-side sampler."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jmeta.data import ClassDataset, HostSampler, device_sampler

WAYS, SHOTS, QUERIES, TASKS = 5, 2, 3, 4


def constant_images(counts):
    """Class c has counts[c] examples; every pixel of example i holds i (its global index)."""
    n = sum(counts)
    data = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 3, 3, 1)).copy()
    labels = np.repeat(np.arange(len(counts)), counts)
    return ClassDataset.from_labels(data, labels, [f"c{i}" for i in range(len(counts))])


@pytest.fixture(scope="module")
def ragged():
    return constant_images([5, 9, 6, 12, 5, 7, 8, 10, 5, 6])


def _ids(x):
    return np.rint(np.asarray(x)[..., 0, 0, 0] * 255).astype(int)


def _class_of(ds, idx):
    return np.searchsorted(ds.class_start, idx, side="right") - 1


def _check_contract(ds, batch):
    sx, sy, qx, qy = (np.asarray(a) for a in (batch.support.x, batch.support.y, batch.query.x,
                                              batch.query.y))
    assert sx.shape == (TASKS, WAYS * SHOTS, 3, 3, 1)
    assert qx.shape == (TASKS, WAYS * QUERIES, 3, 3, 1)
    assert sx.dtype == np.float32 and 0 <= sx.min() and sx.max() <= 1
    for t in range(TASKS):
        s_ids, q_ids = _ids(sx[t]), _ids(qx[t])
        np.testing.assert_array_equal(sy[t], np.repeat(np.arange(WAYS), SHOTS))
        np.testing.assert_array_equal(qy[t], np.repeat(np.arange(WAYS), QUERIES))
        assert len(set(s_ids) | set(q_ids)) == WAYS * (SHOTS + QUERIES)  # all examples distinct
        s_cls, q_cls = _class_of(ds, s_ids), _class_of(ds, q_ids)
        assert len(set(s_cls)) == WAYS  # N distinct classes
        for label in range(WAYS):  # a label is one class, in support and query alike
            assert len(set(s_cls[sy[t] == label]) | set(q_cls[qy[t] == label])) == 1


def test_device_sampler_contract(ragged):
    sample = jax.jit(device_sampler(ragged, WAYS, SHOTS, QUERIES, TASKS))
    for seed in range(5):
        _check_contract(ragged, sample(jax.random.key(seed)))


def test_host_sampler_contract(ragged):
    sampler = HostSampler(ragged, WAYS, SHOTS, QUERIES, TASKS, seed=3)
    for step in range(5):
        _check_contract(ragged, sampler.sample(step))


def test_determinism(ragged):
    sample = jax.jit(device_sampler(ragged, WAYS, SHOTS, QUERIES, TASKS))
    a, b, c = sample(jax.random.key(1)), sample(jax.random.key(1)), sample(jax.random.key(2))
    np.testing.assert_array_equal(a.query.x, b.query.x)
    assert not np.array_equal(a.query.x, c.query.x)
    h1 = HostSampler(ragged, WAYS, SHOTS, QUERIES, TASKS, seed=3)
    h2 = HostSampler(ragged, WAYS, SHOTS, QUERIES, TASKS, seed=3)
    np.testing.assert_array_equal(h1.sample(7).support.x, h2.sample(7).support.x)
    assert not np.array_equal(h1.sample(7).support.x, h1.sample(8).support.x)
    other = HostSampler(ragged, WAYS, SHOTS, QUERIES, TASKS, seed=3, process_index=1)
    assert not np.array_equal(h1.sample(7).support.x, other.sample(7).support.x)


def test_prefetch_yields_the_step_batches_from_any_start(ragged):
    sampler = HostSampler(ragged, WAYS, SHOTS, QUERIES, TASKS, seed=0, prefetch=3)
    with sampler.iterate(start_step=10) as batches:
        got = [next(batches) for _ in range(4)]
    for i, batch in enumerate(got):
        assert isinstance(batch.support.x, jax.Array)
        np.testing.assert_array_equal(batch.support.x, sampler.sample(10 + i).support.x)


def test_both_samplers_draw_from_the_same_distribution(ragged):
    """Class and example frequencies over many episodes: both uniform, so close to each other."""
    n_batches = 200
    sample = jax.jit(device_sampler(ragged, WAYS, SHOTS, QUERIES, TASKS))
    host = HostSampler(ragged, WAYS, SHOTS, QUERIES, TASKS, seed=0)
    counts = {}
    for name, draw in (("device", lambda i: sample(jax.random.key(i))), ("host", host.sample)):
        ids = np.concatenate([_ids(draw(i).support.x).ravel() for i in range(n_batches)])
        counts[name] = np.bincount(_class_of(ragged, ids), minlength=ragged.num_classes)
        # Each class is in an episode with probability WAYS / classes.
        expected = n_batches * TASKS * SHOTS * WAYS / ragged.num_classes
        assert np.all(np.abs(counts[name] - expected) < 5 * np.sqrt(expected)), (name, counts[name])
        # Within a class, every example is equally likely (class 3 has 12 examples).
        per_example = np.bincount(ids, minlength=len(ragged.data))[ragged.class_start[3]:][:12]
        assert per_example.min() > 0.5 * per_example.mean()
    tv = 0.5 * np.abs(counts["device"] / counts["device"].sum()
                      - counts["host"] / counts["host"].sum()).sum()
    assert tv < 0.05


def test_rotated_classes_are_rotated_and_augmentation_rotates():
    base = np.zeros((2, 4, 4, 1), np.uint8)
    base[:, 0, 3] = 255  # a marker in one corner: each quarter turn moves it
    ds = ClassDataset(base, np.zeros(4, np.int64), np.full(4, 2, np.int64),
                      ("r0", "r1", "r2", "r3"), class_rotation=np.arange(4, dtype=np.int8))
    batch = jax.jit(device_sampler(ds, 4, 1, 1, 2))(jax.random.key(0))
    host = HostSampler(ds, 4, 1, 1, 2, seed=0).sample(0)
    for b in (batch, host):
        corners = {tuple(np.argwhere(np.asarray(img)[..., 0] > 0.5)[0]) for img in b.support.x[0]}
        assert corners == {(0, 3), (0, 0), (3, 0), (3, 3)}  # four different rotations
    plain = ClassDataset(base, np.zeros(1, np.int64), np.full(1, 2, np.int64), ("a",))
    aug = jax.jit(device_sampler(plain, 1, 1, 1, 64, augment_rotations=True))(jax.random.key(0))
    seen = {tuple(np.argwhere(np.asarray(img)[..., 0] > 0.5)[0]) for img in aug.support.x[:, 0]}
    assert len(seen) == 4


@pytest.mark.parametrize(
    "ways,shots,queries,message",
    [(11, 1, 1, "only 10"), (5, 3, 3, "smallest class of"), (0, 1, 1, "ways must be"),
     (5, 1, -1, "queries")],
)
def test_impossible_requests_are_clear_errors(ragged, ways, shots, queries, message):
    with pytest.raises(ValueError, match=message):
        device_sampler(ragged, ways, shots, queries, 2)
    with pytest.raises(ValueError, match=message):
        HostSampler(ragged, ways, shots, queries, 2)


def test_text_needs_the_host_sampler_with_a_transform():
    ds = ClassDataset.from_labels(np.array(["a", "b", "c", "d"], dtype=object),
                                  np.array([0, 1, 0, 1]), ["x", "y"])
    with pytest.raises(ValueError, match="tokenizer"):
        device_sampler(ds, 2, 1, 1, 1)
    sampler = HostSampler(ds, 2, 1, 1, 3,
                          transform=lambda texts: np.array([[len(t)] for t in texts]))
    assert sampler.sample(0).support.x.shape == (3, 2, 1)


def test_omniglot_episodes(omniglot_train):
    sample = jax.jit(device_sampler(omniglot_train, 20, 5, 15, 2))
    batch = sample(jax.random.key(0))
    assert batch.support.x.shape == (2, 100, 28, 28, 1)
    assert batch.query.x.shape == (2, 300, 28, 28, 1)
    host = HostSampler(omniglot_train, 20, 5, 15, 2).sample(0)
    assert host.support.x.shape == batch.support.x.shape
    for b in (batch, host):  # ink is bright and sparse in every image
        means = np.asarray(b.support.x).mean(axis=(2, 3, 4))
        assert np.all((means > 0.002) & (means < 0.5)) and np.median(means) > 0.03


def test_host_prefetch_shards_the_task_axis():
    code = textwrap.dedent("""
        import jax, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from jmeta.data import ClassDataset, HostSampler
        ds = ClassDataset.from_labels(np.zeros((40, 2, 2, 1), np.uint8), np.arange(40) % 8,
                                      list("abcdefgh"))
        mesh = Mesh(np.array(jax.devices()), ("data",))
        sampler = HostSampler(ds, 2, 1, 1, 8, sharding=NamedSharding(mesh, P("data")))
        with sampler.iterate() as it:
            batch = next(it)
        shards = batch.support.x.addressable_shards
        print(len(jax.devices()), len(shards), shards[0].data.shape)
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "4", "(2,", "2,", "2,", "2,", "1)"]
