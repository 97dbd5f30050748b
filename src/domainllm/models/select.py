"""Rank the scored base-model candidates and choose the one that feeds training.

Each metric is turned into a rank (so metrics on different scales weigh
equally), the rank is normalised to [0, 1] (1 = best), and the weighted sum of
normalised ranks is the candidate's score. The best score wins unless the
configuration names a candidate (``base.choose``), which is recorded as an
override.
"""

from __future__ import annotations

import logging
import math

from domainllm.errors import PipelineError
from domainllm.io import read_json, write_json, write_parquet, write_text

log = logging.getLogger(__name__)

# Metric -> True when higher is better.
METRICS = {
    "chars_per_token": True,
    "domain_bits_per_char": False,
    "jcqa_acc_norm": True,
}
EXTRA_COLUMNS = ["parameters", "vocab_size", "bytes_per_token", "domain_perplexity", "jcqa_acc"]


def normalised_ranks(values: list[float | None], higher_better: bool) -> list[float]:
    """1.0 for the best value, 0.0 for the worst, ties share their mean rank.

    Missing or non-finite values rank last. A single candidate gets 1.0.
    """
    n = len(values)
    if n == 1:
        return [1.0]

    def key(v):
        if v is None or not math.isfinite(v):
            return math.inf
        return -v if higher_better else v

    keys = [key(v) for v in values]
    ordered = sorted(keys)
    ranks = []
    for k in keys:
        first = ordered.index(k)
        last = first + ordered.count(k) - 1
        ranks.append((first + last) / 2)  # 0-based mean rank
    return [1.0 - r / (n - 1) for r in ranks]


def select_base(
    scores: list[str],
    table: str,
    table_md: str,
    chosen: str,
    *,
    weights: dict,
    choose: str = "auto",
) -> dict:
    """Write the ranking table (Parquet and Markdown) and chosen.json; return chosen.json's content.

    Args:
        scores: score JSON files written by ``score_base`` (one per candidate).
        table, table_md, chosen: outputs.
        weights: metric -> weight of its normalised rank (0 ignores it).
        choose: ``auto`` or the name of a candidate that wins regardless of rank.

    Raises:
        PipelineError: no scores, a duplicate candidate, an unknown metric in
            ``weights`` or a ``choose`` that names no candidate.
    """
    import polars as pl

    if not scores:
        raise PipelineError("select_base: no candidate scores")
    unknown = set(weights) - set(METRICS)
    if unknown:
        raise PipelineError(
            f"config key 'base.selection.weights': unknown metric(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join(METRICS)})"
        )
    rows = [read_json(p) for p in scores]
    for path, row in zip(scores, rows, strict=True):
        if "candidate" not in row or "model_dir" not in row:
            raise PipelineError(f"{path}: score file lacks 'candidate' or 'model_dir'")
    names = [r["candidate"] for r in rows]
    if len(set(names)) != len(names):
        raise PipelineError(f"select_base: duplicate candidates in {scores}")
    if choose != "auto" and choose not in names:
        raise PipelineError(
            f"config key 'base.choose': '{choose}' is not 'auto' or a scored candidate "
            f"({', '.join(names)})"
        )

    total = [0.0] * len(rows)
    columns: dict[str, list] = {"candidate": names, "model_dir": [r["model_dir"] for r in rows]}
    for metric, higher in METRICS.items():
        values = [r.get(metric) for r in rows]
        norm = normalised_ranks(values, higher)
        columns[metric] = [float(v) if v is not None else None for v in values]
        columns[f"rank_{metric}"] = norm
        w = float(weights.get(metric, 0.0))
        total = [t + w * x for t, x in zip(total, norm, strict=True)]
    for col in EXTRA_COLUMNS:
        columns[col] = [r.get(col) for r in rows]
    columns["score"] = total
    # The first listed candidate wins a tie (the config's order is the tie-break).
    best = max(range(len(rows)), key=lambda i: (total[i], -i))
    winner = names[best] if choose == "auto" else choose
    columns["best_ranked"] = [i == best for i in range(len(rows))]
    columns["chosen"] = [n == winner for n in names]
    df = pl.DataFrame(columns).sort("score", descending=True, maintain_order=True)

    max_score = sum(float(weights.get(m, 0.0)) for m in METRICS)
    weight_text = ", ".join(f"{m} {float(weights.get(m, 0.0)):g}" for m in METRICS)
    if choose == "auto":
        why = (
            f"Chosen: **{winner}**, the best weighted rank score "
            f"({total[best]:.3f} of {max_score:g}; weights: {weight_text})."
        )
    else:
        why = (
            f"Chosen: **{winner}** by override (config base.choose); the ranking's best was "
            f"{names[best]} ({total[best]:.3f} of {max_score:g}; weights: {weight_text})."
        )
    write_parquet(df, table)
    write_text(_markdown(df) + "\n" + why + "\n", table_md)
    w_row = rows[names.index(winner)]
    result = {
        "name": winner,
        "path": w_row["model_dir"],
        "scores": {k: v for k, v in w_row.items() if k not in ("candidate", "model_dir")},
        "override": choose != "auto",
        "best_ranked": names[best],
        "score": total[names.index(winner)],
    }
    write_json(result, chosen)
    log.info(why.replace("**", ""))
    return result


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _markdown(df) -> str:
    cols = [
        "candidate",
        *METRICS,
        "score",
        "chosen",
        "parameters",
        "vocab_size",
        "domain_perplexity",
        "jcqa_acc",
    ]
    arrows = {m: (" ↑" if hi else " ↓") for m, hi in METRICS.items()}
    header = "| " + " | ".join(c + arrows.get(c, "") for c in cols) + " |"
    sep = "|" + "|".join("---" if c == "candidate" else "---:" for c in cols) + "|"
    lines = [header, sep]
    for row in df.iter_rows(named=True):
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines)
