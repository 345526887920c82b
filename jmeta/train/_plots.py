"""Learning curves of run directories as PNG. One function, :func:`plot_curves`, draws them for
``jmeta plot`` and for the results page (``benchmarks/results_page.py``, docs/results.md).

matplotlib is imported when a plot is drawn (``pip install 'jmeta[plots]'``), and only its Agg
canvas is used: no window, no global backend switched, no pyplot figure left open."""

from __future__ import annotations

import math
import os
from pathlib import Path

from jmeta.train._rundir import RunDir
from jmeta.train._runs import _classification, _method, wall_times

CURVES_FILE = "curves.png"


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ModuleNotFoundError(
            "Plotting needs matplotlib, which is not installed: pip install 'jmeta[plots]'.",
            name="matplotlib") from err
    return Figure, FigureCanvasAgg


def learning_curves(run_dir: str | os.PathLike) -> dict:
    """What :func:`plot_curves` draws of one run, read from ``metrics.jsonl``: ``step``,
    ``time`` (training seconds, summed over resumed segments) and ``loss`` of every logged
    row; ``val_step``, ``val_time`` and ``val`` of every validation, in ``metric`` (accuracy
    in %, or the query MSE); ``classification``.

    Example::

        c = learning_curves("runs/demo")
        c["metric"], c["step"][-1], min(c["val"])
    """
    run = RunDir(run_dir)
    classification = _classification(run.config)
    rows = run.metrics()
    times = wall_times(rows)
    val = [(r["step"], t, r["val_score"]) for r, t in zip(rows, times)
           if r.get("val_score") is not None]
    return {
        "step": [r["step"] for r in rows], "time": times,
        "loss": [r.get("loss", math.nan) for r in rows],
        "val_step": [v[0] for v in val], "val_time": [v[1] for v in val],
        "val": [v[2] if classification else -v[2] for v in val],
        "metric": "accuracy" if classification else "query MSE",
        "classification": classification,
    }


def _time_unit(seconds: float) -> tuple[str, float]:
    if seconds < 300:
        return "s", 1.0
    return ("min", 60.0) if seconds < 3 * 3600 else ("h", 3600.0)


def _log_scale(values: list[float], classification: bool) -> bool:
    """Losses spanning more than a decade and a bit are drawn on a log scale."""
    finite = [v for v in values if math.isfinite(v)]
    return (not classification and bool(finite) and min(finite) > 0
            and max(finite) / min(finite) > 20)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_curves(
    runs: str | os.PathLike | list,
    out: str | os.PathLike | None = None,
    *,
    labels: list[str] | None = None,
    title: str | None = None,
    meta_test: bool = False,
    size: tuple[float, float] | None = None,
    dpi: int = 100,
) -> Path:
    """Writes the learning curves of one or more run directories to a PNG and returns its path.

    Four panels: the meta-training loss (top row: the query loss after adaptation, averaged
    over each logging window) and the validation score (bottom row: accuracy in % for
    classification, query MSE for regression), against the meta-step (left) and against the
    training wall time (right: summed over resumed segments, compiling excluded). Losses that
    span more than a factor 20 are drawn on a log scale. Several runs are overlaid, one colour
    each, labelled by ``labels`` (default: the folders' names, or the paths as given where two
    names are the same). With ``meta_test``, a third column shows each run's ``eval.json``:
    the test metric after each inner-step count, with its 95% CI. Classification runs and
    regression runs cannot share one plot (a :class:`ValueError`).

    ``out`` defaults to ``<run>/curves.png`` for one run and ``curves.png`` for several. The
    image is ``size`` inches (default 5.5 per column by 7) at ``dpi``: 1100 x 700 pixels
    without ``meta_test``. Needs matplotlib (``pip install 'jmeta[plots]'``; a
    :class:`ModuleNotFoundError` that says so otherwise).

    Example::

        from jmeta.train import plot_curves
        plot_curves("runs/demo")                                   # runs/demo/curves.png
        plot_curves(["runs/maml", "runs/metasgd"], "cmp.png", labels=["MAML", "Meta-SGD"])
    """
    dirs = [Path(runs)] if isinstance(runs, (str, os.PathLike)) else [Path(r) for r in runs]
    if not dirs:
        raise ValueError("plot_curves needs at least one run directory.")
    if labels is None:  # the folders' names, or their paths where two names are the same
        unique = len({d.name for d in dirs}) == len(dirs)
        labels = [d.name if unique else str(d) for d in dirs]
    labels = list(labels)
    if len(labels) != len(dirs):
        raise ValueError(f"{len(labels)} labels for {len(dirs)} runs.")
    curves = [learning_curves(d) for d in dirs]  # FileNotFoundError for a folder without a run
    kinds = {c["classification"] for c in curves}
    if len(kinds) > 1:
        names = {True: [], False: []}
        for d, c in zip(dirs, curves):
            names[c["classification"]].append(str(d))
        raise ValueError("Cannot overlay classification runs (accuracy) and regression runs "
                         f"(query MSE) in one plot: {', '.join(names[True])} against "
                         f"{', '.join(names[False])}.")
    Figure, FigureCanvasAgg = _matplotlib()
    out = Path(out) if out is not None else (dirs[0] / CURVES_FILE if len(dirs) == 1
                                             else Path(CURVES_FILE))
    classification = kinds.pop()
    metric = curves[0]["metric"]
    ncols = 3 if meta_test else 2
    fig = Figure(figsize=size or (5.5 * ncols, 7.0), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, ncols, squeeze=False)
    unit, scale = _time_unit(max((c["time"][-1] for c in curves if c["time"]), default=0.0))
    for i, (c, label) in enumerate(zip(curves, labels)):
        color = f"C{i % 10}"
        axes[0][0].plot(c["step"], c["loss"], color=color, label=label)
        axes[0][1].plot([t / scale for t in c["time"]], c["loss"], color=color, label=label)
        axes[1][0].plot(c["val_step"], c["val"], color=color, marker="o", ms=3, label=label)
        axes[1][1].plot([t / scale for t in c["val_time"]], c["val"], color=color, marker="o",
                        ms=3, label=label)
        if meta_test:
            _meta_test(axes[0][2], dirs[i], color, label)
    loss_label = ("meta-training query loss (cross-entropy)" if classification
                  else "meta-training query MSE")
    val_label = "validation accuracy (%)" if classification else "validation query MSE"
    for row, ylabel, key in ((0, loss_label, "loss"), (1, val_label, "val")):
        for col, xlabel in ((0, "meta-step"), (1, f"training wall time ({unit})")):
            ax = axes[row][col]
            ax.set(xlabel=xlabel, ylabel=ylabel)
            ax.grid(alpha=0.3)
            values = [v for c in curves for v in c[key]]
            if not values:
                _empty(ax, "no validation logged" if key == "val" else "no step logged")
            elif _log_scale(values, classification):
                ax.set_yscale("log")
    axes[0][0].set_title("against meta-steps", fontsize=10)
    axes[0][1].set_title("against training wall time", fontsize=10)
    axes[0][0].legend(fontsize=8)
    if meta_test:
        ax = axes[0][2]
        ax.set(xlabel="inner steps at test", ylabel=f"test {metric} (mean, 95% CI)")
        ax.set_title("meta-test", fontsize=10)
        ax.grid(alpha=0.3)
        tested = [line.get_ydata() for line in ax.get_lines()]
        if tested and _log_scale([float(v) for y in tested for v in y], classification):
            ax.set_yscale("log")
        elif not ax.has_data():
            _empty(ax, "not meta-tested")
        axes[1][2].set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def _meta_test(ax, run_dir: Path, color: str, label: str) -> None:
    run = RunDir(run_dir)
    ev = run.evaluation()
    method = _method(ev, run.config) if ev else None
    if method is None:
        return
    result = ev["results"][method]
    ks = sorted(int(k) for k in result)
    ax.errorbar(ks, [result[str(k)]["mean"] for k in ks], [result[str(k)]["ci95"] for k in ks],
                color=color, marker="o", capsize=3, label=label)
