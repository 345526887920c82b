"""Test-session settings shared by the unit tests (``tests/``) and the doctests (``jmeta/``).

``JAX_THREEFRY_PARTITIONABLE=0``: JAX's default partitionable Threefry makes XLA:CPU compile a
random draw of a small many-dimensional shape very slowly (``jax.random.normal(key, (3, 3, 8,
9))``: about 13 s against 0.6 s without it, docs/performance.md), and the suite initialises
hundreds of small networks. The flag changes which random bits a key gives, not any property
the tests check; it is set in the environment so subprocesses started by tests inherit it.
A value already in the environment is kept.
"""

import os

os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")

# The jmeta command keeps compiled programs in ~/.cache/jmeta/xla; tests that run it get no such
# shared state unless they ask for it (tests/test_checkpoints.py gives its runs their own cache).
os.environ.setdefault("JMETA_COMPILE_CACHE", "off")
