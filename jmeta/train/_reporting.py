"""Reporting a meta-test: tables, per-episode scores and paired comparisons."""

from __future__ import annotations

import re

import numpy as np

from jmeta.train._eval import mean_ci95


def scores(values: np.ndarray) -> list:
    """Per-task scores for eval.json: 6 significant digits (NaN kept as NaN).

    Example:
      >>> scores(np.array([1.23456789, np.nan]))
      [1.23457, nan]
    """
    return [float(f"{v:.6g}") for v in np.asarray(values, np.float64)]


def compact_lists(text: str) -> str:
    """JSON from ``json.dumps(..., indent=2)`` with every list of numbers on one line.

    Example:
      >>> compact_lists('{"a": [\\n  1,\\n  2\\n]}')
      '{"a": [1, 2]}'
    """

    def one_line(match):
        return "[" + ", ".join(v.strip() for v in match.group(1).split(",")) + "]"

    return re.sub(r"\[\s*((?:-?[\d.eE+-]+|NaN|-?Infinity|null)(?:,\s*(?:-?[\d.eE+-]+|NaN|"
                  r"-?Infinity|null))*)\s*\]", one_line, text)


def paired_difference(a: dict, b: dict, method_a: str, method_b: str, step_a: str,
                      step_b: str) -> dict | None:
    """Mean and 95% CI of the per-episode difference ``a - b`` between two ``eval.json``s
    scored on the same test episodes (equal ``episodes_sha256``), or ``None`` when they were
    not (or one keeps no per-task scores). Pairing removes the episodes' shared difficulty
    from the comparison, so its interval is tighter than the two CIs combined.

    Example:
      >>> a = {"episodes_sha256": "x", "per_task": {"m": {"1": [1.0, 2.0, 4.0]}}}
      >>> b = {"episodes_sha256": "x", "per_task": {"b": {"1": [0.0, 2.0, 3.0]}}}
      >>> r = paired_difference(a, b, "m", "b", "1", "1")
      >>> round(r["mean"], 3), r["n"]
      (0.667, 3)
    """
    if not a.get("episodes_sha256") or a.get("episodes_sha256") != b.get("episodes_sha256"):
        return None
    try:
        x = np.asarray(a["per_task"][method_a][step_a], np.float64)
        y = np.asarray(b["per_task"][method_b][step_b], np.float64)
    except (KeyError, TypeError):
        return None
    if x.shape != y.shape:
        return None
    return mean_ci95(x - y)


def _cell(r: dict) -> str:
    if r.get("nonfinite"):
        return f"diverged on {r['nonfinite']}/{r['n']} tasks"
    return f"{r['mean']:.3f} +- {r['ci95']:.3f}"


def _checkpoint_line(ev: dict) -> str:
    """Which checkpoint was tested: for classification the validation accuracy; for regression
    (scored by minus the query MSE, higher is better) the validation tasks' MSE."""
    if ev.get("ways"):
        return (f"checkpoint: step {ev['checkpoint_step']}, the best on the validation classes "
                f"({ev['val_score']:.2f})")
    return (f"checkpoint: step {ev['checkpoint_step']}, the best on the validation tasks "
            f"(query MSE {-ev['val_score']:.3f})")


def format_table(ev: dict) -> str:
    """A Markdown table of an ``eval.json``: one row per method, one column per step count.

    Example:
      >>> ev = dict(steps=[1], task="sinusoid", k_shot=10, metric="query MSE", num_tasks=600,
      ...           query_points=100, results={"maml": {"1": dict(mean=0.35, ci95=0.02, n=600)}},
      ...           checkpoint="best", checkpoint_step=400, val_score=-0.33)
      >>> print(format_table(ev).splitlines()[-1])
      checkpoint: step 400, the best on the validation tasks (query MSE 0.330)
    """
    steps = ev["steps"]
    if ev.get("ways"):
        head = (
            f"{ev['task']} {ev['ways']}-way {ev['k_shot']}-shot, {ev['split']} classes: "
            f"{ev['metric']} on {ev['num_tasks']} tasks ({ev['query_points']} queries per "
            "class), mean +- 95% CI\n\n"
        )
    else:
        head = (
            f"{ev['task']} K={ev['k_shot']}: {ev['metric']} on {ev['num_tasks']} new tasks "
            f"({ev['query_points']} query points each), mean +- 95% CI\n\n"
        )
    cols = ["method"] + [f"{s} step{'s' if s != 1 else ''}" for s in steps]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for method, res in ev["results"].items():
        cells = [_cell(res[str(s)]) for s in steps]
        lines.append("| " + " | ".join([method] + cells) + " |")
    if ev.get("checkpoint") == "best":
        lines.append("\n" + _checkpoint_line(ev))
    if ev["num_tasks"] < 600:
        lines.append(f"\nnote: {ev['num_tasks']} test tasks; the full protocol uses at least 600.")
    if ev.get("pretrained_lr"):
        lrs = ", ".join(f"{s} steps: {lr:g}" for s, lr in ev["pretrained_lr"].items())
        lines.append(f"\npretrained: SGD fine-tuning, step size tuned on validation tasks ({lrs})")
    return head + "\n".join(lines)
