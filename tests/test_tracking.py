"""Experiment tracking against the real thing: an ``mlflow server`` this module starts on a free
loopback port (read back with ``MlflowClient``), TensorBoard event files read with TensorBoard's
own ``EventAccumulator``, a server that goes away mid-run, and a missing package."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("mlflow", reason="the tracking extra: pip install 'jmeta[tracking]'")
pytest.importorskip("tensorboardX", reason="the tracking extra: pip install 'jmeta[tracking]'")
pytest.importorskip("tensorboard", reason="the tracking extra: pip install 'jmeta[tracking]'")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from jmeta.cli import main  # noqa: E402
from jmeta.train import ConfigError, Tracking, load_config, open_tracking, train  # noqa: E402
from jmeta.train._tracking import MlflowTracker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/sinusoid_demo.py")
SMALL = [
    "train.log_every=10", "train.save_every=20", "train.meta_batch_size=5", "model.hidden=(16,16)",
    "train.baseline=False", "eval.val_tasks=20", "eval.tasks=50", "eval.queries=20",
    "eval.steps=1,5",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(root: Path):
    """An ``mlflow server`` on a free loopback port, waited for until /health answers."""
    port = _free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root,
        # No background job runner (it starts a dozen queue consumers the tests never use).
        env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_server(proc)
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.25)
    return proc, url, port


def _stop_server(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)
    else:  # the server may be gone while its workers are not
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One MLflow tracking server (SQLite store, artifacts proxied) for the whole module."""
    proc, url, port = _start_server(tmp_path_factory.mktemp("mlflow-server"))
    yield url, port
    _stop_server(proc)


@pytest.fixture
def quick_http(monkeypatch):
    """A gone server fails at once, rather than after MLflow's retries; rows go out every
    0.2 s rather than every 5 s."""
    from jmeta.train import _tracking

    monkeypatch.setattr(_tracking, "FLUSH_S", 0.2)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (255, 0, 0)).save(path)


def test_mlflow_run_params_metrics_tags_artifacts_and_resume(server, tmp_path, capsys):
    url, _ = server
    run = tmp_path / "maml"
    track = ["--track", "mlflow", "--track-uri", url, "--run-dir", str(run), "--no-progress"]
    assert main(["train", CONFIG, *SMALL, "train.meta_steps=30", "--no-eval", *track]) == 0
    run_id = (run / "mlflow_run_id").read_text().strip()
    client = MlflowClient(url)
    first = client.get_run(run_id)
    assert first.info.status == "FINISHED" and first.info.run_name == "maml"
    assert client.get_experiment(first.info.experiment_id).name == "sinusoid_demo"
    assert [s for s, _ in _history(client, run_id, "loss")] == [10, 20, 30]

    # Resumed with the full count: the same MLflow run goes on, from step 30.
    _png(run / "plots" / "loss.png")
    assert main(["train", CONFIG, *SMALL, "train.meta_steps=60", *track]) == 0
    assert "resuming" in capsys.readouterr().err
    assert (run / "mlflow_run_id").read_text().strip() == run_id
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert len(client.search_runs([first.info.experiment_id])) == 1

    params = got.data.params
    assert params["learner.name"] == "maml" and params["model.hidden"] == "(16, 16)"
    assert params["train.meta_steps"] == "30"  # params are immutable: the change is a tag
    assert got.data.tags["jmeta.resumed.train.meta_steps"] == "60"
    results = json.loads((run / "results.json").read_text())
    assert got.data.tags["jmeta.commit"] == results["environment"]["commit"]
    assert got.data.tags["mlflow.source.git.commit"] == results["environment"]["commit"]
    assert got.data.tags["jmeta.backend"] == results["environment"]["backend"]

    rows = _rows(run)
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    for key in ("loss", "grad_norm", "steps_per_sec"):
        assert _history(client, run_id, key) == [(r["step"], pytest.approx(r[key])) for r in rows]
    assert _history(client, run_id, "val_score") == [
        (r["step"], pytest.approx(r["val_score"])) for r in rows if "val_score" in r]

    ev = json.loads((run / "eval.json").read_text())
    for method in ("maml",):
        for k in ("1", "5"):
            mean = ev["results"][method][k]["mean"]
            key = f"test/{method}/query_mse/{k}_steps"
            assert _history(client, run_id, key) == [(60, pytest.approx(mean))]

    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.json", "metrics.jsonl", "results.json", "eval.json", "plots"} <= names
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/loss.png"]
    local = client.download_artifacts(run_id, "results.json", str(tmp_path))
    assert json.loads(Path(local).read_text())["steps"] == 60


class _Crash(RuntimeError):
    pass


def test_tensorboard_events_match_metrics_jsonl_across_a_crash_and_resume(tmp_path, monkeypatch):
    """A run that dies at step 51 (checkpoint 40) resumes; TensorBoard shows each step once
    (the events after the checkpoint are purged), with the values of metrics.jsonl; the default
    MLflow store beside the run directory holds the same run, without a step twice."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    run = tmp_path / "runs" / "tb"
    cfg = load_config(CONFIG, [*SMALL, "train.meta_steps=60"])

    def crash(step, state):
        if step == 51:
            raise _Crash("killed")
        return state

    with pytest.raises(_Crash), open_tracking("tensorboard,mlflow") as tracking:
        train(cfg, run, progress=False, tracker=tracking, step_hook=crash)
    assert [r["step"] for r in _rows(run)] == [10, 20, 30, 40, 50]
    run_id = (run / "mlflow_run_id").read_text().strip()
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "FAILED"

    assert main(["train", CONFIG, *SMALL, "train.meta_steps=60", "--no-eval", "--no-progress",
                 "--track", "tensorboard,mlflow", "--run-dir", str(run)]) == 0
    rows = _rows(run)
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    ea = EventAccumulator(str(run / "tensorboard"))
    ea.Reload()
    assert {"loss", "grad_norm", "steps_per_sec", "val_score"} <= set(ea.Tags()["scalars"])
    for key in ("loss", "grad_norm"):
        events = ea.Scalars(key)
        assert [e.step for e in events] == [r["step"] for r in rows]
        assert [e.value for e in events] == [pytest.approx(r[key], rel=1e-6) for r in rows]
    assert "config/text_summary" in ea.Tags()["tensors"]  # the config, as text

    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert [s for s, _ in _history(client, run_id, "loss")] == [10, 20, 30, 40, 50, 60]
    assert {a.path for a in client.list_artifacts(run_id)} >= {"results.json", "metrics.jsonl"}
    assert (tmp_path / "runs" / "mlartifacts").is_dir()


class _Proxy:
    """A TCP forwarder to the module's server; :meth:`stop` makes the server vanish for the
    clients that talk to it (connections reset, the port refuses)."""

    def __init__(self, target: int):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def _run_losing_the_server(url, kill, tmp_path, capsys):
    run = tmp_path / "gone"
    cfg = load_config(CONFIG, [*SMALL, "train.meta_steps=80"])
    client = MlflowClient(url)

    def hook(step, state):
        if step == 31:  # rows 10-30 sent, then the server goes
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                run_id = (run / "mlflow_run_id").read_text().strip() if (
                    run / "mlflow_run_id").exists() else None
                if run_id and len(client.get_metric_history(run_id, "loss")) == 3:
                    break
                time.sleep(0.05)
            kill()
        return state

    with open_tracking("mlflow", uri=url) as tracking:
        res = train(cfg, run, progress=False, tracker=tracking, step_hook=hook)
        tracking.log_artifacts(run)
    assert res["steps"] == 80 and (run / "results.json").exists()
    assert [r["step"] for r in _rows(run)] == list(range(10, 81, 10))
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("jmeta: warning:")]
    assert len(warnings) == 1, err
    assert "tracking to mlflow failed" in warnings[0] and "metrics.jsonl keeps every row" in err
    return run


def test_a_server_gone_mid_run_is_one_warning_and_the_run_goes_on(server, tmp_path, capsys,
                                                                  quick_http):
    url, port = server
    proxy = _Proxy(port)
    run = _run_losing_the_server(f"http://127.0.0.1:{proxy.port}", proxy.stop, tmp_path, capsys)
    client = MlflowClient(url)  # the server itself is still there: it kept rows 10-30
    run_id = (run / "mlflow_run_id").read_text().strip()
    assert [s for s, _ in _history(client, run_id, "loss")] == [10, 20, 30]


@pytest.mark.slow  # 11-41 s; the cut-proxy test below covers the same path in `make test`
def test_a_killed_server_mid_run_is_one_warning_and_the_run_goes_on(tmp_path, capsys, quick_http):
    root = tmp_path / "doomed"
    root.mkdir()
    proc, url, _ = _start_server(root)
    try:
        def kill():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)

        _run_losing_the_server(url, kill, tmp_path, capsys)
    finally:
        _stop_server(proc)


@pytest.mark.parametrize("tracker,module", [("mlflow", "mlflow"), ("tensorboard", "tensorboardX")])
def test_a_missing_package_names_the_extra_before_anything_runs(tracker, module, tmp_path,
                                                                monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` fails
    run = tmp_path / "never"
    code = main(["train", CONFIG, *SMALL, "--track", f"jsonl,{tracker}", "--run-dir", str(run)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--track {tracker} needs the {module} package" in err
    assert "pip install 'jmeta[tracking]'" in err
    assert not run.exists()  # nothing was read, written or compiled


def test_unknown_tracker_and_a_uri_without_mlflow_are_errors(capsys):
    with pytest.raises(ConfigError, match="Did you mean 'mlflow'"):
        open_tracking("jsonl,mlfow")
    with pytest.raises(ConfigError, match="add mlflow to --track"):
        open_tracking("tensorboard", uri="http://127.0.0.1:1")
    assert open_tracking("jsonl").names == []


def test_only_process_0_tracks(monkeypatch):
    import jax

    with open_tracking("tensorboard,mlflow") as tracking:
        assert tracking.names == ["tensorboard", "mlflow"]
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    with open_tracking("tensorboard,mlflow") as tracking:
        assert tracking.names == []  # the packages were checked; nothing is opened


def test_the_store_is_the_flag_then_the_env_var_then_sqlite_beside_the_run(tmp_path,
                                                                           monkeypatch):
    run = tmp_path / "runs" / "a"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert MlflowTracker()._store(run) == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert MlflowTracker()._store(run) == "http://env:5000"
    assert MlflowTracker("http://flag:5000")._store(run) == "http://flag:5000"


class _Slow:
    """A tracker that takes 50 ms per call, and records what it gets."""

    def __init__(self, fail_at=None):
        self.rows, self.batches, self.closed, self.fail_at = [], [], None, fail_at

    def start(self, run_dir, *, name, resume_step):
        pass

    def log_params(self, params):
        pass

    def set_tags(self, tags):
        pass

    def log_metrics_many(self, rows):
        time.sleep(0.05)
        if self.fail_at is not None and any(step >= self.fail_at for step, _ in rows):
            raise ConnectionError("server gone")
        self.batches.append(len(rows))
        self.rows += rows

    def log_metrics(self, step, metrics):
        self.log_metrics_many([(step, metrics)])

    def log_artifacts(self, run_dir):
        pass

    def close(self, status="FINISHED"):
        self.closed = status


def test_logging_never_waits_rows_coalesce_and_overflow_is_dropped(tmp_path, monkeypatch, capsys):
    from jmeta.train import _tracking

    monkeypatch.setattr(_tracking, "QUEUE_ROWS", 64)
    monkeypatch.setattr(_tracking, "FLUSH_S", 0.2)
    slow = _Slow()
    tracking = Tracking([("slow", slow)])
    tracking.start(tmp_path, name="x", resume_step=0)
    t = time.perf_counter()
    for step in range(1, 201):
        tracking.log_metrics(step, {"loss": float(step)})
    assert time.perf_counter() - t < 0.5  # 200 calls to a 50 ms tracker, none waited
    tracking.close()
    assert slow.closed == "FINISHED"
    steps = [s for s, _ in slow.rows]
    assert steps == sorted(steps) and steps[0] == 1
    assert max(slow.batches) > 1  # rows waiting went out together
    assert 0 < 200 - len(steps)  # the overflow was dropped...
    err = capsys.readouterr().err
    assert err.count("jmeta: warning:") == 1 and "metric rows were not sent" in err  # ...and said


def test_a_failing_tracker_warns_once_and_stops(tmp_path, capsys):
    slow = _Slow(fail_at=3)
    with Tracking([("flaky", slow)]) as tracking:
        tracking.start(tmp_path, name="x", resume_step=0)
        for step in range(1, 50):
            tracking.log_metrics(step, {"loss": 1.0})
            time.sleep(0.002)
    err = capsys.readouterr().err
    assert err.count("jmeta: warning:") == 1 and "tracking to flaky failed" in err
    assert "ConnectionError: server gone" in err
    assert slow.closed is None  # a failed tracker is not called again
