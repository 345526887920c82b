"""Shared fixtures: small shapes so that every compile is quick."""

import jax
import pytest

from jmeta.data import sinusoid_tasks
from jmeta.models import mlp


@pytest.fixture(scope="session")
def small_model():
    return mlp(1, 1, hidden=(8, 8))


@pytest.fixture(scope="session")
def tasks():
    """Four sinusoid tasks, 5 support and 5 query points each."""
    return sinusoid_tasks(jax.random.key(42), num_tasks=4, k_shot=5)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


SHARED_DATA = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def omniglot_root():
    root = SHARED_DATA / "omniglot"
    if not (root / "images_background.zip").exists():
        pytest.skip(f"Omniglot not found at {root}: place the official archives there to run data tests")
    return root


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    """A writable cache shared by the session (the shared data folder may be read-only)."""
    return tmp_path_factory.mktemp("jmeta-cache")


@pytest.fixture(scope="session")
def omniglot_train(omniglot_root, data_cache):
    from jmeta.data import load_omniglot

    return load_omniglot("train", root=omniglot_root, cache=data_cache)
