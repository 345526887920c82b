"""A compact on-disk cache of converted arrays, keyed by the conversion and its source files."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jmeta.data._dataset import cache_dir


def _fingerprint(key: str, sources: Sequence[Path]) -> str:
    h = hashlib.sha256(key.encode())
    for src in sorted(Path(s) for s in sources):
        st = src.stat()
        h.update(f"{src.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def cached_arrays(
    key: str,
    build: Callable[[], dict[str, np.ndarray]],
    sources: Sequence[str | os.PathLike],
    *,
    cache: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """Returns ``build()``'s arrays, from the cache when a valid entry exists.

    The entry's name combines ``key`` (describe the conversion: dataset, image size, resampling)
    with the size and modification time of every source file, so a changed source rebuilds. The
    write is atomic (a temporary file renamed into place): an interrupted conversion never leaves
    an entry that a later run would trust. Object arrays (text) are stored as JSON lists.

    Example:
      >>> import numpy as np, tempfile
      >>> d = tempfile.mkdtemp()
      >>> arrays = cached_arrays("demo", lambda: {"x": np.arange(3)}, [], cache=d)
      >>> cached_arrays("demo", lambda: 1 / 0, [], cache=d)["x"].tolist()  # from the cache
      [0, 1, 2]
    """
    root = cache_dir(cache)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    path = root / f"{safe}-{_fingerprint(key, [Path(s) for s in sources])}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {k: z[k] for k in z.files}
            return {k[5:] if k.startswith("json:") else k: _decode(k, v) for k, v in out.items()}
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # unreadable entry: rebuild it
    arrays = build()
    root.mkdir(parents=True, exist_ok=True)
    stored = {}
    for k, v in arrays.items():
        v = np.asarray(v)
        if v.dtype == object:
            stored["json:" + k] = np.frombuffer(json.dumps(v.tolist()).encode(), np.uint8)
        else:
            stored[k] = v
    fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **stored)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cache may be shared by users
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return arrays


def _decode(key: str, value: np.ndarray):
    if key.startswith("json:"):
        return np.array(json.loads(value.tobytes().decode()), dtype=object)
    return value
