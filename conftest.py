"""Test-session settings shared by the unit tests (``tests/``) and the doctests (``jmeta/``).
`make test` runs them in two pytest-xdist workers; every setting here holds in each.

``JAX_THREEFRY_PARTITIONABLE=0``: JAX's default partitionable Threefry makes XLA:CPU compile a
random draw of a small many-dimensional shape very slowly (``jax.random.normal(key, (3, 3, 8,
9))``: about 13 s against 0.6 s without it, docs/performance.md), and the suite initialises
hundreds of small networks. The flag changes which random bits a key gives, not any property
the tests check; it is set in the environment so subprocesses started by tests inherit it.
A value already in the environment is kept.
"""

import os

os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")

# Test programs are small: compiling them, not running them, is what the suite waits for.
# XLA's backend optimisation level 0 skips LLVM's optimisation passes, which compiles about 2x
# faster and runs the tiny test shapes slower by a negligible amount (4 test files: 186 s ->
# 145 s). It changes no value a test checks; the speed of the library as users compile it is
# measured by `jmeta bench`, never here. Subprocesses inherit it.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

# The jmeta command keeps compiled programs in ~/.cache/jmeta/xla; tests that run it get no such
# shared state unless they ask for it (tests/test_checkpoints.py gives its runs their own cache).
os.environ.setdefault("JMETA_COMPILE_CACHE", "off")
