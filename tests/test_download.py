"""Download, resume, verification and extraction of dataset archives, against a local server."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import shutil
import socket
import tarfile
import threading
from pathlib import Path

import pytest

from jmeta.data import ARCHIVES
from jmeta.data import _download as dl
from jmeta.data._download import ArchiveSpec, DatasetSpec, DownloadError, download, verify

SHARED_OMNIGLOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range`` unless the path is in ``server.no_range``;
    for paths in ``server.truncate`` announces the full length but sends only half, then closes.
    Every request's ``(path, Range header)`` is recorded in ``server.log``."""

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and self.path not in srv.no_range and rng.startswith("bytes="):
            start = int(rng[len("bytes="):].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in srv.truncate:
            body = body[: len(body) // 2]
            self.close_connection = True
        # Count before writing: the client may finish reading before this thread runs again.
        srv.sent[self.path] = srv.sent.get(self.path, 0) + len(body)
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.no_range, srv.truncate, srv.log, srv.sent = {}, set(), set(), [], {}
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def _payload(n=8192, seed=0):
    return hashlib.shake_256(f"jmeta-{seed}".encode()).digest(n)


def _spec(server, filename, data, *, sha256=None, extract=False, extract_dir=None, md5=None):
    """A one-archive spec served by ``server``; digest of ``data`` unless given."""
    server.files[f"/{filename}"] = data
    if sha256 is None and md5 is None:
        sha256 = hashlib.sha256(data).hexdigest()
    arch = ArchiveSpec(
        filename,
        (f"{server.url}/{filename}",),
        sha256=sha256,
        md5=md5,
        extract=extract,
        size=None,
        extract_dir=extract_dir,
    )
    return DatasetSpec("fake", (arch,), manual="Put FAKE-FILE by hand into {dir}/.")


def _closed_port_url(path="x.bin"):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{path}"


def test_good_download(server, tmp_path):
    data = _payload()
    spec = _spec(server, "a.bin", data)
    root = download(spec, tmp_path, progress=False)
    assert root == tmp_path / "fake"
    assert (root / "a.bin").read_bytes() == data
    assert not (root / "a.bin.part").exists()
    assert verify(spec, tmp_path) == {"a.bin": f"ok (sha256 {hashlib.sha256(data).hexdigest()})"}


def test_good_download_md5_only(server, tmp_path):
    data = _payload(seed=7)
    spec = _spec(server, "m.bin", data, md5=hashlib.md5(data).hexdigest())
    download(spec, tmp_path, progress=False)
    assert (tmp_path / "fake" / "m.bin").read_bytes() == data


def test_present_file_is_not_downloaded_again(server, tmp_path):
    data = _payload()
    spec = _spec(server, "a.bin", data)
    download(spec, tmp_path, progress=False)
    n = len(server.log)
    # a second call needs no network at all: even an unreachable URL is fine
    download(spec, tmp_path, progress=False, urls_override={"a.bin": _closed_port_url()})
    assert len(server.log) == n


def test_extract(server, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in [("fake-dir/train", b"train data"), ("fake-dir/sub/meta", b"m")]:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    data = buf.getvalue()
    spec = _spec(server, "f.tar.gz", data, extract=True, extract_dir="fake-dir")
    root = download(spec, tmp_path, progress=False)
    assert (root / "fake-dir" / "train").read_bytes() == b"train data"
    assert (root / "fake-dir" / "sub" / "meta").read_bytes() == b"m"
    assert (root / "f.tar.gz").read_bytes() == data  # kept, for verify
    assert sorted(p.name for p in root.iterdir()) == ["f.tar.gz", "fake-dir"]  # no temp dirs
    # removing the extracted directory and calling again re-extracts, without downloading
    n = len(server.log)
    shutil.rmtree(root / "fake-dir")
    download(spec, tmp_path, progress=False)
    assert (root / "fake-dir" / "train").exists() and len(server.log) == n


def test_resume(server, tmp_path):
    data = _payload(10000)
    spec = _spec(server, "r.bin", data)
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "r.bin.part").write_bytes(data[:5000])
    download(spec, tmp_path, progress=False)
    assert server.log == [("/r.bin", "bytes=5000-")]
    assert server.sent["/r.bin"] == 5000  # only the second half travelled
    assert (tmp_path / "fake" / "r.bin").read_bytes() == data
    assert not (tmp_path / "fake" / "r.bin.part").exists()


def test_resume_restarts_when_server_ignores_range(server, tmp_path):
    data = _payload(6000)
    spec = _spec(server, "r.bin", data)
    server.no_range.add("/r.bin")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "r.bin.part").write_bytes(b"junk" * 500)  # 200 answer: start over
    download(spec, tmp_path, progress=False)
    assert server.log[0][1] == "bytes=2000-"
    assert (tmp_path / "fake" / "r.bin").read_bytes() == data


def test_complete_part_is_not_downloaded_again(server, tmp_path):
    data = _payload(3000)
    spec = _spec(server, "r.bin", data)
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "r.bin.part").write_bytes(data)  # the server answers 416
    download(spec, tmp_path, progress=False)
    assert (tmp_path / "fake" / "r.bin").read_bytes() == data
    assert not (tmp_path / "fake" / "r.bin.part").exists()


def test_checksum_mismatch(server, tmp_path):
    data = _payload()
    wrong = hashlib.sha256(b"something else").hexdigest()
    spec = _spec(server, "bad.bin", data, sha256=wrong)
    with pytest.raises(DownloadError) as err:
        download(spec, tmp_path, progress=False)
    msg = str(err.value)
    assert "bad.bin" in msg and wrong in msg
    assert hashlib.sha256(data).hexdigest() in msg
    assert "FAKE-FILE" in msg  # manual instructions
    assert not (tmp_path / "fake" / "bad.bin").exists()
    assert not (tmp_path / "fake" / "bad.bin.part").exists()


def test_server_stops_mid_file_then_resume(server, tmp_path):
    data = _payload(20000)
    spec = _spec(server, "t.bin", data)
    server.truncate.add("/t.bin")
    with pytest.raises(DownloadError) as err:
        download(spec, tmp_path, progress=False, timeout=5)
    msg = str(err.value)
    assert "resume" in msg and "FAKE-FILE" in msg
    final, part = tmp_path / "fake" / "t.bin", tmp_path / "fake" / "t.bin.part"
    assert not final.exists()
    assert part.read_bytes() == data[:10000]
    server.truncate.clear()
    download(spec, tmp_path, progress=False)
    assert server.log[-1] == ("/t.bin", "bytes=10000-")
    assert final.read_bytes() == data and not part.exists()


def test_offline_names_manual_placement(tmp_path):
    arch = ArchiveSpec("o.bin", (_closed_port_url("o.bin"),), sha256="0" * 64, md5=None,
                       extract=False, size=None)
    spec = DatasetSpec("fake", (arch,), manual="Put FAKE-FILE by hand into {dir}/.")
    with pytest.raises(DownloadError) as err:
        download(spec, tmp_path, progress=False, timeout=5)
    msg = str(err.value)
    manual = f"Put FAKE-FILE by hand into {tmp_path / 'fake'}/."
    assert f"offline, place the files by hand: {manual}" in msg
    assert not (tmp_path / "fake" / "o.bin").exists()


def test_offline_real_spec_via_override(tmp_path):
    url = _closed_port_url("images_background.zip")
    with pytest.raises(DownloadError) as err:
        download("omniglot", tmp_path, progress=False, timeout=5,
                 urls_override={"images_background.zip": url,
                                "images_evaluation.zip": url})
    assert str(tmp_path / "omniglot" / "images_background.zip") in str(err.value)


def test_verify_real_omniglot():
    if not SHARED_OMNIGLOT.is_dir():
        pytest.skip(f"../shared/data/omniglot not found: {SHARED_OMNIGLOT}")
    result = verify("omniglot", SHARED_OMNIGLOT.parent)
    spec = ARCHIVES["omniglot"]
    assert set(result) == {"images_background.zip", "images_evaluation.zip"}
    for arch in spec.archives:
        sha = result[arch.filename].removeprefix("ok (sha256 ").removesuffix(")")
        assert sha in arch.alternates  # these copies verify through the alternates
    # download() is then a no-op that writes nothing (the shared directory is read-only)
    assert download("omniglot", SHARED_OMNIGLOT.parent, progress=False) == SHARED_OMNIGLOT


def test_verify_missing_and_mismatch(tmp_path):
    with pytest.raises(DownloadError) as err:
        verify("omniglot", tmp_path)
    msg = str(err.value)
    assert "missing" in msg and str(tmp_path / "omniglot" / "images_background.zip") in msg
    assert "raw.githubusercontent.com/brendenlake/omniglot" in msg
    (tmp_path / "omniglot").mkdir()
    for name in ("images_background.zip", "images_evaluation.zip"):
        (tmp_path / "omniglot" / name).write_bytes(b"not omniglot")
    with pytest.raises(DownloadError) as err:
        verify("omniglot", tmp_path)
    msg = str(err.value)
    assert "68d2efa1b9178cc56df9314c21c6e718" in msg
    assert hashlib.sha256(b"not omniglot").hexdigest() in msg


def test_registry_and_manual_only(tmp_path):
    assert dl.resolve("cifar_fs") is dl.resolve("fc100") is ARCHIVES["cifar100"]
    cifar = ARCHIVES["cifar100"].archives[0]
    assert cifar.extract and cifar.md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert not any(a.extract for a in ARCHIVES["omniglot"].archives)
    with pytest.raises(ValueError, match="unknown dataset"):
        dl.resolve("imagenet21k")
    with pytest.raises(DownloadError) as err:
        download("miniimagenet", tmp_path, progress=False)
    msg = str(err.value)
    for needle in ("train.csv", "images", "mini-imagenet-cache-train.pkl",
                   str(tmp_path / "miniimagenet")):
        assert needle in msg
    with pytest.raises(DownloadError, match="train_images_png.pkl"):
        download("tieredimagenet", tmp_path, progress=False)
    # once placed by hand, download and verify accept the layout
    root = tmp_path / "miniimagenet"
    root.mkdir()
    for name in ("mini-imagenet-cache-train.pkl", "mini-imagenet-cache-val.pkl",
                 "mini-imagenet-cache-test.pkl"):
        (root / name).write_bytes(b"")
    assert download("miniimagenet", tmp_path, progress=False) == root
    assert set(verify("miniimagenet", tmp_path)) == {
        "mini-imagenet-cache-train.pkl", "mini-imagenet-cache-val.pkl",
        "mini-imagenet-cache-test.pkl"}


def test_hashing_is_streaming(tmp_path, monkeypatch):
    p = tmp_path / "big.bin"
    data = os.urandom(3 * dl._HASH_CHUNK + 5)
    p.write_bytes(data)
    sizes = []
    real_open = open

    class _Spy:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def read(self, n=-1):
            sizes.append(n)
            return self.f.read(n)

    monkeypatch.setattr(dl, "open", lambda path, mode="r": _Spy(real_open(path, mode)),
                        raising=False)
    d = dl.file_digests(p)
    assert d["sha256"] == hashlib.sha256(data).hexdigest()
    assert d["md5"] == hashlib.md5(data).hexdigest()
    assert set(sizes) == {dl._HASH_CHUNK}
