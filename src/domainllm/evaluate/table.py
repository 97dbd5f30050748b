"""The evaluation table: one row per model version, one column per metric, with intervals.

Two steps, two rules:

- ``score_answers`` (per evaluator and version, as config ``evaluate.scores`` lists):
  a registered evaluator (:func:`~domainllm.evaluate.feedback.load_evaluator`: a
  trained one or the LLM judge) scores a version's answers to the evaluation
  prompts; R/eval/scores/<evaluator>/<version>.parquet holds one row per item
  (item_id, output, score; a null score is an item the evaluator gave no verdict).
- ``eval_table``: the per-version records (R/eval/versions/<version>.json), their
  per-item scores (<version>.items.parquet) and the evaluators' scores become
  R/eval/table.{parquet,md,html} and metrics.json (``{version: {metric: value}}``,
  what ``dvc metrics diff`` compares), plus two PNG plots (metric by version with
  intervals, per-item score distributions).

Every metric with per-item values gets a bootstrap 95% interval (percentile,
seeded): the items are resampled and the metric recomputed as its mean (or
median). The per-item values come from the items file (JCommonsenseQA
correctness, sentence chrF, the evaluator score, and any per-item metric the
version writes under its own name), from the answers themselves (length, empty
and repetition rates) and from the evaluators' score files. Metrics measured only
over a whole corpus (domain bits per character and perplexity, corpus chrF and BLEU) have
no per-item values and no interval; the table says so.
"""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path

import numpy as np

from domainllm.errors import DataError, PipelineError
from domainllm.io import read_json, write_json, write_parquet, write_text

log = logging.getLogger(__name__)

# Per-item metric -> the version metric it averages to, where the names differ.
ITEM_TO_VERSION = {
    "jcqa_correct": "jcqa_acc",
    "jcqa_correct_norm": "jcqa_acc_norm",
    "jcqa_correct_bytes": "jcqa_acc_bytes",
    "chrf": "chrf_sentence_mean",
    # Version BLEU is corpus BLEU (n-gram counts pooled over all answers), not the
    # mean of sentence BLEU: an interval of the sentence mean would not cover it
    # (on the embedded default: corpus 0.03, sentence-mean interval [0.26, 0.48]).
    # No version metric has this name, so BLEU gets no item interval.
    "bleu": "bleu_sentence_mean",
}
SCORE_COLUMNS = ("evaluator", "kind", "version", "item_id", "output", "score", "abstains")


# ---------------------------------------------------------------- scoring answers


def score_answers(
    evaluator: str,
    generations: str,
    output: str,
    *,
    name: str | None = None,
    version: str | None = None,
) -> dict:
    """Score one version's answers with one evaluator; write the per-item Parquet.

    Args:
        evaluator: evaluator folder (any registered kind).
        generations: R/generations/<version>.parquet (id, prompt, output).
        output: R/eval/scores/<evaluator>/<version>.parquet.
        name: evaluator name (default: the folder name).
        version: version name (default: the generations file name).

    Returns:
        Summary: items, empty answers, items without a verdict, mean score.
    """
    import polars as pl

    from domainllm.evaluate.feedback import format_dialogue, load_evaluator
    from domainllm.infer.generation import read_table

    name = name or Path(evaluator).name
    version = version or Path(generations).name.removesuffix(".parquet")
    gens = read_table(generations, ("id", "prompt", "output"), rows="generations")
    outputs = ["" if o is None else str(o) for o in gens["output"].to_list()]
    empty = [not o.strip() for o in outputs]
    ev = load_evaluator(evaluator)
    scores = np.asarray(
        ev.score(
            [format_dialogue(p or "", o) for p, o in zip(gens["prompt"], outputs, strict=True)]
        ),
        dtype=float,
    )
    if hasattr(ev, "close"):
        ev.close()
    if len(scores) != gens.height:
        raise PipelineError(f"{evaluator}: {len(scores)} scores for {gens.height} answers")
    kind = getattr(ev, "kind", type(ev).__name__)
    df = pl.DataFrame(
        {
            "evaluator": name,
            "kind": kind,
            "version": version,
            "abstains": bool(getattr(ev, "abstains", False)),
            "item_id": gens["id"].cast(pl.String),
            "output": outputs,
            "empty": empty,
            "score": pl.Series(
                [None if math.isnan(s) else float(s) for s in scores], dtype=pl.Float64
            ),
        }
    )
    write_parquet(df, output)
    scored = scores[~np.isnan(scores)]
    summary = {
        "evaluator": name,
        "kind": kind,
        "version": version,
        "items": gens.height,
        "empty_answers": int(sum(empty)),
        "no_verdict": int(np.isnan(scores).sum()),
        "mean_score": float(scored.mean()) if len(scored) else None,
    }
    if summary["empty_answers"]:
        log.warning("%s: %d empty answers (scored as given)", generations, summary["empty_answers"])
    log.info("scores: %s", summary)
    return summary


# ---------------------------------------------------------------- per-item values


def _read_items(path: str):
    import polars as pl

    try:
        df = pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - polars raises several types for a bad file
        raise DataError(f"{path}: cannot read Parquet: {e}") from e
    missing = [c for c in ("task", "item_id", "metric", "value") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def item_values(items_path: str, record_metrics: dict) -> dict[str, tuple[np.ndarray, str]]:
    """Per-item values of each version metric that has them: metric -> (values, aggregate).

    ``aggregate`` is "mean" or "median": the statistic of the values that gives the metric.
    """
    import polars as pl

    from domainllm.evaluate.metrics import repetition_ratio

    df = _read_items(items_path)
    out: dict[str, tuple[np.ndarray, str]] = {}
    for metric in df["metric"].unique().sort().to_list():
        target = ITEM_TO_VERSION.get(metric, metric)
        if target in record_metrics and target not in out:
            values = df.filter(pl.col("metric") == metric)["value"].cast(pl.Float64).to_numpy()
            out[target] = (values, "mean")
    if "output" in df.columns:
        gen = (
            df.filter(pl.col("task") == "generation")
            .unique(subset=["item_id"], keep="first", maintain_order=True)
            .with_columns(pl.col("output").fill_null(""))
        )
        outputs = gen["output"].to_list()
        if outputs:
            chars = np.array([len(o.strip()) for o in outputs], dtype=float)
            derived = {
                "output_chars_mean": (chars, "mean"),
                "output_chars_median": (chars, "median"),
                "empty_output_rate": ((chars == 0).astype(float), "mean"),
                "repetition_rate": (np.array([repetition_ratio(o) for o in outputs]), "mean"),
            }
            for m, v in derived.items():
                if m in record_metrics and m not in out:
                    out[m] = v
    return out


def bootstrap_interval(
    values: np.ndarray, aggregate: str, n_boot: int, seed: int
) -> tuple[float, float]:
    """Percentile 95% interval of the mean (or median) of ``values`` resampled with replacement."""
    values = np.asarray(values, float)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    sample = values[rng.integers(0, len(values), size=(n_boot, len(values)))]
    stats = np.median(sample, axis=1) if aggregate == "median" else sample.mean(axis=1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def _read_scores(path: str):
    import polars as pl

    try:
        df = pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: cannot read Parquet: {e}") from e
    missing = [c for c in SCORE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    if df.height == 0:
        raise DataError(f"{path}: no scored answers")
    for col in ("evaluator", "version", "kind"):
        if df[col].n_unique() != 1:
            raise DataError(f"{path}: column '{col}' must hold one value")
    return df


# ---------------------------------------------------------------- the table


def _direction(metric: str) -> bool | None:
    """True if higher is better, False if lower is, None if neither (a length)."""
    from domainllm.evaluate.version import HIGHER_IS_BETTER

    if metric in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[metric]
    if metric.endswith("_no_verdict_rate"):
        return False
    if metric.endswith("_score"):  # an evaluator's P(good)
        return True
    return None


def _cell(v, lo, hi) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return f"{v:.4g}"
    return f"{v:.4g} [{lo:.4g}, {hi:.4g}]"


def _best(df, metric: str, higher: bool | None):
    values = [v for v in df[metric].to_list() if v is not None and not math.isnan(v)]
    if higher is None or len(values) < 2 or min(values) == max(values):
        return None  # no direction, or nothing to tell apart
    return max(values) if higher else min(values)


def _table_rows(df, names: list[str]) -> tuple[list[str], list[list]]:
    header = ["version"]
    for m in names:
        d = _direction(m)
        header.append(m + ("" if d is None else " ↑" if d else " ↓"))
    rows = []
    best = {m: _best(df, m, _direction(m)) for m in names}
    for r in df.iter_rows(named=True):
        cells = [r["version"]]
        for m in names:
            c = _cell(r[m], r[f"{m}_ci_low"], r[f"{m}_ci_high"])
            cells.append((c, best[m] is not None and r[m] == best[m]))
        rows.append(cells)
    return header, rows


def _notes(no_interval: list[str], n_boot: int, seed: int) -> list[str]:
    notes = [
        f"Cells: value [bootstrap 95% interval over the evaluation items, {n_boot} resamples, "
        f"seed {seed}]; ↑ higher is better, ↓ lower is better; the best version of each metric "
        "is in bold (none when all are equal); – not measured for that version, or no item "
        "scored.",
    ]
    if no_interval:
        notes.append(
            "No interval (measured over a whole corpus, or no per-item values kept): "
            + ", ".join(no_interval)
            + "."
        )
    return notes


def to_markdown(df, names, no_interval, n_boot, seed) -> str:
    header, rows = _table_rows(df, names)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cells in rows:
        out = [cells[0]] + [f"**{c}**" if bold else c for c, bold in cells[1:]]
        lines.append("| " + " | ".join(out) + " |")
    notes = _notes(no_interval, n_boot, seed)
    models = "\n".join(f"- {r['version']}: `{r['model']}`" for r in df.iter_rows(named=True))
    return (
        "# Evaluation of model versions\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n\n".join(notes)
        + "\n\nModels:\n\n"
        + models
        + "\n"
    )


def to_html(df, names, no_interval, n_boot, seed) -> str:
    header, rows = _table_rows(df, names)
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for cells in rows:
        tds = [f"<th>{esc(cells[0])}</th>"] + [
            f"<td{' class=best' if bold else ''}>{esc(c)}</td>" for c, bold in cells[1:]
        ]
        body.append("<tr>" + "".join(tds) + "</tr>")
    notes = "".join(f"<p>{esc(n)}</p>" for n in _notes(no_interval, n_boot, seed))
    models = "".join(
        f"<li>{esc(r['version'])}: <code>{esc(str(r['model']))}</code></li>"
        for r in df.iter_rows(named=True)
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Evaluation of model versions"
        "</title><style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}"
        "td.best{font-weight:bold;background:#eef6ee}</style></head><body>"
        "<h1>Evaluation of model versions</h1>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f"{notes}<p>Models:</p><ul>{models}</ul></body></html>\n"
    )


def plot_metrics(df, names: list[str], path: str) -> None:
    """One panel per metric: its value per version with the 95% interval as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from domainllm.io import atomic_path

    cols = 4
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    versions = df["version"].to_list()
    x = np.arange(len(versions))
    for ax, m in zip(axes.flat, names, strict=False):
        v = np.array([np.nan if a is None else a for a in df[m].to_list()], float)
        lo = np.array([np.nan if a is None else a for a in df[f"{m}_ci_low"].to_list()], float)
        hi = np.array([np.nan if a is None else a for a in df[f"{m}_ci_high"].to_list()], float)
        # A point estimate can sit a rounding error (or, for a ratio of sums, more)
        # outside its percentile interval; matplotlib refuses negative bar lengths.
        err = np.clip(np.vstack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)]), 0, None)
        ax.errorbar(x, v, yerr=err, fmt="o", capsize=4)
        d = _direction(m)
        ax.set_title(m + ("" if d is None else " (higher better)" if d else " (lower better)"))
        ax.set_xticks(x, versions, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle("Metrics by model version (bootstrap 95% intervals)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def plot_distributions(per_item: dict[str, dict[str, np.ndarray]], path: str) -> None:
    """Box plots of per-item scores by version, one panel per score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from domainllm.io import atomic_path

    names = sorted(per_item)
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, m in zip(axes.flat, names, strict=False):
        versions = list(per_item[m])
        data = [per_item[m][v][~np.isnan(per_item[m][v])] for v in versions]
        ax.boxplot([d if len(d) else [np.nan] for d in data], showmeans=True)
        if not any(len(d) for d in data):
            ax.text(0.5, 0.5, "no item scored", ha="center", transform=ax.transAxes)
        ax.set_xticks(
            np.arange(1, len(versions) + 1), versions, rotation=30, ha="right", fontsize=8
        )
        ax.set_title(f"{m} per item")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    if not names:
        axes[0, 0].text(0.5, 0.5, "no per-item scores", ha="center")
    fig.suptitle("Per-item score distributions by model version")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def eval_table(
    inputs: list[str],
    table: str,
    table_md: str,
    metrics_json: str,
    *,
    table_html: str | None = None,
    scores: list[str] = (),
    plot_metrics_png: str | None = None,
    plot_scores_png: str | None = None,
    n_boot: int = 1000,
    seed: int = 1234,
) -> dict:
    """Gather the versions into one table with bootstrap intervals; write every rendering.

    Args:
        inputs: R/eval/versions/<version>.json files, in table order; each may have its
            per-item scores next to it (<version>.items.parquet).
        table: Parquet: version, model, then per metric ``m``, ``m_ci_low``, ``m_ci_high``.
        table_md: Markdown rendering.
        metrics_json: ``{version: {metric: value}}`` (for ``dvc metrics diff``).
        table_html: HTML rendering.
        scores: R/eval/scores/<evaluator>/<version>.parquet files (score_answers); each
            adds ``<evaluator>_score`` and, for evaluators that may abstain,
            ``<evaluator>_no_verdict_rate`` to its version.
        plot_metrics_png: metric-by-version plot.
        plot_scores_png: per-item score distributions plot.
        n_boot: bootstrap resamples.
        seed: seeds the bootstrap.

    Returns:
        The metrics dict written to ``metrics_json``.
    """
    import polars as pl

    if not inputs:
        raise PipelineError("config key 'evaluate.versions': no versions to tabulate")
    records = []
    for path in inputs:
        rec = read_json(path)
        if (
            not isinstance(rec, dict)
            or not isinstance(rec.get("metrics"), dict)
            or "version" not in rec
        ):
            raise DataError(f"{path}: expected {{'version', 'model', 'metrics': {{...}}}}")
        records.append((path, rec))
    versions = [rec["version"] for _, rec in records]
    if len(set(versions)) != len(versions):
        raise DataError(f"{', '.join(inputs)}: a version appears twice ({versions})")
    base_names = sorted({m for _, rec in records for m in rec["metrics"]})
    values: dict[str, dict[str, float | None]] = {v: {} for v in versions}
    per_item: dict[str, dict[str, tuple[np.ndarray, str]]] = {v: {} for v in versions}
    for path, rec in records:
        v = rec["version"]
        missing = [m for m in base_names if m not in rec["metrics"]]
        if missing:
            raise DataError(f"{path}: version '{v}' lacks metric(s) {', '.join(missing)}")
        for m in base_names:
            x = rec["metrics"][m]
            if not isinstance(x, int | float) or isinstance(x, bool) or not math.isfinite(x):
                raise DataError(f"{path}: metric {m} not finite ({x!r})")
            values[v][m] = float(x)
        items = Path(path).with_name(Path(path).name.removesuffix(".json") + ".items.parquet")
        if items.is_file():
            per_item[v] = item_values(str(items), rec["metrics"])
        else:
            log.warning("%s: no per-item scores; %s has no intervals", items, v)
    # Evaluators' scores of the answers (config evaluate.scores).
    score_names: set[str] = set()
    dist: dict[str, dict[str, np.ndarray]] = {}
    for path in scores:
        df = _read_scores(path)
        name, v = df["evaluator"][0], df["version"][0]
        if v not in values:
            raise DataError(f"{path}: version '{v}' is not in the table ({', '.join(versions)})")
        s = np.array([np.nan if x is None else x for x in df["score"].to_list()], float)
        metric = f"{name}_score"
        if metric in values[v]:
            raise DataError(f"{path}: {name} scores version '{v}' twice")
        scored = s[~np.isnan(s)]
        values[v][metric] = float(scored.mean()) if len(scored) else None
        per_item[v][metric] = (scored, "mean")
        score_names.add(metric)
        dist.setdefault(metric, {})[v] = s
        if df["abstains"].any() or np.isnan(s).any():  # an evaluator that may give no verdict
            rate = f"{name}_no_verdict_rate"
            values[v][rate] = float(np.isnan(s).mean())
            per_item[v][rate] = (np.isnan(s).astype(float), "mean")
            score_names.add(rate)
    names = base_names + sorted(score_names)
    rows = []
    for _, rec in records:
        v = rec["version"]
        row = {"version": v, "model": rec.get("model", "")}
        for m in names:
            x = values[v].get(m)
            lo = hi = None
            if x is not None and m in per_item[v]:
                vals, agg = per_item[v][m]
                lo, hi = bootstrap_interval(vals, agg, n_boot, seed)
                lo = None if math.isnan(lo) else lo
                hi = None if math.isnan(hi) else hi
            row.update({m: x, f"{m}_ci_low": lo, f"{m}_ci_high": hi})
        rows.append(row)
    schema = {"version": pl.String, "model": pl.String}
    for m in names:
        schema.update({m: pl.Float64, f"{m}_ci_low": pl.Float64, f"{m}_ci_high": pl.Float64})
    df = pl.DataFrame(rows, schema=schema)
    no_interval = [
        m
        for m in names
        if df[m].null_count() < df.height and df[f"{m}_ci_low"].null_count() == df.height
    ]
    for m in ("evaluator_score", "chrf_sentence_mean"):
        if m in base_names:
            dist[m] = {v: per_item[v][m][0] for v in versions if m in per_item[v]}
    metrics = {
        r["version"]: {m: r[m] for m in names if r[m] is not None} for r in df.iter_rows(named=True)
    }
    md = to_markdown(df, names, no_interval, n_boot, seed)
    page = to_html(df, names, no_interval, n_boot, seed)
    if plot_metrics_png:
        plot_metrics(df, names, plot_metrics_png)
    if plot_scores_png:
        plot_distributions({k: v for k, v in dist.items() if v}, plot_scores_png)
    write_parquet(df, table)
    write_text(md, table_md)
    if table_html:
        write_text(page, table_html)
    write_json(metrics, metrics_json)
    log.info("evaluation table: %d versions x %d metrics", df.height, len(names))
    return metrics
