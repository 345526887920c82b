"""The ``jmeta`` command: ``jmeta train CONFIG [key=value ...]``, ``jmeta eval RUN_DIR``,
``jmeta predict RUN_DIR --support DIR --query DIR`` (text runs: ``--support support.csv
--queries queries.csv|queries.txt``), ``jmeta runs [DIR]`` (``jmeta runs compare RUN RUN ...``),
``jmeta plot RUN ...``, ``jmeta data`` and ``jmeta bench [SUITE]``.

``train``, ``eval`` and ``predict`` keep compiled programs in a disk cache
(``$JMETA_COMPILE_CACHE``, default ``~/.cache/jmeta/xla``; ``off`` turns it off), so a resumed
run or a later evaluation of the same config does not compile again."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jmeta", description="Meta-learning in JAX.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="meta-train a config, then meta-test it")
    t.add_argument("config", help="config file (configs/*.py or a run's config.json)")
    t.add_argument("overrides", nargs="*",
                   help="section.key=value config overrides, e.g. learner.inner_lr=0.4")
    t.add_argument("--run-dir", help="run directory (default: runs/<config name>-<time>)")
    t.add_argument("--no-eval", action="store_true", help="skip the meta-test after training")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--data-dir", help="dataset folder (default: $JMETA_DATA_DIR, else ~/.cache/jmeta/data)")
    t.add_argument("--num-processes", type=int, default=1,
                   help="start N processes on this machine (loopback) that train as one run; "
                        "under a cluster launcher set JAX_NUM_PROCESSES, JAX_PROCESS_ID and "
                        "JAX_COORDINATOR_ADDRESS (or use Slurm/Open MPI) instead")
    t.add_argument("--track", default="jsonl",
                   help="trackers, comma-separated: jsonl (the run directory's files, always "
                        "written), tensorboard (<run>/tensorboard), mlflow (default: jsonl)")
    t.add_argument("--track-uri",
                   help="MLflow tracking URI, e.g. http://host:5000 (default: "
                        "$MLFLOW_TRACKING_URI, else sqlite:///<run dir's parent>/mlflow.db)")

    e = sub.add_parser("eval", help="meta-test a run directory: mean and 95%% CI over new tasks")
    e.add_argument("run_dir")
    e.add_argument("--tasks", type=int, help="number of test tasks (default: the config's eval.tasks)")
    e.add_argument("--steps", help="comma-separated inner-step counts, e.g. 1,10")
    e.add_argument("--no-baseline", action="store_true", help="skip the pretrained baseline")
    e.add_argument("--json", action="store_true", help="print eval.json instead of the table")
    e.add_argument("--data-dir", help="dataset folder, if it moved since training")
    e.add_argument("--checkpoint", default="best",
                   help="'best' (best validation score, default), 'final', or a step number")
    e.add_argument("--ways", type=int, help="test with N-way episodes (metric-based learners)")
    e.add_argument("--shots", type=int, help="test with K-shot episodes")
    e.add_argument("--queries", type=int, help="query examples per class in the test episodes")
    e.add_argument("--chunk-size", type=int,
                   help="test tasks adapted together (bounds memory; default: the run's "
                        "eval_chunk_size, 0 = all at once, 5 for text)")

    r = sub.add_parser("predict", help="adapt a trained run to a support set, label queries "
                                       "(images: folders; text runs: CSV / text files)")
    r.add_argument("run_dir")
    r.add_argument("--support", required=True,
                   help="images: folder with one subfolder of images per class (the subfolder "
                        "names are the labels); text: CSV or JSON lines of (text, label) rows")
    r.add_argument("--query", "--queries", dest="query", required=True,
                   help="images: folder (or single image file) to label; text: a CSV with a "
                        "text column, or a .txt file with one text per line")
    r.add_argument("--text-column", default="text", help="text runs: the text column (default: text)")
    r.add_argument("--label-column",
                   help="text runs: the support file's label column (default: the first of "
                        "label, category, intent)")
    r.add_argument("--steps", type=int, help="inner steps (default: the config's test-time steps)")
    r.add_argument("--checkpoint", default="best", help="'best' (default), 'final' or a step")
    r.add_argument("--json", action="store_true", help="JSON lines instead of CSV")

    w = sub.add_parser("rows", help="list the published rows the configs reproduce (make targets)")
    w.add_argument("--configs", default="configs", help="config folder (default: configs)")

    d = sub.add_parser("data", help="download or verify a dataset's official archives")
    d.add_argument("action", choices=("download", "verify"))
    d.add_argument("name", help="omniglot, cifar100 (cifar_fs, fc100), miniimagenet, tieredimagenet")
    d.add_argument("--data-dir", help="dataset folder (default: $JMETA_DATA_DIR, else ~/.cache/jmeta/data)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")

    b = sub.add_parser("bench", add_help=False,
                       help="compile time, meta-steps/s, FLOPs and memory of benchmark workloads "
                            "(JSON + Markdown table); jmeta bench --help for its options")
    b.add_argument("args", nargs=argparse.REMAINDER)

    s = sub.add_parser("runs", help="a table of the runs under DIR (default: runs); "
                                    "'jmeta runs compare RUN RUN ...' compares runs",
                       usage="jmeta runs [DIR] | jmeta runs compare RUN RUN [RUN ...]")
    s.add_argument("args", nargs="*", metavar="DIR", help="folder of run directories (searched "
                   "recursively), or 'compare' followed by two or more run directories")

    g = sub.add_parser("plot", help="learning curves of runs as PNG (several runs overlaid)")
    g.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    g.add_argument("-o", "--output", help="PNG file (default: RUN/curves.png for one run, "
                                          "curves.png for several)")
    g.add_argument("--meta-test", action="store_true",
                   help="add a panel of the meta-test (eval.json) against inner steps")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own parser (jmeta.bench.main)
        from jmeta.bench import main as bench_main

        return bench_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "train" and args.num_processes > 1 and "JAX_PROCESS_ID" not in os.environ:
        return _launch(argv, args)
    # Import after parsing, so `jmeta --help` and usage errors answer without loading JAX.
    from jmeta.distributed import initialize

    if args.command in ("train", "eval", "predict"):
        from jmeta._compile_cache import enable_compile_cache

        enable_compile_cache()  # $JMETA_COMPILE_CACHE (default ~/.cache/jmeta/xla; 'off')

    if args.command == "train":
        try:
            initialize()  # multi-process runs: JAX_* variables or a cluster launcher; else nothing
        except ValueError as err:
            print(f"jmeta: error: {err}", file=sys.stderr)
            return 2
    from jmeta.train import ConfigError, evaluate, format_table, load_config, train
    from jmeta.train import eval_metrics, open_tracking

    if args.command == "data":
        return _data(args)
    if args.command == "predict":
        return _predict(args)
    if args.command == "rows":
        return _rows(args)
    if args.command == "runs":
        return _runs(args)
    if args.command == "plot":
        return _plot(args)
    try:
        if args.command == "train":
            cfg = load_config(args.config, list(args.overrides))
            if args.data_dir and "data_dir" in cfg.data:  # a task family reads no files
                cfg = cfg.replace(data=dict(data_dir=str(Path(args.data_dir).expanduser()
                                                         .absolute())))
            run_dir = Path(args.run_dir or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
            tracking = open_tracking(args.track, uri=args.track_uri)  # a missing package: now
            import jax

            if jax.process_index() == 0:
                print(f"jmeta: training {cfg.learner.name} on {cfg.data.name} into {run_dir}",
                      file=sys.stderr)
            with tracking:  # closed on every way out; "FAILED" on an exception
                res = train(cfg, run_dir, progress=not args.no_progress, tracker=tracking)
                if res.get("preempted"):
                    tracking.close("KILLED")
                if "process_index" in res or res.get("preempted"):
                    return 0
                if res.get("already_complete"):
                    print(f"{run_dir} already holds the finished run ({res['steps']} steps); "
                          "nothing was changed. `jmeta eval` meta-tests it again.", file=sys.stderr)
                    return 0
                if res["steps"] == 0:
                    print("train.meta_steps=0: no meta-training; the initial meta-parameters are "
                          "evaluated")
                else:
                    print(
                        f"trained {res['steps']} steps in {res['train_s']:.1f} s "
                        f"({res['steps_per_sec']:.3g} steps/s, compile {res['compile_s']:.1f} s); "
                        f"final query loss {res['final_loss']:.4f}"
                    )
                if jax.process_count() > 1:
                    tracking.log_artifacts(run_dir)
                    return 0  # the launcher (or the user) meta-tests the finished run
                if not args.no_eval:
                    ev = evaluate(run_dir)
                    tracking.log_metrics(res["steps"], eval_metrics(ev))
                    print(format_table(ev))
                tracking.log_artifacts(run_dir)
        else:
            steps = tuple(int(s) for s in args.steps.split(",")) if args.steps else None
            checkpoint = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
            if checkpoint not in ("best", "final") and not isinstance(checkpoint, int):
                raise ConfigError(f"--checkpoint must be best, final or a step; got {args.checkpoint!r}.")
            ev = evaluate(args.run_dir, num_tasks=args.tasks, steps=steps, baseline=not args.no_baseline,
                          data_dir=args.data_dir, checkpoint=checkpoint, ways=args.ways,
                          k_shot=args.shots, queries=args.queries, chunk_size=args.chunk_size)
            print(json.dumps(ev, indent=2) if args.json else format_table(ev))
    except (ConfigError, FileNotFoundError) as err:
        print(f"jmeta: error: {err}", file=sys.stderr)
        return 2
    return 0


def _rows(args) -> int:
    """``jmeta rows``: every published row of the configs, with its make target and paper number."""
    from jmeta.train._config import config_rows

    rows = config_rows(args.configs)
    if not rows:
        print(f"jmeta: error: no config in {args.configs} defines ROWS.", file=sys.stderr)
        return 2
    print(f"{'make target':<46} {'paper':<16} source")
    for row in rows:
        paper = row["paper"]
        cell = "-" if not paper else (f"{paper[0]}" + (f" +- {paper[1]}" if len(paper) > 1 else ""))
        print(f"{'reproduce-' + row['config'] + '-' + row['row']:<46} {cell:<16} {row['source']}")
    return 0


def _runs(args) -> int:
    """``jmeta runs [DIR]``: one line per run under DIR; ``jmeta runs compare RUN RUN ...``."""
    from jmeta.train import compare_runs, format_comparison, format_runs, list_runs

    try:
        if args.args[:1] == ["compare"]:
            if len(args.args) < 3:
                raise ValueError("jmeta runs compare needs two or more run directories.")
            print(format_comparison(compare_runs(args.args[1:])))
            return 0
        if len(args.args) > 1:
            raise ValueError("jmeta runs takes one folder (to compare runs: jmeta runs compare "
                             "RUN RUN ...).")
        root = args.args[0] if args.args else "runs"
        runs = list_runs(root)
    except (FileNotFoundError, ValueError) as err:
        print(f"jmeta: error: {err}", file=sys.stderr)
        return 2
    if not runs:
        print(f"jmeta: no run directories under {root} (a run directory holds config.json "
              "and metrics.jsonl; jmeta train --run-dir makes one).")
        return 0
    print(format_runs(runs))
    return 0


def _plot(args) -> int:
    """``jmeta plot RUN ... [-o FILE]``: learning curves as PNG."""
    from jmeta.train import plot_curves

    try:
        out = plot_curves(args.runs, args.output, meta_test=args.meta_test)
    except (FileNotFoundError, ValueError, ModuleNotFoundError) as err:
        print(f"jmeta: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def _image_files(folder: Path) -> list[Path]:
    from jmeta.data import image_extensions

    exts = image_extensions()
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts)


def _predict(args) -> int:
    """``jmeta predict``: CSV (file, label, probability of each class) on stdout."""
    from jmeta.train import RunDir, model_task

    try:
        task = model_task(RunDir(args.run_dir).config)
    except (ValueError, FileNotFoundError) as err:
        print(f"jmeta: error: {err}", file=sys.stderr)
        return 2
    if not task.classification:
        print(f"jmeta: error: {args.run_dir} is a {task.cfg.data.name} run; predict labels "
              "images or texts of a classification run.", file=sys.stderr)
        return 2
    if task.data.encode is not None:
        return _predict_text(args)
    support, query = Path(args.support), Path(args.query)
    problems = []
    if not support.is_dir():
        problems.append(f"--support {support} is not a folder (expected <support>/<label>/<images>)")
    if not query.exists():
        problems.append(f"--query {query} does not exist")
    if problems:
        print("jmeta: error: " + "; ".join(problems) + ".", file=sys.stderr)
        return 2
    files, labels, empty = [], [], []
    for c in sorted(p for p in support.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = _image_files(c)
        files += found
        labels += [c.name] * len(found)
        empty += [] if found else [str(c)]
    if empty and files:
        print(f"jmeta: error: the support class folder {empty[0]} holds no images (extensions "
              "PIL reads: .png, .jpg, ...); add some or remove the folder.", file=sys.stderr)
        return 2
    queries = [query] if query.is_file() else _image_files(query)
    if not files or not queries:
        what = "support class subfolders with images" if not files else "query images"
        print(f"jmeta: error: found no {what} (extensions PIL reads: .png, .jpg, ...).", file=sys.stderr)
        return 2
    import jmeta

    checkpoint = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
    try:
        learner = jmeta.load(args.run_dir, checkpoint=checkpoint)
        query_x = learner.preprocess(queries)  # every file read before anything compiles
        adapted = learner.adapt(files, labels, inner_steps=args.steps)
        probs = adapted.predict_proba(query_x)
    except (ValueError, FileNotFoundError) as err:
        print(f"jmeta: error: {err}", file=sys.stderr)
        return 2
    names = adapted.labels
    if args.json:
        for f, p in zip(queries, probs):
            row = {"file": str(f), "label": names[int(p.argmax())],
                   "probabilities": {str(n): round(float(v), 6) for n, v in zip(names, p)}}
            print(json.dumps(row))
        return 0
    import csv

    out = csv.writer(sys.stdout)
    out.writerow(["file", "label"] + [f"p({n})" for n in names])
    for f, p in zip(queries, probs):
        out.writerow([str(f), names[int(p.argmax())]] + [f"{float(v):.6f}" for v in p])
    return 0


def _read_queries(path: Path, text_column: str) -> tuple[list[str], list[str] | None]:
    """Query texts (and labels, when the file has a label column) of a .txt file (one text per
    non-blank line) or a CSV / JSON-lines file with a ``text_column``."""
    from jmeta.data import LABEL_FIELDS, read_jsonl

    if path.suffix.lower() == ".txt":
        texts = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
        return [t for t in texts if t], None
    with open(path, newline="", encoding="utf-8-sig") as f:
        if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            rows, columns = read_jsonl(f, path)
        else:
            import csv

            reader = csv.DictReader(f)
            columns, rows = list(reader.fieldnames or []), list(reader)
    if text_column not in columns:
        raise ValueError(f"{path}: no text column {text_column!r}; columns found: {columns} "
                         "(pass --text-column, or give a .txt file with one text per line).")
    label = next((c for c in LABEL_FIELDS if c in columns), None)
    texts = [str(r.get(text_column) or "").strip() for r in rows]
    empty = [i + 2 for i, t in enumerate(texts) if not t]
    if empty:
        raise ValueError(f"{path}: row {empty[0]} has an empty text.")
    return texts, ([str(r.get(label, "")) for r in rows] if label else None)


def _predict_text(args) -> int:
    """``jmeta predict`` for a text run: support CSV of (text, label), queries CSV or .txt."""
    import csv

    import numpy as np

    import jmeta
    from jmeta.data import load_text_file

    support, query = Path(args.support), Path(args.query)
    checkpoint = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
    try:
        for flag, path in (("--support", support), ("--queries", query)):
            if not path.is_file():
                raise FileNotFoundError(f"{flag} {path} is not a file (text runs take a CSV or "
                                        "JSON-lines file; queries may be a .txt file).")
        ds = load_text_file(support, text_field=args.text_column, label_field=args.label_column)
        texts, labels = [], []
        for c, name in enumerate(ds.class_names):
            start, count = int(ds.class_start[c]), int(ds.class_count[c])
            texts += [str(t) for t in ds.data[start:start + count]]
            labels += [name] * count
        blank = [labels[i] for i, t in enumerate(texts) if not t.strip()]
        if blank:
            raise ValueError(f"{support}: a row of class {blank[0]!r} has an empty text.")
        queries, truth = _read_queries(query, args.text_column)
        if not queries:
            raise ValueError(f"{query} holds no query text.")
        learner = jmeta.load(args.run_dir, checkpoint=checkpoint)
        adapted = learner.adapt(texts, labels, inner_steps=args.steps)
        probs = adapted.predict_proba(queries)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        print(f"jmeta: error: {err}", file=sys.stderr)
        return 2
    names = adapted.labels
    predicted = [names[int(i)] for i in np.argmax(probs, axis=-1)]
    if args.json:
        for t, label, p in zip(queries, predicted, probs):
            print(json.dumps({"text": t, "label": label,
                              "probabilities": {str(n): round(float(v), 6) for n, v in zip(names, p)}}))
    else:
        out = csv.writer(sys.stdout)
        out.writerow(["text", "label"] + [f"p({n})" for n in names])
        for t, label, p in zip(queries, predicted, probs):
            out.writerow([t, label] + [f"{float(v):.6f}" for v in p])
    if truth is not None:
        known = [(a, b) for a, b in zip(predicted, truth) if b in set(names)]
        if known:
            acc = 100.0 * sum(a == b for a, b in known) / len(known)
            print(f"jmeta: accuracy {acc:.1f}% on the {len(known)} queries whose label is a "
                  "support class", file=sys.stderr)
    return 0


def _launch(argv: list[str], args) -> int:
    """Runs ``jmeta train`` as N processes over loopback, then meta-tests the run (process 0's)."""
    import signal
    import socket
    import subprocess

    n = args.num_processes
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    child_argv = [a for a in argv if not a.startswith("--num-processes")]
    if "--num-processes" in argv:
        i = argv.index("--num-processes")
        child_argv = argv[:i] + argv[i + 2:]
    if "--run-dir" not in child_argv:
        child_argv += ["--run-dir", f"runs/{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"]
    run_dir = child_argv[child_argv.index("--run-dir") + 1]
    procs = []
    for pid in range(n):
        env = dict(os.environ, JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(pid),
                   JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}")
        procs.append(subprocess.Popen([sys.executable, "-m", "jmeta.cli", *child_argv, "--no-eval"], env=env))
    old = signal.signal(signal.SIGTERM, lambda *_: [p.send_signal(signal.SIGTERM) for p in procs])
    try:
        # A process that fails leaves the others waiting in a collective: stop them all.
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                break
            time.sleep(0.2)
        codes = [p.wait() for p in procs]
    finally:
        signal.signal(signal.SIGTERM, old)
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(codes):
        return next(c for c in codes if c)
    if args.no_eval:
        return 0
    return main(["eval", run_dir] + (["--data-dir", args.data_dir] if args.data_dir else []))


def _data(args) -> int:
    from jmeta.data import DownloadError, download, verify

    try:
        if args.action == "download":
            path = download(args.name, args.data_dir, progress=not args.no_progress)
            print(f"{args.name}: ready in {path}")
        for name, status in verify(args.name, args.data_dir).items():
            print(f"{name}: {status}")
    except (DownloadError, ValueError, FileNotFoundError) as err:
        print(f"jmeta: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
