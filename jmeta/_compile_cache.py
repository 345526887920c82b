"""A disk cache of compiled programs, so that a resumed run, ``jmeta eval`` after ``jmeta train``
or a second run of the same config skips XLA compilation (JAX's persistent compilation cache).

The ``jmeta`` command turns it on; a program that imports the library decides for itself
(:func:`enable_compile_cache`). ``jmeta bench`` measures compile time with it off.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

OFF = ("0", "off", "false", "no", "none")


def default_compile_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/jmeta/xla`` (``~/.cache/jmeta/xla``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "jmeta" / "xla"


def enable_compile_cache(directory: str | os.PathLike | None = None) -> Path | None:
    """Keeps every program that took at least a second to compile in ``directory``, and reads
    it back instead of compiling it again in later processes (same program, same JAX version,
    same device and flags; anything else compiles afresh). Call it before the first compile.

    ``directory``: else ``$JMETA_COMPILE_CACHE``, else :func:`default_compile_cache_dir`;
    ``JMETA_COMPILE_CACHE=off`` turns the cache off. A cache directory already given to JAX
    (``JAX_COMPILATION_CACHE_DIR``) is kept. A directory that cannot be created is a warning, not
    an error: the run compiles as usual. Returns the directory in use, or ``None``.

    Only a trusted directory should be used: JAX runs what it finds there.

    Example::

        import jmeta
        jmeta.enable_compile_cache()                 # ~/.cache/jmeta/xla
        jmeta.enable_compile_cache("/scratch/xla")   # somewhere else
    """
    import jax

    setting = os.fspath(directory) if directory is not None else os.environ.get("JMETA_COMPILE_CACHE", "")
    if setting.strip().lower() in OFF:
        return None
    current = jax.config.jax_compilation_cache_dir
    if current and directory is None:
        return Path(current)
    path = Path(setting).expanduser() if setting.strip() else default_compile_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is not writable")
    except OSError as err:
        warnings.warn(f"jmeta: no compile cache ({err}); set JMETA_COMPILE_CACHE to a writable "
                      "folder, or to 'off'.", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path
