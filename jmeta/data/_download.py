"""Download and verification of the source archives of the few-shot datasets.

Each dataset is described by a :class:`DatasetSpec` in :data:`ARCHIVES`: the archives it needs,
where they come from, their published checksums, and how to place them by hand on a machine
without network access. :func:`download` fetches what is missing, resumes partial downloads,
checks every byte against the published digest before a file gets its final name, and extracts
the archives that need it. :func:`verify` checks what is already on disk.

The guarantees, whatever goes wrong:

* the final file name only ever holds a complete, verified archive (the data go to
  ``<file>.part`` first, and are renamed with :func:`os.replace` once they verify);
* an extracted directory is either complete or absent (archives are extracted into a hidden
  temporary sibling directory, then renamed into place);
* after a network failure the ``.part`` file is kept, so that running :func:`download` again
  resumes it with an HTTP ``Range`` request; after a checksum mismatch it is deleted.

Only the standard library is used for HTTP (:mod:`urllib.request`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Mapping

from tqdm.auto import tqdm

from jmeta.data._dataset import data_dir as _resolve_data_dir

__all__ = [
    "ArchiveSpec",
    "ARCHIVES",
    "DatasetSpec",
    "DownloadError",
    "download",
    "file_digests",
    "manual_instructions",
    "resolve",
    "verify",
]

_HASH_CHUNK = 1 << 20  # checksums are computed streaming, 1 MiB at a time
_NET_CHUNK = 1 << 16
_USER_AGENT = "jmeta-download/0.1 (+urllib)"


class DownloadError(RuntimeError):
    """A dataset archive could not be downloaded, or is missing, or does not match its checksum.

    The message always says what to do next: re-run to resume, or how to place the files by hand.

    Example:
      >>> issubclass(DownloadError, RuntimeError)
      True
    """


@dataclasses.dataclass(frozen=True)
class ArchiveSpec:
    """One file of a dataset.

    Attributes:
      filename: the file's name in the dataset directory (``<data_dir>/<dataset>/<filename>``).
      urls: mirrors, tried in order.
      sha256, md5: the published digests (lowercase hex), ``None`` where none is published. A
        file is accepted when any one known digest matches.
      extract: whether the archive is unpacked (into the dataset directory) after download. The
        archive itself is kept, so that :func:`verify` can check it later.
      size: the size in bytes where known; a hint only (progress bar, resume), never a reason to
        reject a file.
      alternates: further accepted sha256 digests, of known-good re-encodings of the archive.
      extract_dir: for ``extract`` archives, the top-level directory the archive unpacks to; its
        presence means the archive was extracted. Without it a hidden marker file is written.

    Example:
      >>> a = ArchiveSpec("x.zip", ("http://127.0.0.1:1/x.zip",), sha256="00" * 32, md5=None,
      ...                 extract=False, size=None)
      >>> a.alternates
      ()
    """

    filename: str
    urls: tuple[str, ...]
    sha256: str | None
    md5: str | None
    extract: bool
    size: int | None
    alternates: tuple[str, ...] = ()
    extract_dir: str | None = None

    def expected(self) -> str:
        """The accepted digests, for messages.

        Example:
          >>> ArchiveSpec("x", (), sha256=None, md5="ab" * 16, extract=False, size=None).expected()
          'md5 abababababababababababababababab'
        """
        parts = []
        if self.sha256:
            parts.append(f"sha256 {self.sha256}")
        if self.md5:
            parts.append(f"md5 {self.md5}")
        parts += [f"sha256 {d} (known-good re-encoding)" for d in self.alternates]
        return " or ".join(parts) if parts else "(no published checksum)"

    def matches(self, digests: Mapping[str, str]) -> bool:
        """Whether ``digests`` (as returned by :func:`file_digests`) match any accepted digest.
        A file without any published digest is accepted.

        Example:
          >>> a = ArchiveSpec("x", (), sha256=None, md5="ab" * 16, extract=False, size=None)
          >>> a.matches({"sha256": "00" * 32, "md5": "ab" * 16})
          True
        """
        known = bool(self.sha256 or self.md5 or self.alternates)
        if not known:
            return True
        sha, md5 = digests["sha256"].lower(), digests["md5"].lower()
        return (
            (self.sha256 is not None and sha == self.sha256.lower())
            or (self.md5 is not None and md5 == self.md5.lower())
            or sha in {d.lower() for d in self.alternates}
        )


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything :func:`download` and :func:`verify` need to know about one dataset.

    Attributes:
      name: the dataset directory, ``<data_dir>/<name>/``.
      archives: the files to download. Empty for datasets that can only be placed by hand.
      manual: how to place the files by hand (which files, where, from where). ``{dir}`` stands
        for the dataset directory and is filled in by :func:`manual_instructions`.
      layouts: for datasets without archives: alternative sets of paths (relative to the dataset
        directory), any one of which, complete, makes the dataset present.

    Example:
      >>> ARCHIVES["omniglot"].name, [a.filename for a in ARCHIVES["omniglot"].archives]
      ('omniglot', ['images_background.zip', 'images_evaluation.zip'])
    """

    name: str
    archives: tuple[ArchiveSpec, ...]
    manual: str
    layouts: tuple[tuple[str, ...], ...] = ()

    @property
    def manual_only(self) -> bool:
        """True when no public URL with published checksums exists.

        Example:
          >>> ARCHIVES["miniimagenet"].manual_only, ARCHIVES["omniglot"].manual_only
          (True, False)
        """
        return not self.archives


_OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
_CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"

_OMNIGLOT = DatasetSpec(
    name="omniglot",
    archives=(
        ArchiveSpec(
            "images_background.zip",
            (_OMNIGLOT_URL + "images_background.zip",),
            sha256=None,
            md5="68d2efa1b9178cc56df9314c21c6e718",
            extract=False,
            size=None,
            alternates=("530dcb44333c9927411481ac9c1474b778b4ea14dc9ba5b0bc9f16a919209014",),
        ),
        ArchiveSpec(
            "images_evaluation.zip",
            (_OMNIGLOT_URL + "images_evaluation.zip",),
            sha256=None,
            md5="6b91aef0f799c5bb55b94e3f2daec811",
            extract=False,
            size=None,
            alternates=("2a2f1fe90eebf7ad8bb2e047bf50764af4677ec8805950a073ca4606796c61a5",),
        ),
    ),
    manual=(
        "Download images_background.zip and images_evaluation.zip from "
        f"{_OMNIGLOT_URL} (the repository github.com/brendenlake/omniglot, folder python/) "
        "and place both files, still zipped, in {dir}/ "
        "(i.e. {dir}/images_background.zip and {dir}/images_evaluation.zip)."
    ),
)

_CIFAR100 = DatasetSpec(
    name="cifar100",
    archives=(
        ArchiveSpec(
            "cifar-100-python.tar.gz",
            (_CIFAR100_URL,),
            sha256=None,
            md5="eb9058c3a382ffc7106e4002c42a8d85",
            extract=True,
            size=169001437,
            extract_dir="cifar-100-python",
        ),
    ),
    manual=(
        f"Download cifar-100-python.tar.gz from {_CIFAR100_URL} "
        "(https://www.cs.toronto.edu/~kriz/cifar.html, 'CIFAR-100 python version'), place it "
        "in {dir}/ and extract it there (tar -xzf cifar-100-python.tar.gz), so that "
        "{dir}/cifar-100-python/ holds the files train, test and meta. "
        "CIFAR-FS and FC100 are both built from this archive."
    ),
)

_MINIIMAGENET = DatasetSpec(
    name="miniimagenet",
    archives=(),
    manual=(
        "miniImageNet has no official public download with published checksums, so it must be "
        "placed by hand, in one of two layouts:\n"
        "  (a) {dir}/images/ holding the 60,000 84x84 images, plus the Ravi & Larochelle split "
        "files {dir}/train.csv, {dir}/val.csv and {dir}/test.csv (columns filename,label; from "
        "github.com/twitter/meta-learning-lstm, folder data/miniImagenet/), or\n"
        "  (b) the pickle files {dir}/mini-imagenet-cache-train.pkl, "
        "{dir}/mini-imagenet-cache-val.pkl and {dir}/mini-imagenet-cache-test.pkl."
    ),
    layouts=(
        ("images", "train.csv", "val.csv", "test.csv"),
        (
            "mini-imagenet-cache-train.pkl",
            "mini-imagenet-cache-val.pkl",
            "mini-imagenet-cache-test.pkl",
        ),
    ),
)

_TIEREDIMAGENET = DatasetSpec(
    name="tieredimagenet",
    archives=(),
    manual=(
        "tieredImageNet has no official public download with published checksums, so it must "
        "be placed by hand: put the pickle files of Ren et al. (2018) in {dir}/ , namely "
        "{dir}/train_images_png.pkl, {dir}/val_images_png.pkl, {dir}/test_images_png.pkl, "
        "{dir}/train_labels.pkl, {dir}/val_labels.pkl and {dir}/test_labels.pkl."
    ),
    layouts=(
        tuple(f"{s}_images_png.pkl" for s in ("train", "val", "test"))
        + tuple(f"{s}_labels.pkl" for s in ("train", "val", "test")),
    ),
)

#: Alternative names, resolved to the spec of the archive they are built from.
ALIASES: dict[str, str] = {"cifar_fs": "cifar100", "fc100": "cifar100"}

#: Every known dataset, by name; aliases map to the very same spec object.
ARCHIVES: dict[str, DatasetSpec] = {
    s.name: s for s in (_OMNIGLOT, _CIFAR100, _MINIIMAGENET, _TIEREDIMAGENET)
}
ARCHIVES.update({alias: ARCHIVES[target] for alias, target in ALIASES.items()})


def resolve(name: str | DatasetSpec) -> DatasetSpec:
    """The spec of ``name`` (case-insensitive, ``-`` and ``_`` alike); a spec is returned as is.

    Example:
      >>> resolve("CIFAR-FS") is ARCHIVES["cifar100"]
      True
    """
    if isinstance(name, DatasetSpec):
        return name
    key = str(name).strip().lower().replace("-", "_")
    if key not in ARCHIVES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(ARCHIVES))}")
    return ARCHIVES[key]


def _dataset_dir(spec: DatasetSpec, data_dir) -> Path:
    return _resolve_data_dir(data_dir) / spec.name


def manual_instructions(name: str | DatasetSpec, data_dir=None) -> str:
    """How to place the files of ``name`` by hand, with the actual dataset directory filled in.

    Example:
      >>> print(manual_instructions("fc100", "/data"))  # doctest: +ELLIPSIS
      Download cifar-100-python.tar.gz from https://www.cs.toronto.edu/... in /data/cifar100/ ...
    """
    spec = resolve(name)
    return spec.manual.replace("{dir}", str(_dataset_dir(spec, data_dir)))


def file_digests(path: str | os.PathLike) -> dict[str, str]:
    """The ``sha256`` and ``md5`` hex digests of a file, read 1 MiB at a time.

    Example:
      >>> import tempfile, os
      >>> fd, p = tempfile.mkstemp(); os.write(fd, b"abc"); os.close(fd)
      3
      >>> file_digests(p)["md5"]
      '900150983cd24fb0d6963f7d28e17f72'
      >>> os.remove(p)
    """
    sha = hashlib.sha256()
    try:
        md5 = hashlib.md5(usedforsecurity=False)
    except TypeError:  # pragma: no cover - very old Pythons
        md5 = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            sha.update(chunk)
            md5.update(chunk)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def _found(digests: Mapping[str, str]) -> str:
    return f"sha256 {digests['sha256']} (md5 {digests['md5']})"


def _check_file(spec: DatasetSpec, arch: ArchiveSpec, path: Path, data_dir) -> str:
    """Verify an existing file; returns the status line or raises :class:`DownloadError`."""
    digests = file_digests(path)
    if not arch.matches(digests):
        raise DownloadError(
            f"checksum mismatch for {path}:\n"
            f"  expected {arch.expected()}\n"
            f"  found    {_found(digests)}\n"
            f"Delete the file and run download({spec.name!r}) again, or place a good copy by "
            f"hand: {manual_instructions(spec, data_dir)}"
        )
    if not (arch.sha256 or arch.md5 or arch.alternates):
        return f"ok (sha256 {digests['sha256']}, no published checksum)"
    return f"ok (sha256 {digests['sha256']})"


def _layout_status(spec: DatasetSpec, dest: Path) -> dict[str, str] | None:
    for layout in spec.layouts:
        if all((dest / p).exists() for p in layout):
            return {p: "present (no published checksum)" for p in layout}
    return None


def verify(name: str | DatasetSpec, data_dir=None) -> dict[str, str]:
    """Check the local files of dataset ``name`` against their published checksums.

    Every archive must be present in ``<data_dir>/<name>/`` and match its md5, its sha256 or one
    of its known-good alternates. For datasets that can only be placed by hand, the presence of
    one complete layout is checked instead (no published checksums exist).

    Returns:
      ``{filename: "ok (sha256 <hex>)"}``.

    Raises:
      DownloadError: a file is missing (the message gives the expected path and how to place it
        by hand) or does not match (expected vs found digests).

    Example:
      >>> import tempfile
      >>> try:
      ...     verify("omniglot", tempfile.mkdtemp())
      ... except DownloadError as e:
      ...     print("missing" in str(e), "images_background.zip" in str(e))
      True True
    """
    spec = resolve(name)
    dest = _dataset_dir(spec, data_dir)
    if spec.manual_only:
        status = _layout_status(spec, dest)
        if status is None:
            raise DownloadError(
                f"{spec.name}: no complete layout found in {dest}.\n"
                f"{manual_instructions(spec, data_dir)}"
            )
        return status
    result = {}
    for arch in spec.archives:
        path = dest / arch.filename
        if not path.is_file():
            raise DownloadError(
                f"{spec.name}: {arch.filename} is missing: expected {path}.\n"
                f"Run download({spec.name!r}) or place it by hand: "
                f"{manual_instructions(spec, data_dir)}"
            )
        result[arch.filename] = _check_file(spec, arch, path, data_dir)
    return result


class _Incomplete(OSError):
    """The server stopped before sending all the bytes it announced."""


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(start, total)`` from a ``Content-Range: bytes a-b/total`` (or ``bytes */total``)."""
    if not value:
        return None, None
    m = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _fetch(url: str, part: Path, arch: ArchiveSpec, timeout: float, progress: bool) -> None:
    """Download ``url`` into ``part``, resuming it where possible. Raises ``OSError`` /
    ``http.client.HTTPException`` on network trouble, leaving ``part`` in place."""
    for _ in range(2):  # a second round only to restart from zero after an unusable resume
        offset = part.stat().st_size if part.exists() else 0
        if arch.size is not None and offset > arch.size:
            part.unlink()
            offset = 0
        headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code != 416 or not offset:
                raise
            _, total = _content_range(e.headers.get("Content-Range"))
            e.close()
            if offset == (total if total is not None else arch.size):
                return  # the .part already holds the whole file
            part.unlink()
            continue
        with response:
            if response.status == 206:
                start, total = _content_range(response.headers.get("Content-Range"))
                if start != offset:
                    part.unlink()  # the server resumed elsewhere: start over
                    continue
                mode = "ab"
                if total is None:
                    length = response.headers.get("Content-Length")
                    total = offset + int(length) if length else arch.size
            else:  # 200: the server ignored the Range header, so start from zero
                offset = 0
                mode = "wb"
                length = response.headers.get("Content-Length")
                total = int(length) if length else arch.size
            received = offset
            with open(part, mode) as f, tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=arch.filename,
                disable=not progress,
                leave=False,
            ) as bar:
                while chunk := response.read(_NET_CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received < total:
                raise _Incomplete(
                    f"the server stopped after {received} of {total} bytes"
                )
            return
    raise _Incomplete(f"{url}: could not resume {part.name}")  # pragma: no cover


def _extracted(dest: Path, arch: ArchiveSpec) -> bool:
    if arch.extract_dir:
        return (dest / arch.extract_dir).is_dir()
    return (dest / f".{arch.filename}.extracted").exists()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _extract(archive: Path, dest: Path, arch: ArchiveSpec) -> None:
    """Unpack ``archive`` into a temporary sibling directory of ``dest``'s entries, then rename
    each top-level entry into place (``extract_dir`` last), so that it is complete or absent."""
    prefix, suffix = f".{archive.name}.", ".extracting"
    for stale in dest.glob(f"{prefix}*{suffix}"):  # left over by a killed process
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=dest))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                if hasattr(tarfile, "data_filter"):
                    t.extractall(tmp, filter="data")
                else:  # pragma: no cover - Pythons without extraction filters
                    t.extractall(tmp)
        else:
            raise DownloadError(f"{archive} is neither a zip nor a tar archive")
        if arch.extract_dir and not (tmp / arch.extract_dir).is_dir():
            raise DownloadError(
                f"{archive} does not contain the expected top-level directory "
                f"{arch.extract_dir}/"
            )
        entries = sorted(tmp.iterdir(), key=lambda p: (p.name == arch.extract_dir, p.name))
        for entry in entries:
            target = dest / entry.name
            if target.exists() or target.is_symlink():
                _remove(target)
            os.replace(entry, target)
        if not arch.extract_dir:
            (dest / f".{arch.filename}.extracted").touch()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download(
    name: str | DatasetSpec,
    data_dir=None,
    *,
    progress: bool = True,
    timeout: float = 30.0,
    urls_override: Mapping[str, str] | None = None,
) -> Path:
    """Download, verify and (where needed) extract the archives of dataset ``name``.

    For each archive: a final file that is already present and verifies is kept as is (nothing
    is written then, so a read-only directory of good archives works). Otherwise the file is
    downloaded to ``<file>.part``, resuming an existing ``.part`` with an HTTP ``Range`` request
    (from zero if the server does not support ranges), checked against its published digest,
    and only then renamed to its final name. Archives marked ``extract`` are then unpacked into
    the dataset directory, through a temporary directory renamed into place.

    Datasets without a public download (miniImageNet, tieredImageNet) raise
    :class:`DownloadError` with the layout to place by hand, unless that layout is present.

    Args:
      name: a key of :data:`ARCHIVES` (aliases included), or a :class:`DatasetSpec`.
      data_dir: the root data directory; ``None`` for ``$JMETA_DATA_DIR`` or
        ``~/.cache/jmeta/data``. Files go to ``<data_dir>/<spec.name>/``.
      progress: show a tqdm progress bar per file.
      timeout: seconds for connecting and for each read.
      urls_override: ``{filename: url}``, used instead of the spec's mirrors.

    Returns:
      the dataset directory.

    Raises:
      DownloadError: checksum mismatch (the ``.part`` is deleted; the message gives the
        expected and found digests), or a network failure (the ``.part`` is kept so that calling
        again resumes; the message says how to place the files by hand when offline).

    Example::

        from jmeta.data._download import download, verify
        root = download("omniglot", "~/data")   # ~/data/omniglot/images_{background,evaluation}.zip
        verify("omniglot", "~/data")            # {'images_background.zip': 'ok (sha256 ...)', ...}
    """
    spec = resolve(name)
    dest = _dataset_dir(spec, data_dir)
    if spec.manual_only:
        if _layout_status(spec, dest) is not None:
            return dest
        raise DownloadError(
            f"{spec.name} cannot be downloaded automatically (no official public URL with "
            f"published checksums). Place the files by hand:\n"
            f"{manual_instructions(spec, data_dir)}"
        )
    overrides = dict(urls_override or {})
    for arch in spec.archives:
        final = dest / arch.filename
        part = dest / f"{arch.filename}.part"
        if arch.extract and not final.exists() and _extracted(dest, arch):
            continue  # extracted by hand or earlier, and the archive since removed
        if final.is_file():
            try:
                _check_file(spec, arch, final, data_dir)
                ok = True
            except DownloadError:
                ok = False  # a bad copy: download a good one over it
            if ok:
                if arch.extract and not _extracted(dest, arch):
                    _extract(final, dest, arch)
                continue
        dest.mkdir(parents=True, exist_ok=True)
        urls = (overrides[arch.filename],) if arch.filename in overrides else arch.urls
        errors = []
        for url in urls:
            try:
                _fetch(url, part, arch, timeout, progress)
                break
            except (OSError, http.client.HTTPException) as e:
                errors.append(f"  {url}: {e}")
        else:
            kept = (
                f"The partial download is kept in {part} ({part.stat().st_size} bytes); "
                f"run download({spec.name!r}) again to resume it."
                if part.exists()
                else f"Run download({spec.name!r}) again to retry."
            )
            raise DownloadError(
                f"could not download {arch.filename} for {spec.name}:\n"
                + "\n".join(errors)
                + f"\n{kept}\nIf this machine is offline, place the files by hand: "
                f"{manual_instructions(spec, data_dir)}"
            )
        digests = file_digests(part)
        if not arch.matches(digests):
            part.unlink()
            raise DownloadError(
                f"checksum mismatch for {arch.filename} downloaded from {url} "
                f"(the download was deleted):\n"
                f"  expected {arch.expected()}\n"
                f"  found    {_found(digests)}\n"
                f"Run download({spec.name!r}) again, or place a good copy by hand: "
                f"{manual_instructions(spec, data_dir)}"
            )
        os.replace(part, final)
        if arch.extract:
            _extract(final, dest, arch)
    return dest
