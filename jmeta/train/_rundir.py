"""A run directory: its config, logs, results and checkpoints, and the parameters of any step.

Layout (written by :func:`jmeta.train.train`)::

    config.json          the resolved config
    metrics.jsonl        one JSON object per logged step
    results.json         training's summary, with the environment and the commit
    eval.json            the last meta-test (evals/<ways>w<shots>s.json keeps one per setting)
    checkpoints/steps    Orbax checkpoints of the training state (the last few and the best)
    checkpoints/meta     the final meta-parameters
    checkpoints/pretrained   the regression baseline's parameters (sinusoid)
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
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
        """The rows of ``metrics.jsonl``, in order."""
        f = self.path / METRICS_FILE
        if not f.exists():
            return []
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]

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
