"""A run directory: its config, logs, results and checkpoints, and the parameters of any step.

Layout (written by :func:`jmeta.train.train`)::

    config.json          the resolved config
    metrics.jsonl        one JSON object per logged step
    results.json         training's summary, with the environment and the commit
    eval.json            the last meta-test (evals/<ways>w<shots>s.json keeps one per setting)
    checkpoints/steps    Orbax checkpoints of the training state (the last few and the best)
    checkpoints/meta     the final meta-parameters
    checkpoints/pretrained   the regression baseline's parameters (sinusoid)
    process.json         the process that trains or last trained it (host, pid, start, end)
"""

from __future__ import annotations

import functools
import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

import jax

from jmeta.core._meta import init_state
from jmeta.core._registry import ConfigError
from jmeta.train._build import build, build_optimizer, frozen_meta, model_task, test_config
from jmeta.train._checkpoint import STEPS_DIR, RunCheckpoints, abstract_state, restore_tree
from jmeta.train._config import Config, load_config

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
EVAL_FILE = "eval.json"
PROCESS_FILE = "process.json"

# A run that no local process is known to train counts as running while its files changed in
# the last ACTIVE_S seconds (or three times its longest gap between two logged rows, if longer).
ACTIVE_S = 600.0

_ROOT = Path(__file__).resolve().parents[2]


def git_commit(root: str | os.PathLike = _ROOT) -> str:
    """The short commit of the checkout at ``root`` (``+dirty`` with uncommitted changes to
    tracked files), or ``"unknown"`` outside a git checkout.

    Example:
      >>> isinstance(git_commit(), str)
      True
    """
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10, check=False).stdout.strip()

        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no") if commit else ""
        return (commit + ("+dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """Hardware, software and commit of this process, recorded beside every result. Read once,
    when the process first asks (training asks at its start), so a commit made while a long run
    is going is not credited with that run's result.

    Example:
      >>> sorted(environment())[:3]
      ['backend', 'commit', 'cpu']
    """
    dev = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": dev.device_kind,
        "num_devices": jax.device_count(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
    }


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch, from Linux's ``/proc``); ``inf``
    for a zombie (it exited, unreaped), ``None`` where ``/proc`` cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return float("inf")
        boot = next(float(line.split()[1]) for line in
                    Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def training_process_alive(info: dict) -> bool | None:
    """Whether the process a ``process.json`` names is still alive: ``None`` when this machine
    cannot tell (another host, or no ``os.kill(pid, 0)`` probe). A pid reused by a process
    that started after the run's process is not taken for it.

    Example:
      >>> import os, socket, time
      >>> training_process_alive({"pid": os.getpid(), "host": socket.gethostname(),
      ...                         "started": time.time()})
      True
    """
    if info.get("host") != socket.gethostname() or os.name == "nt":  # nt: kill(pid, 0) kills
        return None
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    except (OSError, KeyError, TypeError, ValueError):
        return False
    begun = _process_start(int(info["pid"]))
    # /proc's boot time is whole seconds: 2 s of slack.
    return begun is None or begun <= float(info.get("started", float("inf"))) + 2.0


def records_process(train_fn):
    """Decorates :func:`jmeta.train.train`: when it starts (before data loading and compiling),
    ``process.json`` in the run directory names the process (``pid``, ``host``, ``started``);
    when it returns or raises, ``ended`` is added. :meth:`RunDir.status` reads it to tell a run
    being trained from an interrupted one; a killed process leaves it without ``ended``. Only
    process 0 of a multi-process run writes it; a file that names another live process is left
    alone. A directory created only for the file is removed again when the call fails before
    writing anything else."""

    @functools.wraps(train_fn)
    def train(cfg, run_dir, *args, **kwargs):
        run_dir = Path(run_dir)
        marker = run_dir / PROCESS_FILE
        if jax.process_index() != 0:
            return train_fn(cfg, run_dir, *args, **kwargs)
        try:
            other = json.loads(marker.read_text())
        except (OSError, ValueError):
            other = None
        if (other and not other.get("ended") and other.get("pid") != os.getpid()
                and training_process_alive(other)):
            return train_fn(cfg, run_dir, *args, **kwargs)
        created = []
        d = run_dir
        while not d.exists():
            created.append(d)
            d = d.parent
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps(mine) + "\n")
            os.replace(tmp, marker)
        except OSError:
            mine = None  # a read-only place: training reports the error itself
        try:
            return train_fn(cfg, run_dir, *args, **kwargs)
        finally:
            try:
                if mine and json.loads(marker.read_text()) == mine:
                    if created and [f.name for f in run_dir.iterdir()] == [PROCESS_FILE]:
                        marker.unlink()  # failed before writing anything: leave no folder
                    else:
                        tmp.write_text(json.dumps(dict(mine, ended=time.time())) + "\n")
                        os.replace(tmp, marker)
            except (OSError, ValueError):
                pass
            for d in created:  # the deepest first; stops at the first one that holds files
                try:
                    d.rmdir()
                except OSError:
                    break

    return train


class RunDir:
    """A run directory, read: config, metrics, results, checkpoints, parameters of any step.

    Example::

        run = RunDir("runs/omniglot_protonets-5w1s")
        run.config.learner.name, run.steps(), run.best_step()
        params, step = run.params("best")        # meta-parameters of the best checkpoint
        run.results()["environment"]["commit"]
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def exists(self) -> bool:
        """Whether the directory holds a run (its ``config.json``)."""
        return (self.path / CONFIG_FILE).exists()

    @functools.cached_property
    def config(self) -> Config:
        """The run's config; a ``config.json`` in the flat layout of earlier runs loads too."""
        if not self.exists():
            raise FileNotFoundError(f"{self.path} is not a run directory: {CONFIG_FILE} is "
                                    "missing.")
        return load_config(self.path / CONFIG_FILE)

    def _json(self, name: str) -> dict | None:
        f = self.path / name
        return json.loads(f.read_text()) if f.exists() else None

    def results(self) -> dict | None:
        """``results.json`` (training's summary), or ``None`` before the run finished."""
        return self._json(RESULTS_FILE)

    def evaluation(self) -> dict | None:
        """``eval.json`` (the last meta-test), or ``None``."""
        return self._json(EVAL_FILE)

    def metrics(self) -> list[dict]:
        """The rows of ``metrics.jsonl``, in order (of a running run, without a last line still
        being written)."""
        f = self.path / METRICS_FILE
        if not f.exists():
            return []
        lines = [line for line in f.read_text().splitlines() if line.strip()]
        rows = [json.loads(line) for line in lines[:-1]]
        try:
            return rows + [json.loads(line) for line in lines[-1:]]
        except ValueError:
            return rows

    def process(self) -> dict | None:
        """``process.json``: the process that trains or last trained the run (``pid``,
        ``host``, ``started``, and ``ended`` once :func:`jmeta.train.train` returned or
        raised), or ``None``."""
        try:
            return self._json(PROCESS_FILE)
        except ValueError:
            return None

    def status(self, *, now: float | None = None) -> str:
        """``"finished"`` (``results.json`` written), ``"running"`` or ``"interrupted"``.

        Running: ``process.json`` names a process that has not ended (:func:`jmeta.train.train`
        adds ``ended`` when it returns or raises) and, on this machine, is alive (a killed
        process leaves a dead pid; a reused pid belongs to a process started later). Where
        this machine cannot check the process (another host on a shared file system), or for
        a run without ``process.json`` (trained before it existed), running means that the
        run's files (``metrics.jsonl``, ``process.json``, the step checkpoints) changed in the
        last :data:`ACTIVE_S` seconds, or three times the run's longest gap between logged
        rows if that is longer.

        Example::

            RunDir("runs/demo").status()   # 'interrupted'
        """
        if (self.path / RESULTS_FILE).exists():
            return "finished"
        proc = self.process()
        if proc and proc.get("ended"):
            return "interrupted"
        alive = training_process_alive(proc) if proc else None
        if alive is not None:
            return "running" if alive else "interrupted"
        times = [r.get("time") for r in self.metrics() if isinstance(r.get("time"), (int, float))]
        gaps = [b - a for a, b in zip(times, times[1:]) if b > a]
        window = max([ACTIVE_S] + [3.0 * g for g in gaps])
        files = [self.path / METRICS_FILE, self.path / PROCESS_FILE, self.checkpoints / STEPS_DIR]
        changed = [f.stat().st_mtime for f in files if f.exists()]
        now = time.time() if now is None else now
        return "running" if changed and now - max(changed) < window else "interrupted"

    def final_step(self) -> int | None:
        """The number of meta-steps of the finished run, or ``None``."""
        results = self.results()
        return results.get("steps") if results else None

    def _manager(self, frozen=None) -> RunCheckpoints | None:
        directory = self.checkpoints / STEPS_DIR
        if not directory.exists():
            return None
        return RunCheckpoints(directory, keep=self.config.train.keep_checkpoints,
                              asynchronous=False, frozen=frozen)

    def steps(self) -> list[int]:
        """The steps with a checkpoint of the training state."""
        ckpts = self._manager()
        if ckpts is None:
            return []
        try:
            return ckpts.steps()
        finally:
            ckpts.close()

    def best_step(self) -> int | None:
        """The checkpoint with the best validation score, or ``None``."""
        return self.pick("best")[0]

    def pick(self, checkpoint: str | int = "best") -> tuple[int | None, float | None]:
        """``(step, validation score)`` of a checkpoint: ``"best"``, ``"final"`` (then
        ``(None, None)``: the final meta-parameters), or a step number."""
        if checkpoint == "final":
            return None, None
        ckpts = self._manager()
        if ckpts is None:
            if checkpoint == "best":
                return None, None
            raise ConfigError(f"{self.path} keeps no step checkpoints; use checkpoint='final'.")
        try:
            if checkpoint == "best":
                step = ckpts.best_step()
            else:
                step = int(checkpoint)
                if step not in ckpts.steps():
                    raise ConfigError(f"{self.path} has no checkpoint at step {step}; it has "
                                      f"{ckpts.steps()}.")
            return (step, ckpts.val_score(step)) if step is not None else (None, None)
        finally:
            ckpts.close()

    def setup(self, cfg: Config | None = None, task=None):
        """The test-time :class:`jmeta.train.Setup` of the run (no dataset needed)."""
        cfg = test_config(cfg or self.config)
        return build(cfg, task if task is not None else model_task(cfg), test=True)

    def params(self, checkpoint: str | int = "best", *, cfg: Config | None = None,
               task=None) -> tuple[dict, int | None]:
        """``(meta_parameters, step)`` of a checkpoint (see :meth:`pick`; ``"best"`` falls back
        to the final parameters for a run without validated checkpoints). A frozen pretrained
        encoder, which checkpoints do not save, is read again from its weights."""
        cfg = cfg or self.config
        setup = self.setup(cfg, task)
        learner = setup.learner
        step, _ = self.pick(checkpoint)
        key = jax.random.key(0)
        frozen = frozen_meta(setup.model)
        if step is None:
            final = self.checkpoints / "meta"
            if not final.exists():
                steps = self.steps()
                saved = (f"its step checkpoints ({', '.join(map(str, steps))}) evaluate with "
                         "--checkpoint STEP or best" if steps else "it saved no checkpoint yet")
                raise FileNotFoundError(
                    f"The run in {self.path} has not finished (no final meta-parameters at "
                    f"{final}): {saved}; `jmeta train` on the same --run-dir resumes it.")
            params = restore_tree(final, jax.eval_shape(learner.init, key), frozen=frozen,
                                  frozen_values=lambda: learner.init(key))
            return params, self.final_step()
        optimizer = build_optimizer(cfg, setup.model)
        seed = jax.random.key(cfg.train.seed)
        ckpts = self._manager(frozen)
        try:
            state, _ = ckpts.restore(step, abstract_state(
                lambda: init_state(learner, optimizer, seed)),
                frozen_values=lambda: learner.init(key))
        finally:
            ckpts.close()
        return state.params, step
