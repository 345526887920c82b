"""Time to accuracy: test accuracy against training seconds, jmeta and a PyTorch peer side by side.

``jmeta bench tta CONFIG --target 97 --peer pytorch`` (:func:`time_to_accuracy`):

1. The parent process writes a work folder: the config, the peer's protocol (the config's
   episodes, network, optimizer and inner loop, as plain numbers), the training split as
   ``uint8`` arrays and the test episodes exactly as ``jmeta eval`` draws them (the test classes
   only, ``--tasks`` of them, 600 by default).
2. Two child processes train at once, each pinned to its own core (``--schedule parallel``), or
   one after the other on every core (``--schedule alternate``): jmeta (``python -m jmeta.bench
   _tta_jmeta WORK``) and the peer (``benchmarks/peers/tta_peer.py``). Each counts training
   seconds only (every step waited for; compile and the first step excluded and reported
   apart), keeps a copy of the parameters whenever the count passes a mark, and stops at the
   budget.
3. After training, each evaluates its snapshots on the same test episodes (jmeta through the
   same code as ``jmeta eval``; the episodes' fingerprint is checked), so evaluation never
   counts as training time.

The parent then reports, per library, accuracy (mean +- 95% CI over the episodes) at every mark,
the training seconds at which the mean first reaches each target, the ratio of the two, and
writes ``tta_<name>.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from jmeta.core import ConfigError, init_state, make_meta_step
from jmeta.train._build import (
    build,
    build_optimizer,
    build_task,
    check_config,
    eval_queries,
    test_config,
    test_params,
    test_ways,
    train_shots,
    training_batches,
)
from jmeta.train._config import Config, load_config
from jmeta.train._eval import mean_ci95
from jmeta.train._evaluation import BN_STREAM, TEST_STREAM, curves, seed_key
from jmeta.train._rundir import environment

PEERS = {"pytorch": ("protonets", "maml", "fomaml"), "learn2learn": ("maml", "fomaml")}
"""The peer libraries and the learners each runs (``benchmarks/peers/tta_peer.py``)."""
SCHEDULES = ("parallel", "alternate")
PEER_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "peers" / "tta_peer.py"


def default_marks(budget_s: float) -> list[float]:
    """Snapshot times (training seconds): 15, 30, 60, ... doubling, and every tenth of the budget.

    Example:
      >>> default_marks(600)
      [15.0, 30.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0, 420.0, 480.0, 540.0, 600.0]
    """
    marks = {float(budget_s * i / 10) for i in range(1, 11)}
    t = 15.0
    while t < budget_s / 10:
        marks.add(t)
        t *= 2
    return sorted(round(m, 3) for m in marks)


def protocol(cfg: Config) -> dict:
    """What a peer needs to train and test as ``cfg`` does, as plain numbers; a
    :class:`ConfigError` for what no peer implements (the peers are Conv-4 on images).

    Example:
      >>> cfg = load_config("configs/omniglot_protonets.py:5w1s", ["data.ways=20"])
      >>> p = protocol(cfg)
      >>> p["algorithm"], p["train"]["ways"], p["test"]["ways"], p["model"]["pool"]
      ('protonets', 20, 5, True)
    """
    cfg = check_config(cfg)
    name = cfg.learner.name
    known = sorted({a for algos in PEERS.values() for a in algos})
    if name not in known:
        raise ConfigError(f"bench tta: no peer runs learner {name!r}; peers run {known}.")
    if cfg.model.name != "conv4":
        raise ConfigError(f"bench tta: the peers build Conv-4 only; the config's model is "
                          f"{cfg.model.name!r}.")
    if cfg.data.get("augment_rotations") or cfg.data.get("sampler", "device") != "device":
        raise ConfigError("bench tta: episodes are drawn on the device without augmentation "
                          "(data.sampler='device', data.augment_rotations=False).")
    opt = cfg.optimizer
    schedule = opt.get("schedule", "constant")
    if opt.get("name", "adam") != "adam" or schedule not in ("constant", "step") or opt.get(
            "grad_clip", 0.0):
        raise ConfigError(f"bench tta: the peers use Adam with a constant or step schedule and "
                          f"no clipping; the config asks for {opt.get('name')!r}, schedule "
                          f"{schedule!r}, grad_clip {opt.get('grad_clip')}.")
    if cfg.model.get("bn_mode", "transductive") != "transductive":
        raise ConfigError("bench tta: the peers normalise with each set's statistics "
                          "(model.bn_mode='transductive').")
    learner = cfg.learner
    eval_steps = max(cfg.eval.steps) if name != "protonets" else 0
    return dict(
        algorithm=name,
        model=dict(filters=int(cfg.model.get("filters", 64)),
                   pool=not cfg.model.get("strided", False), bn_mode="transductive",
                   init=cfg.model.get("init", "lecun")),
        train=dict(ways=cfg.data.ways, shots=train_shots(cfg), queries=cfg.data.queries,
                   meta_batch=cfg.train.meta_batch_size),
        test=dict(ways=test_ways(cfg), shots=cfg.data.shots, queries=eval_queries(cfg),
                  inner_steps=eval_steps),
        optimizer=dict(lr=float(opt.lr), schedule=schedule,
                       decay_every=int(opt.get("decay_every", 0) or 0),
                       decay_rate=float(opt.get("decay_rate", 1.0) or 1.0)),
        inner=dict(lr=float(learner.get("inner_lr", 0.0) or 0.0),
                   steps=int(learner.get("inner_steps", 0) or 0),
                   first_order=name == "fomaml" or bool(learner.get("first_order", False))),
        seed=cfg.train.seed,
    )


def _test_task(cfg: Config):
    tcfg = test_config(cfg)
    return tcfg, build_task(tcfg, need_train=False)


def export(cfg: Config, work: Path, tasks: int) -> str:
    """Writes the training split (``train.npz``: ``uint8`` images, class ranges and quarter
    turns) and the test episodes (``episodes.npz``: the images as the ``uint8`` levels ``k`` of
    their values ``k / 255``, labels ``int32``) into ``work``; returns the episodes' sha256, as
    :func:`jmeta.train.evaluate` fingerprints them."""
    task = build_task(cfg)
    train = task.train
    np.savez(work / "train.npz", data=train.data, class_start=train.class_start,
             class_count=train.class_count,
             class_rotation=(train.class_rotation if train.class_rotation is not None
                             else np.zeros(train.num_classes, np.int8)))
    tcfg, ttask = _test_task(cfg)
    fingerprint = hashlib.sha256()
    parts: dict[str, list] = {"xs": [], "ys": [], "xq": [], "yq": []}
    for batch in ttask.test_tasks(seed_key(tcfg, TEST_STREAM), tasks, tcfg.eval.split):
        for leaf in jax.tree.leaves(batch):
            fingerprint.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
        for k, a in zip(("xs", "ys"), (batch.support.x, batch.support.y)):
            parts[k].append(np.asarray(a))
        for k, a in zip(("xq", "yq"), (batch.query.x, batch.query.y)):
            parts[k].append(np.asarray(a))
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    for k in ("xs", "xq"):  # images are k / 255: keep the levels, exactly
        levels = np.rint(arrays[k] * 255.0)
        if not np.allclose(levels / 255.0, arrays[k], atol=1e-6):
            raise ConfigError("bench tta: test images are not k / 255 levels (a transform?).")
        arrays[k] = levels.astype(np.uint8)
    np.savez(work / "episodes.npz", **arrays)
    return fingerprint.hexdigest()


def train_and_test(work: str | Path, log: Callable[[str], None] = print) -> dict:
    """The jmeta side (``python -m jmeta.bench _tta_jmeta WORK``): trains the work folder's
    config for its budget of training seconds, snapshots at its marks, then tests every
    snapshot on the work folder's episodes; writes and returns ``jmeta.json``."""
    work = Path(work)
    spec = json.loads((work / "tta.json").read_text())
    cfg = check_config(load_config(work / "config.json"))
    task = build_task(cfg)
    setup = build(cfg, task)
    learner = setup.learner
    optimizer = build_optimizer(cfg, setup.model)
    state = init_state(learner, optimizer, seed_key(cfg))
    sampler, host = training_batches(task, learner)
    if host is not None:
        raise ConfigError("bench tta: data.sampler='device' only.")
    state = jax.device_put(state, jax.devices()[0])
    step_fn = make_meta_step(learner, optimizer, task_map=setup.task_map,
                             chunk_size=cfg.train.chunk_size or None, sampler=sampler)
    t = time.perf_counter()
    compiled = step_fn.lower(state).compile()
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    state, _ = compiled(state)  # the first step (allocation, warm caches) is not counted
    jax.block_until_ready(state)
    first_s = time.perf_counter() - t
    marks, budget = list(spec["marks"]), float(spec["budget_s"])
    snaps, elapsed, step, i = [], 0.0, 0, 0
    losses = []
    while elapsed < budget:
        t = time.perf_counter()
        state, metrics = compiled(state)
        jax.block_until_ready(state)
        elapsed += time.perf_counter() - t
        step += 1
        losses.append(metrics["loss"])
        while i < len(marks) and elapsed >= marks[i]:
            snaps.append(dict(mark_s=marks[i], train_s=elapsed, step=step,
                              loss=float(np.mean(jax.device_get(losses[-20:]))),
                              params=jax.device_get(state.params)))
            log(f"jmeta: {elapsed:.1f} s, step {step}")
            i += 1
    if snaps:  # the last snapshot's parameters, for checking the scores outside this process
        flat = jax.tree_util.tree_flatten_with_path(snaps[-1]["params"])[0]
        np.savez(work / "jmeta_last.npz",
                 **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})
    tcfg, ttask = _test_task(cfg)
    val = build(tcfg, ttask, test=True)
    steps = max(max(tcfg.eval.steps), 1) if learner.inner_steps else 1
    rows, digest = [], None
    t_eval = time.perf_counter()
    for s in snaps:
        params = test_params(cfg, task, s.pop("params"), seed_key(cfg, BN_STREAM))
        fingerprint = hashlib.sha256()
        c = curves(ttask, val.learner, params, seed_key(tcfg, TEST_STREAM), spec["tasks"], steps,
                   tcfg.eval.split, val.task_map, only=(steps,), fingerprint=fingerprint)
        digest = fingerprint.hexdigest()
        rows.append(dict(s, accuracy=[round(float(v), 4) for v in c[:, steps]]))
    if digest is not None and digest != spec["episodes_sha256"]:
        raise RuntimeError("bench tta: jmeta tested other episodes than the ones exported.")
    out = dict(library="jmeta", compile_s=compile_s, first_step_s=first_s, steps=step,
               train_s=elapsed, eval_s=time.perf_counter() - t_eval, test_inner_steps=steps,
               snapshots=rows, environment=dict(environment()))
    (work / "jmeta.json").write_text(json.dumps(out))
    return out


def time_to(rows: Sequence[dict], target: float) -> float | None:
    """Training seconds of the first snapshot whose mean accuracy reaches ``target``, or None.

    Example:
      >>> rows = [dict(train_s=10.0, mean=90.0), dict(train_s=20.0, mean=95.5)]
      >>> time_to(rows, 95.0), time_to(rows, 99.0)
      (20.0, None)
    """
    return next((r["train_s"] for r in rows if r["mean"] >= target), None)


def _key(target: float) -> str:
    return f"{float(target):g}"


def summarise(result: dict, targets: Sequence[float]) -> dict:
    """Adds each library's curve (mean, CI per snapshot), its time to each target and, with a
    peer, the ratio peer time / jmeta time."""
    libs = {}
    for name, res in result["libraries"].items():
        curve = []
        for s in res["snapshots"]:
            stats = mean_ci95(s["accuracy"])
            curve.append(dict(mark_s=s["mark_s"], train_s=s["train_s"], step=s["step"],
                              loss=s.get("loss"), mean=stats["mean"], ci95=stats["ci95"]))
        times = {_key(t): time_to(curve, t) for t in targets}
        start = res.get("compile_s", 0.0) + res.get("first_step_s", 0.0)
        libs[name] = dict(curve=curve, times=times, best=max((c["mean"] for c in curve),
                                                               default=None),
                          times_with_start={t: None if v is None else v + start
                                            for t, v in times.items()})
    out = dict(result, summary=libs)
    if len(libs) == 2 and "jmeta" in libs:
        peer = next(n for n in libs if n != "jmeta")
        ratios = {}
        for t in map(_key, targets):
            a, b = libs["jmeta"]["times"][t], libs[peer]["times"][t]
            ratios[t] = None if a is None or b is None else b / a
        out["ratio"] = ratios
    return out


def tta_markdown(res: dict) -> str:
    """The result as Markdown: the protocol, time to each target, the curves."""
    p, targets = res["protocol"], res["targets"]
    lines = [f"# Time to accuracy: {res['name']}", "",
             f"{p['algorithm']}, Conv-4 ({p['model']['filters']} filters, "
             f"{'max-pool' if p['model']['pool'] else 'strided'}, BatchNorm "
             f"{p['model']['bn_mode']}, {p['model'].get('init', 'lecun')} init), trained "
             f"{p['train']['ways']}-way {p['train']['shots']}-shot, {p['train']['queries']} "
             f"queries, meta-batch {p['train']['meta_batch']}, "
             f"Adam {p['optimizer']['lr']:g} ({p['optimizer']['schedule']}); tested on "
             f"{res['tasks']} {p['test']['ways']}-way {p['test']['shots']}-shot episodes of the "
             f"test classes, {p['test']['queries']} queries per class"
             + (f", {res['libraries']['jmeta'].get('test_inner_steps')} inner steps at test"
                if p["algorithm"] != "protonets" else "") + ". "
             f"Schedule {res['schedule']}"
             + (f" (cores {res['cores']})" if res["schedule"] == "parallel" else "")
             + f"; budget {res['budget_s']:g} training seconds per library; commit "
             f"{res['environment'].get('commit')}, {res['date']}, {res['host']}.", "",
             "| library | " + " | ".join(f"seconds to {t:g}% (with compile and first step)"
                                        for t in targets)
             + " | best (mean +- 95% CI) | steps | compile s | first step s |",
             "|---|" + "---|" * (len(targets) + 4)]
    for name, s in res["summary"].items():
        lib = res["libraries"][name]
        best = max(s["curve"], key=lambda c: c["mean"]) if s["curve"] else None
        times = " | ".join("not reached" if s["times"][_key(t)] is None
                           else f"{s['times'][_key(t)]:.0f} ({s['times_with_start'][_key(t)]:.0f})"
                           for t in targets)
        lines.append(f"| {name} | {times} | "
                     + (f"{best['mean']:.2f} +- {best['ci95']:.2f} at {best['train_s']:.0f} s"
                        if best else "-")
                     + f" | {lib.get('steps', '-')} | {lib.get('compile_s', 0):.1f} | "
                     f"{lib.get('first_step_s', 0):.1f} |")
    if res.get("ratio"):
        lines += ["", "Peer time / jmeta time: " + ", ".join(
            f"{t:g}%: " + ("-" if res["ratio"][_key(t)] is None else f"{res['ratio'][_key(t)]:.2f}x")
            for t in targets) + "."]
    if res.get("peer_overrides"):
        q = res["peer_protocol"]
        lines += ["", f"The peer trains on its own recipe ({' '.join(res['peer_overrides'])}): "
                  f"{q['train']['ways']}-way {q['train']['shots']}-shot, {q['train']['queries']} "
                  f"queries, meta-batch {q['train']['meta_batch']}, Adam "
                  f"{q['optimizer']['lr']:g} ({q['optimizer']['schedule']})."]
    lines += ["", "| library | mark s | training s | step | accuracy (%) |", "|---|---|---|---|---|"]
    for name, s in res["summary"].items():
        for c in s["curve"]:
            lines.append(f"| {name} | {c['mark_s']:g} | {c['train_s']:.1f} | {c['step']} | "
                         f"{c['mean']:.2f} +- {c['ci95']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    """Accuracy against training seconds, one line with its CI band per library."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, s in res["summary"].items():
        x = [c["train_s"] for c in s["curve"]]
        m = np.array([c["mean"] for c in s["curve"]])
        ci = np.array([c["ci95"] for c in s["curve"]])
        ax.plot(x, m, marker="o", ms=3, label=name)
        ax.fill_between(x, m - ci, m + ci, alpha=0.2)
    for t in res["targets"]:
        ax.axhline(t, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("training seconds")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(res["name"], fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def time_to_accuracy(
    config: str,
    overrides: Sequence[str] = (),
    *,
    targets: Sequence[float],
    budget_s: float,
    peer: str | None = None,
    peer_python: str | None = None,
    peer_device: str = "cpu",
    peer_overrides: Sequence[str] = (),
    schedule: str = "parallel",
    cores: Sequence[int] | None = None,
    marks: Sequence[float] | None = None,
    tasks: int = 600,
    out: str | Path | None = None,
    work: str | Path | None = None,
    name: str | None = None,
    data_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Trains ``config`` (and ``peer`` on the same protocol) for ``budget_s`` training seconds,
    tests the snapshots taken at ``marks`` on ``tasks`` test episodes and returns (and, with
    ``out``, writes as ``tta_<name>.json/.md/.png``; ``name`` defaults to the config's name and
    the peer's) the curves and times to ``targets``.

    ``schedule="parallel"`` runs both at once, jmeta pinned to ``cores[0]`` and the peer to
    ``cores[1]`` (default the first two of this process's cores; torch one thread);
    ``"alternate"`` runs jmeta, then the peer, each on every core. ``peer_python`` is the
    Python that imports torch (and learn2learn), default ``$PEERS_PYTHON`` or
    ``.venv-peers/bin/python``; ``peer_overrides`` change the peer's training recipe only
    (its test episodes stay jmeta's); ``peer_device`` its torch device (``"cuda"`` on a GPU machine,
    with ``schedule="alternate"``: one accelerator, one library at a time). Every option is checked before anything is trained.

    Example (about two minutes on a CPU; the peer needs torch)::

        from jmeta.train import time_to_accuracy
        res = time_to_accuracy("configs/omniglot_protonets.py:5w1s", ["data.ways=20"],
                               targets=(90,), budget_s=60, peer="pytorch", out="/tmp/tta")
        print(res["summary"]["jmeta"]["times"])
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"bench tta: schedule must be one of {SCHEDULES}; got {schedule!r}.")
    if not targets or any(not 0 < t <= 100 for t in targets):
        raise ConfigError(f"bench tta: targets are accuracies in (0, 100]; got {list(targets)}.")
    if not budget_s > 0:
        raise ConfigError(f"bench tta: the budget must be positive; got {budget_s}.")
    if tasks < 2:
        raise ConfigError(f"bench tta: at least 2 test tasks; got {tasks}.")
    marks = sorted(float(m) for m in (marks or default_marks(budget_s)))
    if marks[0] <= 0 or marks[-1] > budget_s:
        raise ConfigError(f"bench tta: marks must lie in (0, budget]; got {marks}.")
    cfg = load_config(config, list(overrides))
    if data_dir:
        cfg = cfg.replace(data=dict(data_dir=str(Path(data_dir).expanduser().absolute())))
    cfg = check_config(cfg)
    proto = protocol(cfg)
    peer_proto = proto
    if peer_overrides:  # the peer on its own recipe (its training), tested on the same episodes
        pcfg = load_config(config, [*overrides, *peer_overrides])
        if data_dir:
            pcfg = pcfg.replace(data=dict(data_dir=cfg.data.data_dir))
        peer_proto = protocol(pcfg)
        if peer_proto["test"] != proto["test"] or peer_proto["algorithm"] != proto["algorithm"]:
            raise ConfigError("bench tta: --peer-overrides may change training only; the test "
                              f"episodes and the learner must stay: {proto['test']} against "
                              f"{peer_proto['test']}.")
    peer_cmd = None
    if peer is not None:
        if peer not in PEERS:
            raise ConfigError(f"bench tta: unknown peer {peer!r}; peers: {sorted(PEERS)}.")
        if proto["algorithm"] not in PEERS[peer]:
            raise ConfigError(f"bench tta: peer {peer!r} runs {PEERS[peer]}, not "
                              f"{proto['algorithm']!r}.")
        python = peer_python or os.environ.get("PEERS_PYTHON") or str(
            PEER_SCRIPT.parents[2] / ".venv-peers" / "bin" / "python")
        if not Path(python).exists() and not any(
                (Path(d) / python).exists() for d in os.environ.get("PATH", "").split(os.pathsep)):
            raise ConfigError(f"bench tta: no Python for the peer at {python!r}: "
                              "bash benchmarks/peers/setup.sh, or --peer-python PATH.")
        if not PEER_SCRIPT.is_file():
            raise ConfigError(f"bench tta: the peer script {PEER_SCRIPT} is missing (run from "
                              "a checkout of the repository).")
        peer_cmd = [python, str(PEER_SCRIPT), "--library", peer]
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if schedule == "parallel":
        cores = list(cores) if cores else available[:2]
        if peer is not None and (len(cores) < 2 or cores[0] == cores[1]):
            raise ConfigError(f"bench tta: --schedule parallel needs two distinct cores; have "
                              f"{cores}. Use --schedule alternate on one core.")
        if available and not set(cores) <= set(available):
            raise ConfigError(f"bench tta: cores {cores} are not all among this process's "
                              f"{available}.")

    name = name or cfg.name + (f"_{peer}" if peer else "")
    work = Path(work) if work else Path(os.environ.get(
        "JMETA_CACHE_DIR", Path.home() / ".cache" / "jmeta")) / "tta" / name
    work.mkdir(parents=True, exist_ok=True)
    for old in ("jmeta.json", "peer.json"):
        (work / old).unlink(missing_ok=True)
    (work / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    log(f"bench tta: exporting the training split and {tasks} test episodes to {work}")
    digest = export(cfg, work, tasks)
    spec = dict(protocol=peer_proto, jmeta_protocol=proto, marks=marks, budget_s=float(budget_s), tasks=int(tasks),
                episodes_sha256=digest)
    (work / "tta.json").write_text(json.dumps(spec, indent=1))

    threads = dict(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TORCH_NUM_THREADS="1")
    jm_env = dict(os.environ)
    if schedule == "parallel" and "xla_cpu_multi_thread_eigen" not in jm_env.get("XLA_FLAGS", ""):
        # One core: XLA's CPU runtime would otherwise size its thread pools from the machine
        # (an XLA_FLAGS that sets the flag itself is left as it is: the A/B of this choice).
        jm_env["XLA_FLAGS"] = (jm_env.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false").strip()
    jm_cmd = [sys.executable, "-m", "jmeta.bench", "_tta_jmeta", str(work)]
    procs = []

    def start(cmd, env, core):
        log(f"bench tta: {' '.join(cmd)}" + (f" (core {core})" if core is not None else ""))
        proc = subprocess.Popen(cmd, env=env, cwd=work)
        if core is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(proc.pid, {core})  # before it imports anything or starts threads
        return proc

    peer_env = dict(os.environ, **(threads if schedule == "parallel" else {}),
                    TTA_WORK=str(work))
    if peer_cmd is not None:
        peer_cmd += ["--work", str(work), "--device", peer_device, "--threads",
                     "1" if schedule == "parallel" else str(len(available) or os.cpu_count())]
    t0 = time.time()
    if schedule == "parallel":
        procs.append(start(jm_cmd, jm_env, cores[0] if cores else None))
        if peer_cmd is not None:
            procs.append(start(peer_cmd, peer_env, cores[1]))
        codes = [p.wait() for p in procs]
    else:
        codes = [start(jm_cmd, jm_env, None).wait()]
        if peer_cmd is not None:
            codes.append(start(peer_cmd, peer_env, None).wait())
    if any(codes):
        raise RuntimeError(f"bench tta: a training process failed (exit codes {codes}); see its "
                           f"output above. The work folder {work} is kept.")
    libraries = {"jmeta": json.loads((work / "jmeta.json").read_text())}
    if peer_cmd is not None:
        got = json.loads((work / "peer.json").read_text())
        libraries[got.get("library", peer)] = got
    result = dict(name=name, config=config, overrides=list(overrides), protocol=proto,
                  peer_protocol=peer_proto if peer else None,
                  peer_overrides=list(peer_overrides),
                  targets=list(targets), budget_s=float(budget_s), marks=marks, tasks=int(tasks),
                  schedule=schedule, cores=list(cores or []), wall_s=time.time() - t0,
                  date=time.strftime("%Y-%m-%dT%H:%M:%S"),
                  host=f"{_cpu_name()}, {os.cpu_count()} cores",
                  environment=dict(environment()), episodes_sha256=digest,
                  libraries=libraries)
    result = summarise(result, targets)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"tta_{name}.json").write_text(json.dumps(result, indent=1))
        (out / f"tta_{name}.md").write_text(tta_markdown(result))
        plot(result, out / f"tta_{name}.png")
        log(f"bench tta: wrote {out / f'tta_{name}'}.json, .md, .png")
    return result
