"""Builds docs/results.md from run directories (config.json, results.json, eval.json, metrics).

    python benchmarks/results_page.py runs/reproduce --records benchmarks/results \
        --out docs/results.md
    python benchmarks/results_page.py --record runs/reproduce/omniglot_maml-5w1s   # keep a record

Every number on the page is read from the run directories (or their records: a run directory
without its checkpoints, under benchmarks/results/<hardware>/reproduce/), through
:class:`jmeta.train.RunDir` (whose config reads the nested layout and the flat ``config.json``
of earlier runs alike); nothing is typed by hand except the papers' reference numbers, which
come from the configs (sinusoid: below).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jmeta.train import Config, RunDir, paired_difference, plot_curves  # noqa: E402

CLASSIFICATION = ("omniglot", "miniimagenet", "cifar_fs", "fc100", "tieredimagenet")

# Query MSE after one inner step, mean +- 95% CI: Li et al. 2017 ("Meta-SGD"), Table 1, which
# also lists MAML's numbers on the same protocol.
PAPER = {
    ("maml", 5): (1.13, 0.18), ("maml", 10): (0.77, 0.11), ("maml", 20): (0.48, 0.08),
    ("metasgd", 5): (0.90, 0.16), ("metasgd", 10): (0.53, 0.09), ("metasgd", 20): (0.31, 0.05),
}
SOURCE = "Li et al. 2017, Meta-SGD, Table 1"


def _cell(r: dict) -> str:
    if r.get("nonfinite"):
        return f"diverged on {r['nonfinite']}/{r['n']}"
    return f"{r['mean']:.3f} +- {r['ci95']:.3f}"


def _read_run(d: Path) -> dict | None:
    """A finished run (config, results, last meta-test, every meta-test, metrics), or ``None``."""
    run = RunDir(d)
    if not run.exists():
        return None
    res, ev = run.results(), run.evaluation()
    if res is None or ev is None:
        return None
    evals = [json.loads(f.read_text()) for f in sorted((d / "evals").glob("*.json"))] or [ev]
    return {"dir": d, "name": d.name, "config": run.config, "results": res, "eval": ev,
            "evals": evals, "metrics": run.metrics()}


def load_all(roots: list[Path]) -> list[dict]:
    """Finished runs under each root (a folder of run directories); a later root's run of the
    same name replaces an earlier one (fresh runs over records)."""
    found = {}
    for root in roots:
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            run = _read_run(d) if d.is_dir() else None
            if run is not None:
                found[d.name] = run
    return list(found.values())


def load_runs(root: Path) -> list[dict]:
    runs = [r for r in load_all([root]) if r["config"].data.name == "sinusoid"]
    runs.sort(key=lambda r: (r["config"].learner.name, r["config"].data.shots))
    return runs


def record(run_dir: Path, records: Path) -> Path:
    """Copies a finished run directory, without its checkpoints, under
    ``records/<hardware>/reproduce``."""
    run = _read_run(run_dir)
    if run is None:
        raise SystemExit(f"{run_dir} is not a finished run (config.json, results.json, "
                         "eval.json).")
    env = run["results"]["environment"]
    hardware = (f"cpu-{env['cpu_count']}core" if env["backend"] == "cpu"
                else env["device"].lower().replace(" ", "-"))
    out = records / hardware / "reproduce" / run_dir.name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("config.json", "results.json", "eval.json", "metrics.jsonl"):
        shutil.copy(run_dir / name, out / name)
    if (run_dir / "evals").is_dir():
        shutil.copytree(run_dir / "evals", out / "evals")
    return out


def _plot(runs: list[dict], path: Path, **kwargs) -> bool:
    """Learning curves drawn by :func:`jmeta.train.plot_curves` (the same as ``jmeta plot``);
    without matplotlib the page is written without them, saying so."""
    try:
        plot_curves([r["dir"] for r in runs], path, **kwargs)
    except ModuleNotFoundError as err:
        print(f"results page: no learning curves: {err}", file=sys.stderr)
        return False
    return True


def plot(runs: list[dict], path: Path) -> bool:
    """The sinusoid runs overlaid, with their meta-test against inner steps."""
    return _plot(runs, path, meta_test=True,
                 labels=[f"{r['config'].learner.name} K={r['config'].data.shots}" for r in runs])


def sinusoid_section(runs: list[dict], out: Path) -> list[str]:
    if not runs:
        return []
    env = runs[0]["results"]["environment"]
    lines = [
        "## Sinusoid regression (MAML, Meta-SGD)",
        "",
        "Runs of `make reproduce-maml-sinusoid` and `make reproduce-metasgd-sinusoid`.",
        "",
        "Protocol: amplitude U[0.1, 5], phase U[0, pi], inputs U[-5, 5]; K support and K query",
        "points per training task; MLP 1-40-40-1 (ReLU); one inner step (SGD at 0.01 for MAML,",
        "learned per-coordinate rates initialised in U[0.005, 0.1] for Meta-SGD), second order;",
        "meta-batch 25; Adam 1e-3; 70,000 meta-steps. Meta-test: 1000 new tasks (a key stream",
        "disjoint from training), K support points and 100 query points each; query MSE,",
        "mean +- 95% CI (normal approximation). No BatchNorm in this model.",
        "",
        f"Paper numbers: {SOURCE}. Pretrained: one network trained on all tasks jointly for the",
        "same number of steps, fine-tuned with SGD at a step size chosen on 200 validation tasks.",
        "",
        "| method | K | paper, 1 step | ours, 1 step | ours, 10 steps | pretrained, 1 step |"
        " pretrained, 10 steps | meta-steps | train wall time | meta-steps/s | compile | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        cfg, res, ev = r["config"], r["results"], r["eval"]
        alg, k = cfg.learner.name, cfg.data.shots
        ours = ev["results"][alg]
        pre = ev["results"].get("pretrained", {})
        paper = PAPER.get((alg, k))
        lines.append(
            f"| {alg} | {k} | {f'{paper[0]:.2f} +- {paper[1]:.2f}' if paper else '-'} | "
            f"{_cell(ours['1'])} | {_cell(ours['10'])} | "
            f"{_cell(pre['1']) if pre else '-'} | {_cell(pre['10']) if pre else '-'} | "
            f"{res['steps']:,} | {res['train_s']:.0f} s | {res['steps_per_sec']:.0f} | "
            f"{res['compile_s']:.1f} s | {res['environment']['commit']} |"
        )
    lines += [
        "",
        f"Hardware: {env['cpu_count']} CPU cores ({env['cpu']}), backend {env['backend']}, "
        f"jax {env['jax']}, Python {env['python']}. Wall time is meta-training only; the",
        "pretrained baseline and the meta-test add about 15-30 s per run.",
        "",
        "Meta-SGD's rates are learned for exactly one inner step (some become large or negative);",
        "iterated ten times they diverge on a share of the tasks, which the table reports instead",
        "of averaging it away.",
    ]
    img = out.parent / "img" / "sinusoid.png"
    if plot(runs, img):
        lines += ["", f"![sinusoid learning curves](img/{img.name})"]
    return lines


def _paper_row(cfg: Config, ways: int, shots: int):
    """``(paper, source)`` of the config's published row for this test setting, read from the
    config file's ``ROWS`` (``configs/<name>.py``), or the run's recorded ``paper.result``."""
    module = _config_module(_config_base(cfg))
    if module is not None:
        row = getattr(module, "ROWS", {}).get(f"{ways}w{shots}s")
        if row is not None:
            paper = tuple(row.get("paper", ()))
            return paper, getattr(module, "PAPER", "") if paper else ""
    if cfg.paper.result and (cfg.eval.ways or cfg.data.ways) == ways:
        return tuple(cfg.paper.result), cfg.paper.source
    return (), ""


def _paper_cell(paper) -> str:
    if not paper:
        return "-"
    return f"{paper[0]:.2f}" + (f" +- {paper[1]:.2f}" if len(paper) > 1 else "")


def _backbone(cfg: Config) -> str:
    model = cfg.model
    if model.name == "conv4":
        kind = "strided" if model.get("strided") else "max-pool"
        net = f"Conv-4 ({model.filters}, {kind})"
    elif model.name == "resnet12":
        net = "ResNet-12"
    else:
        net = "MLP " + "-".join(str(h) for h in model.hidden)
    bn = model.get("bn_mode", "transductive") if model.name != "mlp" else "no BN"
    return f"{net}, {bn}"


def _train_seconds(run: dict) -> float:
    """Training wall time over every segment of a resumed run: ``time`` in metrics.jsonl restarts
    at each resume, so the segments' last values add up (the same as results.json's
    ``train_s`` for a run that never stopped)."""
    total, last = 0.0, 0.0
    for row in run["metrics"]:
        if row["time"] < last:
            total += last
        last = row["time"]
    return max(total + last, run["results"].get("train_s", 0.0))


def _hours(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def plot_classification(run: dict, path: Path) -> bool:
    return _plot([run], path, labels=[run["name"]], title=run["name"])


def classification_section(runs: list[dict], out: Path) -> list[str]:
    if not runs:
        return []
    lines = [
        "## Few-shot classification",
        "",
        "Each row: one evaluation of one run (`jmeta eval`, written to `evals/<N>w<K>s.json`).",
        ("Meta-test: tasks drawn from the test classes only, the checkpoint with the best "
         "validation"),
        ("accuracy, mean +- 95% CI (normal approximation) over the test tasks. \"meta-steps\" "
         "is the"),
        "training budget actually run, against the config's full schedule; a shortened budget is",
        "stated, never hidden. The configs' docstrings give each protocol in full.",
        "",
        "| dataset | test N-way K-shot | algorithm | backbone, BatchNorm | paper | ours |"
        " test tasks | test steps | meta-steps (full) | train wall time | hardware | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    full = {}
    for run in sorted(runs, key=lambda r: (r["config"].data.name, r["config"].learner.name,
                                           r["name"])):
        cfg, res = run["config"], run["results"]
        base = _config_base(cfg)
        row = cfg.name.rsplit("-", 1)[-1]
        full_steps = full.setdefault((base, row), _full_steps(base, row))
        for ev in sorted(run["evals"], key=lambda e: (e["ways"], e["k_shot"])):
            alg = cfg.learner.name
            result = ev["results"][alg]
            step = str(max(int(k) for k in result))
            paper, source = _paper_row(cfg, ev["ways"], ev["k_shot"])
            env = res["environment"]
            hardware = (f"{env['cpu_count']}-core CPU" if env["backend"] == "cpu"
                        else env["device"])
            lines.append(
                f"| {cfg.data.name} | {ev['ways']}-way {ev['k_shot']}-shot | {alg} | "
                f"{_backbone(cfg)} | {_paper_cell(paper)}{f' ({source})' if source else ''} | "
                f"**{result[step]['mean']:.2f} +- {result[step]['ci95']:.2f}** | "
                f"{ev['num_tasks']} | {step} | {res['steps']:,} ({full_steps or '-'}) | "
                f"{_hours(_train_seconds(run))} | {hardware} | {env['commit']} |"
            )
    lines.append("")
    for run in runs:
        img = out.parent / "img" / f"{run['name']}.png"
        if plot_classification(run, img):
            lines.append(f"![{run['name']}](img/{img.name})")
    return lines


# The BANKING77 methods (configs/banking77_<method>.py), baselines first: (label, what adapts).
TEXT_METHODS = {
    "frozen": ("frozen encoder, nearest prototype", "nothing (baseline)"),
    "finetune": ("fine-tuning from pretrained",
                 "LoRA + head per task, no meta-training (baseline)"),
    "protonets": ("ProtoNets", "meta-learned LoRA, prototypes"),
    "maml": ("MAML (second order)", "LoRA + head, meta-learned init"),
    "fomaml": ("first-order MAML", "LoRA + head, meta-learned init"),
    "reptile": ("Reptile", "LoRA + head, meta-learned init"),
    "protomaml": ("Proto-MAML", "LoRA (meta-learned init) + head from the prototypes"),
}
BASELINES = ("frozen", "finetune")


def _text_method(cfg: Config) -> str:
    base = _config_base(cfg) or ""
    return base.split("_", 1)[1] if base.startswith("banking77_") else cfg.learner.name


def _reported_step(cfg: Config, result: dict) -> str:
    """The inner-step count a run is scored at: the one it was trained (or, for fine-tuning,
    tuned) with when it was evaluated there, else the largest evaluated."""
    step = str(cfg.learner.get("inner_steps"))
    return step if step in result else str(max(int(k) for k in result))


def _protocol_size(row: tuple) -> tuple:
    """How much of the protocol a text row's run covers: (test episodes, meta-steps)."""
    run, ev = row[0], row[1]
    return ev["num_tasks"], run["results"].get("steps", 0)


def _margin(a: tuple, b: tuple) -> str:
    """``a`` against ``b``, each ``(run, eval, step, result)`` of one text row: paired over the
    test episodes when both evaluations kept per-episode scores of the same episodes, else the
    difference of the means with the two CIs combined in quadrature (conservative)."""
    (run_a, ev_a, step_a, r_a), (run_b, ev_b, step_b, r_b) = a, b
    paired = paired_difference(ev_a, ev_b, run_a["config"].learner.name,
                               run_b["config"].learner.name, step_a, step_b)
    if paired is not None:
        diff, ci, how = paired["mean"], paired["ci95"], "paired"
    else:
        diff, how = r_a["mean"] - r_b["mean"], ""
        ci = (r_a["ci95"] ** 2 + r_b["ci95"] ** 2) ** 0.5
    verdict = ("outside CI" if abs(diff) > ci else "within CI") + (f", {how}" if how else "")
    return f"{diff:+.2f} +- {ci:.2f} ({verdict})"


def text_section(runs: list[dict]) -> list[str]:
    """BANKING77 intent classification on a pretrained encoder: every method of
    configs/banking77_*.py, and each one's margin over the better baseline of its row."""
    if not runs:
        return []
    rows = {}
    for run in runs:
        cfg = run["config"]
        for ev in run["evals"]:
            result = ev["results"][cfg.learner.name]
            step = _reported_step(cfg, result)
            key, row = (ev["ways"], ev["k_shot"], _text_method(cfg)), (run, ev, step, result[step])
            # Of two runs of one row, the fuller protocol (more test episodes, then more
            # meta-steps) is shown: a shrunk `RUNLOCAL=1` check never hides a full record.
            if key not in rows or _protocol_size(row) >= _protocol_size(rows[key]):
                rows[key] = row
    order = list(TEXT_METHODS)
    lines = [
        "## Few-shot text classification (BANKING77, pretrained encoder + LoRA)",
        "",
        "Runs of `make reproduce-banking77` (one row:",
        "`make reproduce-banking77_<method>-5w1s` or `-5w5s`).",
        "",
        "Protocol: BANKING77's train and test files pooled per intent; a fixed 50 / 10 / 17 split",
        "of the 77 intents (`jmeta/data/splits/banking77/`); all-MiniLM-L6-v2 frozen, texts cut",
        "at 32 tokens, mean pooling; LoRA rank 8 (alpha 16) on query and value of all six layers,",
        "B = 0 at the start; no augmentation; no BatchNorm in this model. Meta-test: tasks drawn",
        "from the 17 test intents only, 15 queries per class, the checkpoint with the best",
        "validation accuracy (10 validation intents), mean +- 95% CI (normal approximation).",
        "\"vs best baseline\" is the difference to the better of the two baselines of the same row",
        "with its 95% CI: \"paired\" when both were scored on the same test episodes and kept",
        "each episode's score (the CI of the per-episode differences), otherwise the two CIs",
        "combined in quadrature (wider). Each config's docstring gives its training settings in",
        "full.",
        "",
        "| test N-way K-shot | method | what adapts | ours | vs best baseline | test tasks |"
        " test steps | meta-steps (full) | train wall time | s / meta-step | hardware | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ways, shots in sorted({(w, k) for w, k, _ in rows}):
        base = [rows[(ways, shots, m)] for m in BASELINES if (ways, shots, m) in rows]
        best = max(base, key=lambda row: row[3]["mean"]) if base else None
        for method in sorted((m for w, k, m in rows if (w, k) == (ways, shots)),
                             key=lambda m: order.index(m) if m in order else len(order)):
            run, ev, step, r = rows[(ways, shots, method)]
            cfg, res = run["config"], run["results"]
            label, adapts = TEXT_METHODS.get(method, (method, "-"))
            env = res["environment"]
            hardware = (f"{env['cpu_count']}-core CPU" if env["backend"] == "cpu"
                        else env["device"])
            vs = "-" if method in BASELINES or best is None else _margin((run, ev, step, r), best)
            per_step = f"{1 / res['steps_per_sec']:.2f}" if res.get("steps_per_sec") else "-"
            full = _full_steps(_config_base(cfg), cfg.name.rsplit('-', 1)[-1])
            lines.append(
                f"| {ways}-way {shots}-shot | {label} | {adapts} | "
                f"**{r['mean']:.2f} +- {r['ci95']:.2f}** | {vs} | {ev['num_tasks']} | {step} | "
                f"{res['steps']:,} ({full or '-'}) | {_hours(_train_seconds(run))} | {per_step} | "
                f"{hardware} | {env['commit']} |"
            )
    return lines


INNER_RULES = {
    "sgd": "SGD (MAML)",
    "metasgd": "Meta-SGD (per-coordinate rates)",
    "lslr": "per-step per-layer rates (LSLR)",
    "meta_lstm": "LSTM meta-learner (Ravi & Larochelle)",
    "lstm_optimizer": "learned LSTM optimizer (Andrychowicz et al.)",
}


def _inner_rule(cfg: Config) -> str:
    """The rule a run of the comparison stands for, from its name: ``make compare-inner-rules``
    names it ``omniglot_inner_rules_<rule>-<row>``, the config ``omniglot_inner_rules-<row>-<rule>``
    (its row token chooses the rule; SGD without one)."""
    name = cfg.name.removesuffix("-runlocal")
    if name.startswith("omniglot_inner_rules_"):
        return name.removeprefix("omniglot_inner_rules_").split("-")[0]
    parts = name.split("-")
    return parts[2] if name.startswith("omniglot_inner_rules-") and len(parts) > 2 else "sgd"


def inner_rules_section(runs: list[dict]) -> list[str]:
    """MAML's inner rules compared on Omniglot (configs/omniglot_inner_rules.py)."""
    if not runs:
        return []
    lines = [
        "## Inner update rules of MAML (Omniglot)",
        "",
        "Runs of `make compare-inner-rules` (configs/omniglot_inner_rules.py): the same MAML run",
        "with only the inner rule changed. Protocol: Vinyals split, 28x28, classes rotated by",
        "quarter turns, strided Conv-4 (64 filters, transductive BatchNorm), 5 inner steps in",
        "training and at test; test tasks from the test classes only, the checkpoint with the best",
        "validation accuracy, mean +- 95% CI. \"0 steps\" is the meta-learned initialisation",
        "before adaptation. \"vs SGD\" is the difference to SGD's row with its 95% CI, paired over",
        "the test episodes where both runs kept per-episode scores of the same episodes. \"train",
        "wall time\" is the elapsed time, including any time the run waited on other jobs of the",
        "machine; \"s / meta-step\" is the median over its logging windows.",
        "",
        "| test N-way K-shot | inner rule | ours, 5 steps | 0 steps | vs SGD | test tasks |"
        " meta-steps (full) | train wall time | s / meta-step | hardware | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = list(INNER_RULES)
    entries = []
    for run in runs:
        cfg = run["config"]
        rule = _inner_rule(cfg)
        for ev in run["evals"]:
            entries.append((ev["ways"], ev["k_shot"], order.index(rule) if rule in order else 99,
                            rule, run, ev))
    def scored(run, ev):
        result = ev["results"][run["config"].learner.name]
        step = str(max(int(k) for k in result))
        return run, ev, step, result[step]

    sgd = {(ways, shots): scored(run, ev) for ways, shots, _, rule, run, ev in entries
           if rule == "sgd"}
    for ways, shots, _, rule, run, ev in sorted(entries, key=lambda e: e[:3]):
        cfg, res = run["config"], run["results"]
        row = scored(run, ev)
        result, step = ev["results"][cfg.learner.name], row[2]
        before = _cell_pct(result["0"]) if "0" in result and step != "0" else "-"
        base = sgd.get((ways, shots))
        vs = "-" if rule == "sgd" or base is None else _margin(row, base)
        env = res["environment"]
        hardware = (f"{env['cpu_count']}-core CPU" if env["backend"] == "cpu" else env["device"])
        per_step = f"{1 / res['steps_per_sec']:.2f}" if res.get("steps_per_sec") else "-"
        full = _full_steps("omniglot_inner_rules", cfg.name.rsplit("-", 1)[-1])
        lines.append(
            f"| {ways}-way {shots}-shot | {INNER_RULES.get(rule, rule)} | "
            f"**{_cell_pct(result[step])}** | {before} | {vs} | {ev['num_tasks']} | "
            f"{res['steps']:,} ({full or '-'}) | "
            f"{_hours(_train_seconds(run))} | {per_step} | {hardware} | {env['commit']} |"
        )
    return lines


def _cell_pct(r: dict) -> str:
    return f"{r['mean']:.2f} +- {r['ci95']:.2f}"


@functools.lru_cache(maxsize=None)
def _config_module(base: str | None):
    """``configs/<base>.py`` as a module (loaded once), or ``None``."""
    path = ROOT / "configs" / f"{base}.py"
    if base is None or not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"_cfg_{base}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config_base(cfg: Config) -> str | None:
    """The config file a run came from: its name's prefix, else ``<dataset>_<learner>``."""
    for base in (cfg.name.split("-")[0], f"{cfg.data.name}_{cfg.learner.name}"):
        if (ROOT / "configs" / f"{base}.py").exists():
            return base
    return None


def _full_steps(base: str | None, row: str | None = None):
    """The config's full ``train.meta_steps`` for ``row`` (its default row when not given)."""
    module = _config_module(base)
    if module is None:
        return None
    try:
        rows = getattr(module, "ROWS", {})
        cfg = module.get_config(row) if row and row in rows else module.get_config()
        steps = cfg["train"]["meta_steps"]
        return f"{steps:,}"
    except Exception:  # noqa: BLE001 - a config without a default row
        return None


# The synthetic decoder rows (configs/synthetic_llama_<method>.py), baselines first:
# (label, what is trained or adapted). "_channel" runs are the same configs with channel scoring.
DECODER_METHODS = {
    "zeroshot": ("zero-shot verbaliser", "nothing (baseline)"),
    "icl": ("in-context, no meta-training", "nothing (baseline)"),
    "icl_channel": ("in-context, no meta-training, channel", "nothing (baseline)"),
    "finetune": ("per-task LoRA fine-tuning", "LoRA per task, no meta-training (baseline)"),
    "metaicl": ("MetaICL, direct", "every weight, meta-trained"),
    "metaicl_channel": ("MetaICL, channel", "every weight, meta-trained"),
    "metaicl_lora": ("MetaICL, direct, LoRA", "LoRA, meta-trained"),
    "maml": ("MAML (second order)", "LoRA + head, meta-learned init"),
    "fomaml": ("first-order MAML", "LoRA + head, meta-learned init"),
    "reptile": ("Reptile", "LoRA + head, meta-learned init"),
    "protonets": ("ProtoNets", "meta-learned LoRA, prototypes"),
    "protomaml": ("Proto-MAML", "LoRA (meta-learned init) + head from the prototypes"),
}


def decoder_section(runs: list[dict]) -> list[str]:
    """The synthetic in-context family on a tiny random Llama: every method and baseline, and
    each one's margin over in-context learning without meta-training (same scoring)."""
    rows = {}
    for run in runs:
        cfg, ev = run["config"], run["eval"]
        method = cfg.name.split("-")[0].removeprefix("synthetic_llama_")
        result = ev["results"][cfg.learner.name]
        step = _reported_step(cfg, result)
        row = (run, ev, step, result[step])
        if method not in rows or _protocol_size(row) >= _protocol_size(rows[method]):
            rows[method] = row
    if not rows:
        return []
    lines = [
        "## Decoders: a synthetic family of in-context tasks (tiny random Llama)",
        "",
        "Runs of `make reproduce-synthetic-llama` (docs/text.md, \"Decoders\"). 3-way 1-shot",
        "episodes of token pairs (`data.name=\"token_mappings\"`: 963 / 192 / 327 train / val / test",
        "pairs over 39 key tokens, labels renumbered per episode); the random Llama",
        "`jmeta.data.TINY_LLAMA` (2 layers, hidden 32, 22,688 weights); meta-test on 1,000",
        "episodes of the test pairs, 15 queries per class, the best validation checkpoint, mean",
        "+- 95% CI. \"vs in-context\" is the difference to in-context learning without",
        "meta-training of the same scoring (paired over the same test episodes when both kept",
        "per-episode scores).",
        "",
        "| method | what is trained | ours | vs in-context | test tasks | test steps | meta-steps |"
        " train wall time | hardware | commit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = list(DECODER_METHODS)
    for method in sorted(rows, key=lambda m: order.index(m) if m in order else len(order)):
        run, ev, step, r = rows[method]
        res = run["results"]
        label, trained = DECODER_METHODS.get(method, (method, "-"))
        base = rows.get("icl_channel" if method.endswith("channel") else "icl")
        vs = ("-" if method in ("icl", "icl_channel") or base is None
              else _margin((run, ev, step, r), base))
        env = res["environment"]
        hardware = f"{env['cpu_count']}-core CPU" if env["backend"] == "cpu" else env["device"]
        wall = f"{_train_seconds(run):.0f} s" if res["steps"] else "-"
        lines.append(f"| {label} | {trained} | **{r['mean']:.2f} +- {r['ci95']:.2f}** | {vs} | "
                     f"{ev['num_tasks']} | {step} | {res['steps']:,} | {wall} | {hardware} | "
                     f"{env['commit']} |")
    return lines


def build(roots: list[Path], out: Path) -> str:
    runs = load_all(roots)
    if not runs:
        raise SystemExit(f"No finished runs (config.json, results.json, eval.json) under {roots}.")
    sinusoid = sorted((r for r in runs if r["config"].data.name == "sinusoid"),
                      key=lambda r: (r["config"].learner.name, r["config"].data.shots))
    rules = [r for r in runs if r["config"].name.startswith("omniglot_inner_rules")]
    classification = [r for r in runs
                      if r["config"].data.name in CLASSIFICATION and r not in rules]
    banking = [r for r in runs if r["config"].data.name == "banking77"]
    decoders = [r for r in runs if r["config"].data.name == "token_mappings"]
    lines = [
        "# Results",
        "",
        "Generated by `make results` (`benchmarks/results_page.py`) from the run directories under",
        ("`runs/reproduce` and the run records under `benchmarks/results/*/reproduce`; do not "
         "edit by"),
        "hand. `make rows` lists every published row with its make target.",
        "",
    ]
    for section in (classification_section(classification, out), text_section(banking),
                    decoder_section(decoders), inner_rules_section(rules)):
        if section:
            lines += section + [""]
    lines += sinusoid_section(sinusoid, out)
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", type=Path, nargs="*", help="folders holding run directories")
    p.add_argument("--records", type=Path,
                   help="benchmarks/results: read <hardware>/reproduce records")
    p.add_argument("--record", type=Path, nargs="+",
                   help="copy these finished runs into the records")
    p.add_argument("--out", type=Path, default=Path("docs/results.md"))
    args = p.parse_args()
    if args.record:
        for run_dir in args.record:
            out = record(run_dir, args.records or ROOT / "benchmarks" / "results")
            print(f"recorded {run_dir} in {out}")
        return
    roots = sorted((args.records or Path("/nonexistent")).glob("*/reproduce")) + list(args.roots)
    print(build(roots, args.out))


if __name__ == "__main__":
    main()
