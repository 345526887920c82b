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
